"""Access control on every route: no token, bad tokens, another user's token, wrong scope."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import jwt
import pytest

from focus_sessions.api.auth import ANALYTICS, SELF, WRITE
from tests.integration.api_harness import (
    SECRET,
    Api,
    api_settings,
    module_infra,
    running_api,
    seed_session,
    token,
)

SESSION = "00000000-0000-4000-8000-000000000000"  # replaced by alice's seeded session id


@pytest.fixture(scope="module")
async def api(postgres_url: str, kafka_bootstrap: str) -> AsyncIterator[Api]:
    async with module_infra(postgres_url, kafka_bootstrap) as (url, topics):
        settings = api_settings(kafka_bootstrap, url, topics, focus_api_wait_ms=100)
        async with running_api(settings) as a:
            a.alice_session = seed_session(url, "alice")  # type: ignore[attr-defined]
            yield a


# (method, path, body): every route, aimed at alice's data
ROUTES = [
    ("GET", "/users/alice/sessions", None),
    ("GET", "/sessions/{sid}", None),
    ("GET", "/users/alice/analytics", None),
    ("GET", "/users/alice/weekly", None),
    ("POST", "/sessions", {"user_id": "alice"}),
    ("PUT", "/sessions/{sid}", {"completed": False}),
    ("POST", "/sessions/{sid}/interruptions", {}),
]
READS, WRITES = ROUTES[:4], ROUTES[4:]
# the routes that name a session by id: to a user token another user's session is missing
BY_SESSION_ID = [r for r in ROUTES if "{sid}" in r[1]]
BY_USER = [r for r in ROUTES if r not in BY_SESSION_ID]
NOW = 2_000_000_000


def _raw(claims: dict[str, object], secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


BAD_TOKENS = {
    "garbage": {"Authorization": "Bearer not.a.jwt"},
    "wrong secret": token("alice", SELF, secret="another-secret-" + "y" * 40),
    "expired": token("alice", SELF, ttl=-60),
    "wrong audience": _raw({"sub": "alice", "aud": "other-api", "exp": NOW, "scope": SELF}),
    "no expiry": _raw({"sub": "alice", "aud": "focus-sessions", "scope": SELF}),
    "alg none": {"Authorization": "Bearer " + jwt.encode(
        {"sub": "alice", "aud": "focus-sessions", "exp": NOW, "scope": SELF}, None,
        algorithm="none")},
    "basic scheme": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
}


async def _call(api: Api, route: tuple[str, str, object], headers: dict[str, str]) -> int:
    method, path, body = route
    url = path.format(sid=api.alice_session)  # type: ignore[attr-defined]
    r = await api.client.request(method, url, json=body, headers=headers)
    return r.status_code


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
async def test_no_token_is_401(api: Api, route: tuple[str, str, object]) -> None:
    assert await _call(api, route, {}) == 401


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("bad", sorted(BAD_TOKENS))
async def test_bad_token_is_401(api: Api, route: tuple[str, str, object], bad: str) -> None:
    method, path, body = route
    url = path.format(sid=api.alice_session)  # type: ignore[attr-defined]
    r = await api.client.request(method, url, json=body, headers=BAD_TOKENS[bad])
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("route", BY_USER, ids=lambda r: f"{r[0]} {r[1]}")
async def test_another_users_token_is_403(api: Api, route: tuple[str, str, object]) -> None:
    assert await _call(api, route, token("mallory", SELF)) == 403


@pytest.mark.parametrize("route", BY_SESSION_ID, ids=lambda r: f"{r[0]} {r[1]}")
async def test_another_users_session_is_404_like_a_missing_one(
    api: Api, route: tuple[str, str, object]
) -> None:
    # a user token must not learn whether another user's session id exists
    method, path, body = route
    mallory = token("mallory", SELF)
    theirs = await api.client.request(method, path.format(sid=api.alice_session),  # type: ignore[attr-defined]
                                      json=body, headers=mallory)
    missing_id = str(uuid.uuid4())
    missing = await api.client.request(method, path.format(sid=missing_id), json=body,
                                       headers=mallory)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {
        "detail": missing.json()["detail"].replace(missing_id, api.alice_session)}  # type: ignore[attr-defined]


@pytest.mark.parametrize("route", READS, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("scopes", [(WRITE,), ()], ids=["service token", "no scope"])
async def test_reads_with_the_wrong_scope_are_403(
    api: Api, route: tuple[str, str, object], scopes: tuple[str, ...]
) -> None:
    assert await _call(api, route, token("alice", *scopes)) == 403


@pytest.mark.parametrize("route", WRITES, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("scopes", [(ANALYTICS,), ()], ids=["analytics token", "no scope"])
async def test_writes_with_the_wrong_scope_are_403(
    api: Api, route: tuple[str, str, object], scopes: tuple[str, ...]
) -> None:
    assert await _call(api, route, token("alice", *scopes)) == 403


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
async def test_the_owners_token_is_let_through(api: Api, route: tuple[str, str, object]) -> None:
    # 200 for reads; writes are published and answer 202 here (no projector runs)
    assert await _call(api, route, api.user("alice")) in (200, 202)


@pytest.mark.parametrize("route", READS, ids=lambda r: f"{r[0]} {r[1]}")
async def test_an_analytics_token_reads_any_user(api: Api, route: tuple[str, str, object]) -> None:
    assert await _call(api, route, token("analyst", ANALYTICS)) == 200


async def test_a_service_token_writes_for_any_user(api: Api) -> None:
    r = await api.client.post("/sessions", json={"user_id": f"u-{uuid.uuid4().hex[:6]}"},
                              headers=token("timer", WRITE))
    assert r.status_code == 202
    assert r.headers["location"] == r.json()["location"]


async def test_openapi_declares_the_bearer_scheme(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert doc["paths"]["/users/{user_id}/analytics"]["get"]["security"] == [{"bearer": []}]

"""Bad input never gets a 500: each bound is a 422 naming the field; unknown sessions 404."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.api_harness import (
    ANALYST,
    SERVICE,
    Api,
    seeded_api,
)


@pytest.fixture(scope="module")
async def api(postgres_url: str, kafka_bootstrap: str) -> AsyncIterator[Api]:
    async with seeded_api(postgres_url, kafka_bootstrap, wait_ms=100, open_session={},
                          ended_session={"ended": True}) as a:
        yield a


def _names(response: Any) -> list[tuple[str, ...]]:
    assert response.status_code == 422, response.text
    return [tuple(str(p) for p in e["loc"]) for e in response.json()["detail"]]


START_BODIES = [
    ({"user_id": "a", "duration_minutes": 4}, ("body", "duration_minutes")),
    ({"user_id": "a", "duration_minutes": 91}, ("body", "duration_minutes")),
    ({"user_id": "a", "duration_minutes": "long"}, ("body", "duration_minutes")),
    ({"user_id": ""}, ("body", "user_id")),
    ({"user_id": "x" * 256}, ("body", "user_id")),
    ({"user_id": "has space"}, ("body", "user_id")),
    ({}, ("body", "user_id")),
    ({"user_id": "a", "step_id": "not-a-uuid"}, ("body", "step_id")),
    ({"user_id": "a", "time_zone": "Mars/Olympus_Mons"}, ("body", "time_zone")),
    ({"user_id": "a", "colour": "red"}, ("body", "colour")),
]


@pytest.mark.parametrize(("body", "field"), START_BODIES, ids=lambda v: str(v)[:40])
async def test_start_bounds_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: tuple[str, ...]
) -> None:
    r = await api.client.post("/sessions", json=body, headers=SERVICE)
    assert field in _names(r)


END_BODIES = [
    ({"interruptions": -1}, ("body", "interruptions")),
    ({"interruptions": 10_001}, ("body", "interruptions")),
    ({"completed": "maybe"}, ("body", "completed")),
    ({"ended_at": "2030-01-01T10:00:00"}, ("body", "ended_at")),  # no time zone
    ({"ended_at": "yesterday"}, ("body", "ended_at")),
    ({"ended_at": "2000-01-01T00:00:00Z"}, ("body", "ended_at")),  # before the start
]


@pytest.mark.parametrize(("body", "field"), END_BODIES, ids=lambda v: str(v)[:40])
async def test_end_bounds_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: tuple[str, ...]
) -> None:
    r = await api.client.put(f"/sessions/{api.open_session}", json=body,  # type: ignore[attr-defined]
                             headers=SERVICE)
    assert field in _names(r)


@pytest.mark.parametrize(("body", "field"), [
    ({"reason": "x" * 501}, ("body", "reason")),
    ({"interrupted_at": "2000-01-01T00:00:00+00:00"}, ("body", "interrupted_at")),
], ids=["reason too long", "before the start"])
async def test_interruption_bounds_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: tuple[str, ...]
) -> None:
    sid = api.open_session  # type: ignore[attr-defined]
    r = await api.client.post(f"/sessions/{sid}/interruptions", json=body, headers=SERVICE)
    assert field in _names(r)


READ_PARAMS = [
    ("/users/alice/sessions", {"limit": 0}, ("query", "limit")),
    ("/users/alice/sessions", {"limit": 101}, ("query", "limit")),
    ("/users/alice/sessions", {"limit": "ten"}, ("query", "limit")),
    ("/users/alice/sessions", {"cursor": "garbage!"}, ("query", "cursor")),
    ("/users/alice/sessions", {"cursor": "eA"}, ("query", "cursor")),
    ("/users/al ice/sessions", {}, ("path", "user_id")),
    (f"/users/{'u' * 256}/analytics", {}, ("path", "user_id")),
    ("/sessions/not-a-uuid", {}, ("path", "session_id")),
    ("/users/alice/analytics", {"tz": "Nowhere/Special"}, ("query", "tz")),
    ("/users/alice/analytics", {"from": "2024-13-01"}, ("query", "from")),
    ("/users/alice/analytics", {"from": "2024-02-01", "to": "2024-01-01"}, ("query", "from")),
    ("/users/alice/analytics", {"from": "2020-01-01", "to": "2024-01-01"}, ("query", "to")),
    ("/users/alice/analytics", {"to": "0001-01-02"}, ("query", "from")),
]


@pytest.mark.parametrize(("path", "params", "field"), READ_PARAMS, ids=lambda v: str(v)[:40])
async def test_read_bounds_are_422_naming_the_field(
    api: Api, path: str, params: dict[str, Any], field: tuple[str, ...]
) -> None:
    r = await api.client.get(path, params=params, headers=ANALYST)
    assert field in _names(r)


async def test_a_malformed_idempotency_key_is_422(api: Api) -> None:
    r = await api.client.post("/sessions", json={"user_id": "a"},
                              headers={**SERVICE, "Idempotency-Key": "has spaces in it"})
    assert ("header", "idempotency-key") in _names(r)


@pytest.mark.parametrize(("method", "suffix", "body"), [
    ("GET", "", None), ("PUT", "", {}), ("POST", "/interruptions", {})])
async def test_unknown_session_is_404(api: Api, method: str, suffix: str, body: object) -> None:
    headers = ANALYST if method == "GET" else SERVICE
    r = await api.client.request(method, f"/sessions/{uuid.uuid4()}{suffix}", json=body,
                                 headers=headers)
    assert r.status_code == 404
    assert "no session" in r.json()["detail"]


@pytest.mark.parametrize(("method", "suffix"), [("PUT", ""), ("POST", "/interruptions")])
async def test_writing_to_an_ended_session_is_409(api: Api, method: str, suffix: str) -> None:
    sid = api.ended_session  # type: ignore[attr-defined]
    r = await api.client.request(method, f"/sessions/{sid}{suffix}", json={}, headers=SERVICE)
    assert r.status_code == 409
    assert "already ended" in r.json()["detail"]


async def test_healthz_reports_the_database(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["database"] == "ok"
    assert r.json()["analytics_cache"] in ("online", "offline")  # offline until LISTEN is up

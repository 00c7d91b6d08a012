"""What the API reads is bounded: bodies over FOCUS_API_MAX_BODY_BYTES are refused unread (413,
with or without a token), and 422 answers render whatever the input and echo only an excerpt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from focus_sessions.api.errors import EXCERPT_CHARS, MAX_ERRORS
from focus_sessions.api.limits import BodyLimit
from focus_sessions.embedded import free_port
from focus_sessions.migrate import migrate
from tests.integration.api_harness import (
    SECRET,
    SERVICE,
    Api,
    seeded_api,
)
from tests.support.infra import create_database, create_topic_set, drop_database

LIMIT = 65_536
FIFTY_MB = 50 * 1024 * 1024
CHUNK = 64 * 1024
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
async def api(postgres_url: str, kafka_bootstrap: str) -> AsyncIterator[Api]:
    async with seeded_api(postgres_url, kafka_bootstrap, wait_ms=50, open_session={}) as a:
        yield a


def _stream(total: int) -> Iterator[bytes]:
    """``total`` bytes of a JSON-looking body, never more than one chunk in memory."""
    yield b'{"user_id": "'
    sent = 13
    while sent < total:
        piece = min(CHUNK, total - sent)
        yield b"x" * piece
        sent += piece


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text[:200]
    detail = response.json()["detail"]
    assert str(LIMIT) in detail
    assert "FOCUS_API_MAX_BODY_BYTES" in detail


# --- 413: refused before anything parses the body -------------------------------------------


@pytest.mark.parametrize("headers", [SERVICE, {}], ids=["token", "no token"])
async def test_a_body_over_the_limit_is_413_before_authentication(
    api: Api, headers: dict[str, str]
) -> None:
    body = json.dumps({"user_id": "a" * (LIMIT + 1)}).encode()
    _assert_refused(await api.client.post("/sessions", content=body,
                                          headers={**headers, **JSON}))


async def test_a_body_just_under_the_limit_is_parsed_and_answered_briefly(api: Api) -> None:
    # a huge array that fits: validation fails, and the 422 says so without echoing it
    numbers = ",".join(["1"] * ((LIMIT - 100) // 2))
    body = f'{{"user_id": "a", "duration_minutes": [{numbers}]}}'.encode()
    assert len(body) <= LIMIT
    r = await api.client.post("/sessions", content=body, headers={**SERVICE, **JSON})
    assert r.status_code == 422
    assert len(r.content) < 600, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "duration_minutes"]
    assert len(error["input"]) <= EXCERPT_CHARS + 1


async def test_a_streamed_body_is_cut_off_at_the_limit() -> None:
    # the middleware alone, over plain ASGI: count what it pulls from the server
    pulled = 0
    answered: list[dict[str, Any]] = []
    app_saw = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": pulled < 800}

    async def send(message: dict[str, Any]) -> None:
        answered.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal app_saw
        more = True
        while more:
            message = await receive()
            app_saw += len(message["body"])
            more = message["more_body"]

    scope = {"type": "http", "method": "POST", "path": "/sessions", "headers": []}
    await BodyLimit(app, LIMIT)(scope, receive, send)  # type: ignore[arg-type]
    assert answered[0]["status"] == 413
    assert pulled == LIMIT // CHUNK + 1  # one chunk past the limit, then no more
    assert app_saw <= LIMIT
    assert len(answered) == 2  # start and body: nothing from the app after the 413


@pytest.fixture(scope="module")
def served(postgres_url: str, kafka_bootstrap: str) -> Iterator[tuple[str, int]]:
    """``focus api`` as its own process (uvicorn, httptools), so its memory can be measured."""
    url = create_database(postgres_url)
    migrate(url)
    topics = create_topic_set(kafka_bootstrap)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "FOCUS_EVENTS_TOPIC": topics.events, "FOCUS_DLQ_TOPIC": topics.dlq,
           "FOCUS_JWT_SECRET": SECRET, "FOCUS_API_MAX_BODY_BYTES": str(LIMIT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "focus_sessions.api.app:from_environment",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "focus api exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "focus api did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        server.terminate()
        server.wait(20)
        drop_database(postgres_url, url)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_fifty_megabytes_are_refused_without_being_read(served: tuple[str, int]) -> None:
    base, pid = served
    with httpx.Client(base_url=base, timeout=60) as client:
        # warm every path the test takes (a small 413 and a 422), then take the peak
        client.post("/sessions", content=b"x" * (LIMIT + 1), headers=JSON)
        client.post("/sessions", json={"user_id": ""}, headers=SERVICE)
        before = _peak_rss_kib(pid)
        for headers in (SERVICE, {}):
            # declared length: answered at once, the body never read
            declared = {**headers, **JSON, "content-length": str(FIFTY_MB)}
            _assert_refused(client.post("/sessions", content=_stream(FIFTY_MB),
                                        headers=declared))
            # no length (chunked): counted as it arrives, cut off at the limit
            _assert_refused(client.post("/sessions", content=_stream(FIFTY_MB),
                                        headers={**headers, **JSON}))
        assert client.get("/healthz").status_code == 200  # the server is still there
    grown_mib = (_peak_rss_kib(pid) - before) / 1024
    # reading one of these bodies whole would have grown the peak by 50 MB or more
    assert grown_mib < 8, f"peak memory grew by {grown_mib:.1f} MiB"


# --- 422: always renders, never echoes more than an excerpt -----------------------------------


def _only_error(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    return error  # type: ignore[no-any-return]


async def test_nan_and_infinity_are_422_naming_the_field(api: Api) -> None:
    sid = api.open_session  # type: ignore[attr-defined]
    cases = [
        ("PUT", f"/sessions/{sid}", '{"interruptions": NaN}', "interruptions", "NaN"),
        ("PUT", f"/sessions/{sid}", '{"ended_at": -Infinity}', "ended_at", "-Infinity"),
        ("POST", "/sessions", '{"user_id": "a", "duration_minutes": Infinity}',
         "duration_minutes", "Infinity"),
        ("POST", "/sessions", '{"user_id": "a", "duration_minutes": 1e999}',
         "duration_minutes", "Infinity"),
    ]
    for method, path, raw, field, shown in cases:
        r = await api.client.request(method, path, content=raw, headers={**SERVICE, **JSON})
        error = _only_error(r)
        assert error["loc"] == ["body", field], raw
        assert error["input"] == shown


async def test_a_lone_surrogate_is_422_naming_the_field(api: Api) -> None:
    sid = api.open_session  # type: ignore[attr-defined]
    cases = [
        ("POST", f"/sessions/{sid}/interruptions", '{"reason": "\\ud800"}', "reason"),
        ("POST", "/sessions", '{"user_id": "\\ud800"}', "user_id"),
        ("POST", "/sessions", '{"user_id": "a", "time_zone": "Europe/\\udfff"}', "time_zone"),
    ]
    for method, path, raw, field in cases:
        r = await api.client.request(method, path, content=raw, headers={**SERVICE, **JSON})
        error = _only_error(r)
        assert error["loc"] == ["body", field], raw
        assert "\\ud" in error["input"]  # shown escaped, as text that JSON can carry
        assert "surrogate" in error["msg"]


async def test_a_lone_surrogate_in_a_key_still_renders(api: Api) -> None:
    r = await api.client.post("/sessions", content='{"user_id": "a", "\\ud800": 1}',
                              headers={**SERVICE, **JSON})
    assert r.status_code == 422
    assert "\\ud800" in r.text


async def test_long_inputs_are_shown_as_short_excerpts(api: Api) -> None:
    r = await api.client.post("/sessions", json={"user_id": "y" * 5000}, headers=SERVICE)
    error = _only_error(r)
    assert error["loc"] == ["body", "user_id"]
    assert error["input"].startswith("yyyy")
    assert len(error["input"]) <= EXCERPT_CHARS + 1
    assert len(r.content) < 1000


async def test_small_inputs_are_shown_as_they_are(api: Api) -> None:
    r = await api.client.post("/sessions", json={"user_id": "a", "duration_minutes": 91},
                              headers=SERVICE)
    assert _only_error(r)["input"] == 91
    r = await api.client.post("/sessions", json={}, headers=SERVICE)
    assert _only_error(r)["input"] == {}


async def test_at_most_twenty_errors_are_listed(api: Api) -> None:
    body = {"user_id": "a", **{f"extra_{i}": i for i in range(500)}}
    r = await api.client.post("/sessions", json=body, headers=SERVICE)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail) == MAX_ERRORS + 1
    assert detail[-1]["type"] == "too_many_errors"
    assert detail[-1]["msg"] == f"{500 - MAX_ERRORS} more errors not listed"
    assert all(set(e) >= {"type", "loc", "msg", "input"} for e in detail)

"""A server that hangs (SIGSTOP: connections stay open, nothing answers) costs a request a known
time, not as long as it hangs, and a write's answer says what became of its event.

Each test freezes a server of its own (a dedicated PostgreSQL, a dedicated broker), never the
suite's shared ones, and always thaws it in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from focus_sessions.embedded import EmbeddedKafka, EmbeddedPostgres, free_port
from tests.integration.api_harness import (
    SERVICE,
    Api,
    api_settings,
    eventually,
    running_api,
    seed_session,
)
from tests.support.infra import TopicSet, create_topic_set

DB_TIMEOUT_MS = 1000
WAIT_MS = 500
PUBLISH_TIMEOUT_MS = 1500
#: The machine may be slow and busy: what a bound may be overrun by in these tests.
SLACK_S = 1.5
DB_S, WAIT_S, PUBLISH_S = DB_TIMEOUT_MS / 1000, WAIT_MS / 1000, PUBLISH_TIMEOUT_MS / 1000
#: docs/api.md: a write answers within DB + PUBLISH (+ 0.25 s) + WAIT + DB.
WRITE_BOUND_S = DB_S + PUBLISH_S + 0.25 + WAIT_S + DB_S


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` and its children for the block (the postmaster first, so that it forks
    no more; PostgreSQL's backends each lead a process group of their own, so one group
    signal would not reach them); SIGCONT them whatever happens."""
    stopped: list[int] = []
    try:
        for target in (pid, *_children(pid)):
            with contextlib.suppress(ProcessLookupError):  # a child that just exited
                os.kill(target, signal.SIGSTOP)
                stopped.append(target)
        yield
    finally:
        for target in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGCONT)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # the parent pid is the second field after the parenthesised command name
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, int]]:
    """A PostgreSQL for this test alone, and its postmaster's pid."""
    with EmbeddedPostgres(tmp_path / "pg", delete_on_stop=True) as server:
        yield server, int((server.data_dir / "postmaster.pid").read_text().split()[0])


async def _timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


def _unavailable(response: httpx.Response, took: float, bound: float) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert took < bound + SLACK_S, f"answered after {took:.2f} s, bound {bound:.2f} s"
    body: dict[str, Any] = response.json()
    return body


async def test_a_hung_database_gives_503_within_the_bound_and_recovers(
    own_postgres: tuple[EmbeddedPostgres, int], kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    server, postmaster = own_postgres
    url = server.create_database("focus")
    settings = api_settings(kafka_bootstrap, url, fresh_topics, focus_api_wait_ms=WAIT_MS,
                            focus_api_db_timeout_ms=DB_TIMEOUT_MS,
                            focus_api_publish_timeout_ms=PUBLISH_TIMEOUT_MS)
    async with running_api(settings) as api:
        sid = seed_session(url, "alice")
        alice = api.user("alice")
        assert (await api.client.get(f"/sessions/{sid}", headers=alice)).status_code == 200
        # the pool's connections carry the server-side statement timeout too
        services = api.app.state.services
        shown = await services.db.run(
            lambda conn: _fetch(conn, "SHOW statement_timeout"))
        assert shown == "1s"
        await eventually(lambda: _online(api))

        with frozen(postmaster):
            # reads, one at a time, then more at once than the pool has connections
            for path in (f"/sessions/{sid}", "/users/alice/sessions", "/users/alice/weekly"):
                body = _unavailable(*await _timed(api.client.get(path, headers=alice)), DB_S)
                assert "PostgreSQL is unavailable" in body["detail"]
            answers = await asyncio.gather(*[
                _timed(api.client.get(f"/sessions/{sid}", headers=alice)) for _ in range(12)])
            for response, took in answers:
                _unavailable(response, took, DB_S)

            health = _unavailable(*await _timed(api.client.get("/healthz")), DB_S)
            assert health["status"] == "degraded"
            assert health["database"] == "unavailable"

            # a write that must read the session first: nothing was published
            body = _unavailable(*await _timed(api.client.put(
                f"/sessions/{sid}", json={}, headers=SERVICE)), DB_S)
            assert body["published"] == "no"
            assert "not published" in body["detail"]

            # a start publishes first: the event is in the log, so 202, within wait + bound
            response, took = await _timed(api.client.post(
                "/sessions", json={"user_id": "alice"}, headers=SERVICE))
            assert response.status_code == 202, response.text
            assert took < WAIT_S + DB_S + PUBLISH_S + SLACK_S
            accepted = response.json()
            assert response.headers["location"] == accepted["location"]
            assert accepted["offset"] >= 0

            # the analytics cache stops serving once its listener's ping goes unanswered,
            # and then analytics meet the same bound
            await eventually(lambda: _offline(api))
            _unavailable(*await _timed(api.client.get("/users/alice/analytics",
                                                      headers=alice)), DB_S)

        # thawed: every route serves again, the pool's abandoned connections replaced
        await eventually(lambda: _serves(api, f"/sessions/{sid}", alice))
        assert (await api.client.get("/healthz")).status_code == 200
        assert (await api.client.get("/users/alice/sessions", headers=alice)).status_code == 200
        assert (await api.client.put(f"/sessions/{sid}", json={},
                                     headers=SERVICE)).status_code == 202


async def _fetch(conn: Any, query: str) -> Any:
    row = await (await conn.execute(query)).fetchone()
    return row[0]


async def _online(api: Api) -> bool:
    return api.cache.online


async def _offline(api: Api) -> bool:
    return not api.cache.online


async def _serves(api: Api, path: str, headers: dict[str, str]) -> bool:
    return (await api.client.get(path, headers=headers)).status_code == 200


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka(tmp_path / "kafka", port=free_port()) as broker:
        yield broker


async def test_a_hung_broker_gives_503_saying_the_event_may_have_been_published(
    own_broker: EmbeddedKafka, fresh_database: str
) -> None:
    kafka = own_broker.bootstrap_servers
    topics = await asyncio.to_thread(create_topic_set, kafka)
    settings = api_settings(kafka, fresh_database, topics, focus_api_wait_ms=WAIT_MS,
                            focus_api_db_timeout_ms=DB_TIMEOUT_MS,
                            focus_api_publish_timeout_ms=PUBLISH_TIMEOUT_MS)
    assert own_broker.pid is not None
    async with running_api(settings) as api:
        first = await api.client.post("/sessions", json={"user_id": "bo"}, headers=SERVICE)
        assert first.status_code == 202, first.text  # connected (no projector runs here)
        keyed = {**SERVICE, "Idempotency-Key": "bo-retry-1"}

        with frozen(own_broker.pid):
            body = _unavailable(*await _timed(api.client.post(
                "/sessions", json={"user_id": "bo"}, headers=keyed)), WRITE_BOUND_S)
            assert body["published"] == "unknown"
            assert "may have been published" in body["detail"]
            assert "same Idempotency-Key" in body["detail"]
            assert kafka in body["detail"]

            body = _unavailable(*await _timed(api.client.post(
                "/sessions", json={"user_id": "bo"}, headers=SERVICE)), WRITE_BOUND_S)
            assert body["published"] == "unknown"
            assert "had no Idempotency-Key" in body["detail"]

            # reads never needed the broker
            assert (await api.client.get("/users/bo/sessions",
                                         headers=api.user("bo"))).status_code == 200

        # thawed: the retry with the same key is taken (and, if the first attempt did land,
        # the projector's event-id dedupe keeps one session)
        async def retried() -> bool:
            r = await api.client.post("/sessions", json={"user_id": "bo"}, headers=keyed)
            return r.status_code in (201, 202)

        await eventually(retried)


async def test_an_unreachable_broker_says_the_event_was_not_published(
    fresh_database: str, fresh_topics: TopicSet
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = api_settings(dead, fresh_database, fresh_topics, focus_api_publish_timeout_ms=3000)
    async with running_api(settings) as api:
        r = await api.client.post("/sessions", json={"user_id": "cy"},
                                  headers={**SERVICE, "Idempotency-Key": "cy-1"})
        assert r.status_code == 503, r.text
        assert r.json()["published"] == "no"
        assert "was not published" in r.json()["detail"]
        assert dead in r.json()["detail"]

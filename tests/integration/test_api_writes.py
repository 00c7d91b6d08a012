"""Write semantics over a real broker: Idempotency-Key, 202 when the projector lags, 503 when
Kafka is unreachable (and the read side keeps serving)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from focus_sessions.embedded import free_port
from tests.integration.api_harness import (
    SERVICE,
    Api,
    api_settings,
    eventually,
    running_api,
    seed_session,
)
from tests.support.infra import TopicSet, through_proxy
from tests.support.proxy import TcpProxy


@pytest.fixture
def api(projected_api: Api) -> Api:
    return projected_api


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


async def test_the_same_start_sent_twice_yields_one_session(api: Api) -> None:
    key = {**SERVICE, "Idempotency-Key": "timer-7f3a-attempt"}
    first = await api.client.post("/sessions", json={"user_id": "dora"}, headers=key)
    again = await api.client.post("/sessions", json={"user_id": "dora"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json()["session_id"] == first.json()["session_id"]
    assert again.json()["started_at"] == first.json()["started_at"]
    assert again.headers["idempotent-replayed"] == "true"
    stats = (await api.client.get("/users/dora/analytics", headers=api.user("dora"))).json()
    assert stats["sessions_started"] == 1


async def test_concurrent_retries_with_one_key_still_yield_one_session(api: Api) -> None:
    # both requests publish (neither sees the other projected): the projector's dedupe by
    # event id keeps one
    key = {**SERVICE, "Idempotency-Key": "race-1"}
    answers = await asyncio.gather(*[
        api.client.post("/sessions", json={"user_id": "erin"}, headers=key) for _ in range(3)])
    assert {r.json()["session_id"] for r in answers} == {answers[0].json()["session_id"]}
    page = (await api.client.get("/users/erin/sessions", headers=api.user("erin"))).json()
    assert len(page["sessions"]) == 1
    assert _count(api.settings.database_url or "", "focus_sessions") == 1


async def test_the_same_key_for_another_user_is_another_session(api: Api) -> None:
    a = await api.client.post("/sessions", json={"user_id": "finn"},
                              headers={**SERVICE, "Idempotency-Key": "k"})
    b = await api.client.post("/sessions", json={"user_id": "gwen"},
                              headers={**SERVICE, "Idempotency-Key": "k"})
    assert a.json()["session_id"] != b.json()["session_id"]


async def test_a_retried_end_with_its_key_answers_the_same_end(api: Api) -> None:
    sid = (await api.client.post("/sessions", json={"user_id": "hal"}, headers=SERVICE)
           ).json()["session_id"]
    key = {**SERVICE, "Idempotency-Key": "end-1"}
    first = await api.client.put(f"/sessions/{sid}", json={"completed": True}, headers=key)
    again = await api.client.put(f"/sessions/{sid}", json={"completed": True}, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json()["ended_at"] == first.json()["ended_at"]
    other = await api.client.put(f"/sessions/{sid}", json={}, headers=SERVICE)
    assert other.status_code == 409


async def test_a_write_answers_202_with_location_when_the_projector_lags(
    kafka_bootstrap: str, fresh_database: str, fresh_topics: TopicSet
) -> None:
    settings = api_settings(kafka_bootstrap, fresh_database, fresh_topics, focus_api_wait_ms=50)
    async with running_api(settings) as api:  # no projector running
        r = await api.client.post("/sessions", json={"user_id": "ivy"}, headers=SERVICE)
    assert r.status_code == 202
    body = r.json()
    assert r.headers["location"] == body["location"] == f"/sessions/{body['session_id']}"
    assert body["offset"] >= 0


async def test_broker_unreachable_writes_are_503_and_reads_keep_serving(
    fresh_database: str, fresh_topics: TopicSet
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = api_settings(dead, fresh_database, fresh_topics,
                            focus_api_publish_timeout_ms=3000)
    async with running_api(settings) as api:
        sid = seed_session(fresh_database, "jo")
        for method, path, body in [
            ("POST", "/sessions", {"user_id": "jo"}),
            ("PUT", f"/sessions/{sid}", {}),
            ("POST", f"/sessions/{sid}/interruptions", {}),
        ]:
            r = await api.client.request(method, path, json=body, headers=SERVICE)
            assert r.status_code == 503, r.text
            assert dead in r.json()["detail"]
            assert r.headers["retry-after"] == "5"
        jo = api.user("jo")
        assert (await api.client.get(f"/sessions/{sid}", headers=jo)).status_code == 200
        assert (await api.client.get("/users/jo/sessions", headers=jo)).status_code == 200
        assert (await api.client.get("/users/jo/analytics", headers=jo)).status_code == 200
        health = await api.client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["broker"] == "not connected"
    # nothing half-written: the session is untouched and no event was recorded
    assert _count(fresh_database, "session_events") == 0
    assert _count(fresh_database, "focus_sessions WHERE ended_at IS NULL") == 1


async def test_database_unreachable_is_503_not_500(
    kafka_bootstrap: str, fresh_database: str, fresh_topics: TopicSet, postgres_proxy: TcpProxy
) -> None:
    url = through_proxy(fresh_database, postgres_proxy.host, postgres_proxy.port)
    settings = api_settings(kafka_bootstrap, url, fresh_topics)
    async with running_api(settings) as api:
        jo = api.user("jo")
        assert (await api.client.get("/users/jo/analytics", headers=jo)).status_code == 200
        postgres_proxy.pause()  # live connections dropped, new ones refused
        # the analytics cache stops serving once its listener sees its connection gone
        await eventually(lambda: _offline(api))
        r = await api.client.get("/users/jo/analytics", headers=jo)
        assert r.status_code == 503
        assert "PostgreSQL is unavailable" in r.json()["detail"]
        assert (await api.client.get("/healthz")).status_code == 503
        postgres_proxy.resume()


async def _offline(api: Api) -> bool:
    return not api.cache.online

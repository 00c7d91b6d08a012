"""The analytics cache against the real projector, broker and PostgreSQL: it follows every
commit, answers only callers who may read, survives a lost connection, and a swap flushes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from focus_sessions.api.listener import APPLICATION_NAME
from focus_sessions.producers import events as ev
from tests.integration.api_harness import (
    ANALYST,
    SERVICE,
    Api,
    api_settings,
    eventually,
    running_api,
    token,
)
from tests.integration.test_replay import caught_up, replayer
from tests.support.projection import publish, running_projector, settings_for
from tests.support.stream import stream


async def analytics(api: Api, user: str, headers: dict[str, str] | None = None) -> Any:
    answer = await api.client.get(f"/users/{user}/analytics", headers=headers or api.user(user))
    assert answer.status_code == 200, answer.text
    return answer.json()


async def warm(api: Api, user: str) -> Any:
    """Read ``user``'s analytics twice: a miss that is kept, then a hit. The hit's answer."""
    await eventually(lambda: _online(api))
    first = await analytics(api, user)  # a miss: read from PostgreSQL, then kept
    hits = api.cache.hits
    second = await analytics(api, user)
    assert api.cache.hits == hits + 1, "the second read was not a hit"
    assert second == first
    return second


async def started_elsewhere(api: Api, kafka: str, topic: str, user: str
                            ) -> tuple[datetime, UUID]:
    """Publish the start of a session of ``user`` 40 minutes ago; wait until it is projected."""
    t0 = datetime.now(UTC) - timedelta(minutes=40)
    start = ev.started(user, t0)
    await publish(kafka, topic, [start])
    await eventually(lambda: _started(api, user, 1))
    return t0, start.data.session_id


async def _health(api: Api, cache: str) -> bool:
    answer = await api.client.get("/healthz")
    assert answer.status_code == 200, answer.text  # the cache never fails the check
    return bool(answer.json()["analytics_cache"] == cache)


async def _online(api: Api) -> bool:
    return api.cache.online


async def test_a_cached_read_follows_each_commit_of_the_projector(
    projected_api: Api, kafka_bootstrap: str, fresh_topics: Any
) -> None:
    api = projected_api
    # alice's session starts, as another service publishes it (not through this API)
    t0, sid = await started_elsewhere(api, kafka_bootstrap, fresh_topics.events, "alice")
    before = await warm(api, "alice")
    assert (before["sessions_started"], before["sessions_ended"]) == (1, 0)

    # it ends 25 minutes in: the projector's notice drops the entry, the next read is fresh
    [(partition, offset)] = await publish(kafka_bootstrap, fresh_topics.events, [
        ev.ended("alice", sid, t0 + timedelta(minutes=25), completed=True)])
    await eventually(lambda: _ended(api, "alice", 1))
    after = await analytics(api, "alice")
    assert after["total_focus_minutes"] == pytest.approx(25)
    assert after["completion_rate"] == 1.0
    moved = {p["partition"]: p["next_offset"] for p in after["freshness"]["positions"]}
    assert moved[partition] > offset
    # ... and that answer is kept again, with the freshness that came with the notice
    assert await analytics(api, "alice") == after


async def _started(api: Api, user: str, n: int) -> bool:
    return bool((await analytics(api, user))["sessions_started"] == n)


async def _ended(api: Api, user: str, n: int) -> bool:
    return bool((await analytics(api, user))["sessions_ended"] == n)


async def test_a_write_through_the_api_is_visible_at_once_in_the_cached_analytics(
    projected_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = projected_api
    alice = api.user("alice")
    started = await api.client.post("/sessions", json={"user_id": "alice"}, headers=alice)
    assert started.status_code == 201, started.text
    assert (await warm(api, "alice"))["sessions_ended"] == 0
    # the projector's notices are slow today: this process reads none of them for a while
    monkeypatch.setattr(api.cache, "apply", lambda notice: False)
    sid = started.json()["session_id"]
    ended = await api.client.put(f"/sessions/{sid}", json={"completed": True}, headers=alice)
    assert ended.status_code == 200, ended.text
    # read-your-writes all the same: the write dropped its user's entry itself
    assert (await analytics(api, "alice"))["sessions_ended"] == 1


async def test_a_cached_answer_goes_only_to_callers_who_may_read_that_user(
    projected_api: Api
) -> None:
    api = projected_api
    started = await api.client.post("/sessions", json={"user_id": "alice"},
                                    headers=api.user("alice"))
    assert started.status_code == 201, started.text
    cached = await warm(api, "alice")
    path = "/users/alice/analytics"
    refused = {
        "no token": ({}, 401),
        "not bearer": ({"Authorization": "Basic YWxpY2U6eA=="}, 401),
        "bad signature": (token("alice", "sessions:self", secret="another-secret-" + "y" * 40),
                          401),
        "expired": (token("alice", "sessions:self", ttl=-10), 401),
        "another user": (api.user("bob"), 403),
        "write scope only": (SERVICE, 403),
    }
    for case, (headers, status) in refused.items():
        hits = api.cache.hits
        answer = await api.client.get(path, headers=headers)
        assert answer.status_code == status, (case, answer.text)
        assert api.cache.hits == hits, case
        assert "sessions_started" not in answer.text, case
    hits = api.cache.hits
    assert await analytics(api, "alice", ANALYST) == cached
    assert api.cache.hits == hits + 1
    # a query string goes to FastAPI, which validates it
    assert (await api.client.get(path, params={"tz": "Mars/Base"},
                                 headers=api.user("alice"))).status_code == 422


async def test_a_lost_listener_connection_stops_the_cache_until_it_is_back(
    projected_api: Api, kafka_bootstrap: str, fresh_topics: Any
) -> None:
    api = projected_api
    t0, sid = await started_elsewhere(api, kafka_bootstrap, fresh_topics.events, "carol")
    await warm(api, "carol")

    with psycopg.connect(api.settings.database_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,)).fetchall()
    assert killed == [(True,)]
    await eventually(lambda: _health(api, "offline"), range(400))
    # the loss is noticed at the next heartbeat (5 s) at the latest; meanwhile the end of
    # carol's session is projected, and no notice can reach this API
    await publish(kafka_bootstrap, fresh_topics.events, [
        ev.ended("carol", sid, t0 + timedelta(minutes=20))])
    await eventually(lambda: _ended(api, "carol", 1), range(400))
    await eventually(lambda: _online(api), range(400))  # reconnected, from an empty cache
    assert await _health(api, "online")
    assert (await warm(api, "carol"))["sessions_ended"] == 1


async def test_a_replay_swap_flushes_what_the_api_cached_from_a_broken_table(
    kafka_bootstrap: str, fresh_database: str, fresh_topics: Any
) -> None:
    topic = fresh_topics.events
    async with running_projector(settings_for(kafka_bootstrap, fresh_database, fresh_topics)):
        await publish(kafka_bootstrap, topic, stream(1500, users=10))
        await caught_up(kafka_bootstrap, fresh_database, topic)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        (healthy,) = conn.execute("SELECT sessions_completed FROM focus_user_stats"
                                  " WHERE user_id = 'user-3'").fetchone()
        # a buggy deploy wrote a wrong counter, and sent no notice
        conn.execute("UPDATE focus_user_stats SET sessions_completed = sessions_completed + 3"
                     " WHERE user_id = 'user-3'")

    async with running_api(api_settings(kafka_bootstrap, fresh_database, fresh_topics)) as api:
        assert (await warm(api, "user-3"))["sessions_completed"] == healthy + 3
        report = await replayer(kafka_bootstrap, fresh_database, topic).run()
        assert report.swapped
        # the swap's flush notice, not the entry's age (60 s), brings the rebuilt figure
        await eventually(lambda: _completed(api, "user-3", healthy))
        assert (await warm(api, "user-3"))["sessions_completed"] == healthy


async def _completed(api: Api, user: str, n: int) -> bool:
    return bool((await analytics(api, user))["sessions_completed"] == n)


async def test_healthz_says_the_cache_is_off_when_it_is_configured_off(
    kafka_bootstrap: str, fresh_database: str, fresh_topics: Any
) -> None:
    settings = api_settings(kafka_bootstrap, fresh_database, fresh_topics,
                            focus_api_cache_entries=0)
    async with running_api(settings) as api:
        assert await _health(api, "off")
        user = api.user("dora")
        for _ in range(2):
            assert (await api.client.get("/users/dora/analytics", headers=user)).status_code == 200
        assert (api.cache.hits, len(api.cache)) == (0, 0)

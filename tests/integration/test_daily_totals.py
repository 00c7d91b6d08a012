"""Org-wide daily totals (``projections/readmodels/daily.py``, migration 0004): kept live, equal
to their definition over ``focus_sessions``, backfilled by replay, checked by verify, served by
``GET /analytics/daily`` to analytics tokens only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from focus_sessions.producers import events as ev
from tests.integration.api_harness import ANALYST, api_settings, running_api, token
from tests.integration.test_replay import caught_up, replayer, verify_db
from tests.integration.test_verify import execute, failing
from tests.support.projection import publish, running_projector, settings_for, snapshot
from tests.support.stream import stream

#: The definition in ../shared/DESIGN.md, written independently of the read model's code: each
#: session on the UTC day of its start.
DEFINITION = """
SELECT (started_at AT TIME ZONE 'UTC')::date AS day, count(DISTINCT user_id),
       count(*), count(ended_at), count(*) FILTER (WHERE ended_at IS NOT NULL AND completed),
       coalesce(sum(focus_seconds) FILTER (WHERE ended_at IS NOT NULL), 0),
       coalesce(sum(interruptions), 0)
  FROM focus_sessions GROUP BY 1 ORDER BY 1
"""
STORED = """
SELECT day, active_users, sessions_started, sessions_ended, sessions_completed, focus_seconds,
       interruptions FROM focus_daily_totals ORDER BY day
"""


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query.encode()).fetchall()


def history() -> list[Any]:
    """Duplicates and shuffled sessions (the stream's), plus sessions around UTC midnight in
    zones whose local day differs, and a session won by another user's earlier start."""
    events = list(stream(1500, users=15))
    midnight = datetime(2026, 5, 6, tzinfo=UTC)
    late = ev.started("tokyo-ann", midnight - timedelta(minutes=5), time_zone="Asia/Tokyo")
    early = ev.started("la-bob", midnight + timedelta(minutes=5),
                       time_zone="America/Los_Angeles")
    taken = ev.started("ben", midnight + timedelta(hours=3))
    sid = taken.data.session_id
    return [*events, late, ev.ended("tokyo-ann", late.data.session_id,
                                    midnight + timedelta(minutes=20)),
            early, taken, ev.ended("ben", sid, midnight + timedelta(hours=3, minutes=25)),
            # cat's earlier start wins the session: it leaves ben (and May 6th's totals)
            ev.started("cat", midnight - timedelta(hours=2), session_id=sid)]


async def test_daily_totals_equal_their_definition_live_after_replay_and_on_the_api(
    kafka_bootstrap, fresh_database, fresh_topics
):
    topic = fresh_topics.events
    *first, takes_back = history()
    async with running_projector(settings_for(kafka_bootstrap, fresh_database, fresh_topics)):
        await publish(kafka_bootstrap, topic, first)
        await caught_up(kafka_bootstrap, fresh_database, topic)
        for table in ("focus_daily_users", "focus_user_weekly"):
            assert rows(fresh_database, f"SELECT count(*) FROM {table} WHERE user_id = 'ben'"
                        ) == [(1,)], table
        # a later batch takes ben's start back: his day and week rows go (the deletes' path)
        await publish(kafka_bootstrap, topic, [takes_back])
        await caught_up(kafka_bootstrap, fresh_database, topic)
    for table in ("focus_daily_users", "focus_user_weekly"):
        assert rows(fresh_database, f"SELECT count(*) FROM {table} WHERE user_id = 'ben'"
                    ) == [(0,)], table
    live = rows(fresh_database, STORED)
    assert len(live) >= 3
    assert live == rows(fresh_database, DEFINITION)
    assert failing(await verify_db(fresh_database, topic, kafka_bootstrap)) == {}
    by_day = {r[0]: r for r in live}
    may6 = by_day[datetime(2026, 5, 6).date()]
    may5 = by_day[datetime(2026, 5, 5).date()]
    assert may6[1] >= 1 and may5[1] >= 1  # la-bob on the 6th; tokyo-ann and cat on the 5th
    healthy = snapshot(fresh_database)

    # as right after migration 0004 on a database that existed before it: empty tables
    execute(fresh_database, "DELETE FROM focus_daily_totals")
    execute(fresh_database, "DELETE FROM focus_daily_users")
    found = failing(await verify_db(fresh_database, topic, kafka_bootstrap))
    assert set(found) == {"focus_daily_users = recomputed from focus_sessions",
                          "focus_daily_totals = recomputed from focus_sessions"}
    report = await replayer(kafka_bootstrap, fresh_database, topic).run()
    assert report.swapped
    assert snapshot(fresh_database) == healthy  # backfilled, row for row
    assert failing(await verify_db(fresh_database, topic, kafka_bootstrap)) == {}

    # a --users replay rebuilds those users' days and the org-wide totals of those days
    execute(fresh_database, "UPDATE focus_daily_totals SET active_users = active_users + 7")
    execute(fresh_database, "DELETE FROM focus_daily_users WHERE user_id = 'la-bob'")
    report = await replayer(kafka_bootstrap, fresh_database, topic,
                            users=frozenset({"la-bob"})).run()
    assert report.swapped
    after = rows(fresh_database, STORED)
    bobs_days = {r[0] for r in rows(fresh_database,
                                    "SELECT day FROM focus_daily_users WHERE user_id = 'la-bob'")}
    assert bobs_days == {datetime(2026, 5, 6).date()}
    defined = {r[0]: r for r in rows(fresh_database, DEFINITION)}
    for row in after:
        if row[0] in bobs_days:  # rebuilt
            assert row == defined[row[0]]
        else:  # not la-bob's: left as it was, damage included
            assert row == (row[0], defined[row[0]][1] + 7, *defined[row[0]][2:])

    settings = api_settings(kafka_bootstrap, fresh_database, fresh_topics)
    first, last = live[0][0], live[-1][0]
    async with running_api(settings) as api:
        answer = await api.client.get("/analytics/daily", headers=ANALYST, params={
            "from": (first - timedelta(days=1)).isoformat(), "to": last.isoformat()})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        days = body["days"]
        assert len(days) == (last - first).days + 2  # every day of the range, oldest first
        assert days[0] == {"day": (first - timedelta(days=1)).isoformat(), "active_users": 0,
                           "sessions_started": 0, "sessions_ended": 0,
                           "sessions_completed": 0, "focus_minutes": 0.0, "interruptions": 0}
        stored = {r[0].isoformat(): r for r in after}
        for day in days[1:]:
            if day["day"] in stored:
                r = stored[day["day"]]
                assert (day["active_users"], day["sessions_started"], day["sessions_ended"],
                        day["sessions_completed"], day["interruptions"]) == (
                    r[1], r[2], r[3], r[4], r[6])
                assert day["focus_minutes"] == float(round(r[5] / 60, 4))
        assert body["freshness"]["positions"]

        own = token("user-3", "sessions:self")
        refused = await api.client.get("/analytics/daily", headers=own)
        assert refused.status_code == 403
        too_long = await api.client.get("/analytics/daily", headers=ANALYST, params={
            "from": "2020-01-01", "to": "2026-01-01"})
        assert too_long.status_code == 422
        assert "to" in too_long.text

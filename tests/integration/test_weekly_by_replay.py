"""Issue 4's workflow: a rollup added by a migration is backfilled by replay and served."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg

from focus_sessions.producers import events as ev
from tests.integration.api_harness import ANALYST, api_settings, running_api
from tests.integration.test_replay import replayer
from tests.support.projection import publish, running_projector, settings_for, wait_caught_up


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


async def test_a_new_rollup_is_backfilled_by_replay_and_served_by_the_api(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # history: Sunday 23:30 UTC is already Monday in Tokyo, so the week is Tokyo's
    now = datetime.now(UTC).replace(microsecond=0)
    sunday_night = datetime.combine(_monday(now.date()) - timedelta(days=1),
                                    datetime.min.time(), UTC) + timedelta(hours=23, minutes=30)
    tokyo = ev.started("kiko", sunday_night, time_zone="Asia/Tokyo")
    utc = ev.started("kiko", sunday_night - timedelta(days=3))
    history = [
        tokyo, ev.ended("kiko", tokyo.data.session_id, sunday_night + timedelta(minutes=25)),
        utc, ev.ended("kiko", utc.data.session_id, utc.data.started_at + timedelta(minutes=10),
                      completed=False),
    ]
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    async with running_projector(s):
        sent = await publish(kafka_bootstrap, fresh_topics.events, history)
        await wait_caught_up(fresh_database, fresh_topics, sent)

    # as right after migration 0002 on a database that existed before it: the table is empty
    with psycopg.connect(fresh_database) as conn:
        conn.execute("DELETE FROM focus_user_weekly")
    report = await replayer(kafka_bootstrap, fresh_database, fresh_topics.events).run()
    assert report.swapped

    settings = api_settings(kafka_bootstrap, fresh_database, fresh_topics)
    async with running_api(settings) as api:
        answer = await api.client.get("/users/kiko/weekly", params={"weeks": 4},
                                      headers=ANALYST)
    assert answer.status_code == 200, answer.text
    weeks = {w["week_start"]: w for w in answer.json()["weeks"]}
    this_week = _monday(now.date()).isoformat()  # Tokyo's Monday
    last_week = (_monday(now.date()) - timedelta(days=7)).isoformat()
    assert weeks[this_week]["focus_minutes"] == 25 and weeks[this_week]["completion_rate"] == 1
    assert weeks[last_week]["focus_minutes"] == 10 and weeks[last_week]["completion_rate"] == 0
    assert list(weeks) == [this_week, last_week]  # newest first

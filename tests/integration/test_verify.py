"""``focus verify`` and the replay diff against a deliberately damaged live database."""

from __future__ import annotations

import asyncio

import psycopg
from typer.testing import CliRunner

from focus_sessions.cli import app
from focus_sessions.producers import events as ev
from tests.integration.test_replay import (
    caught_up,
    replayer,
    verify_db,
)
from tests.support.projection import publish, running_projector, settings_for, snapshot
from tests.support.stream import stream
from tests.unit.histories import T0, minutes


def execute(url: str, statement: str, *params: object) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(statement.encode(), params)


def failing(report) -> dict[str, list[str]]:
    return {p.check: p.examples for p in report.problems if p.count}


async def project(bootstrap: str, url: str, topics, events) -> None:
    async with running_projector(settings_for(bootstrap, url, topics)):
        await publish(bootstrap, topics.events, events)
        await caught_up(bootstrap, url, topics.events)


async def test_a_corrupted_row_is_reported_by_verify_and_the_diff_and_fixed_by_the_swap(
    kafka_bootstrap, fresh_database, fresh_topics
):
    topic = fresh_topics.events
    await project(kafka_bootstrap, fresh_database, fresh_topics, stream(2000, users=20))
    healthy = snapshot(fresh_database)
    assert failing(await verify_db(fresh_database, topic, kafka_bootstrap)) == {}

    # a buggy deploy: one rollup counter and one session row are wrong
    execute(fresh_database, "UPDATE focus_user_stats SET sessions_completed ="
            " sessions_completed + 3 WHERE user_id = 'user-3'")
    (sid, user) = psycopg.connect(fresh_database).execute(
        "SELECT session_id, user_id FROM focus_sessions WHERE user_id <> 'user-3'"
        " ORDER BY session_id LIMIT 1").fetchone()
    execute(fresh_database, "UPDATE focus_sessions SET interruptions = 99 WHERE session_id = %s",
            sid)

    found = failing(await verify_db(fresh_database, topic, kafka_bootstrap))
    rollups = found["focus_user_stats = recomputed from focus_sessions"]
    assert len(rollups) == 2
    assert any("'user-3'" in e for e in rollups)
    assert any(f"{user!r}" in e for e in rollups)
    (row,) = found["focus_sessions = derive(session_events)"]
    assert str(sid) in row
    assert "interruptions: stored 99" in row

    report = await replayer(kafka_bootstrap, fresh_database, topic).run(dry_run=True)
    assert report.diff is not None
    sessions, stats = report.diff.table("focus_sessions"), report.diff.table("focus_user_stats")
    assert (sessions.differing, stats.differing) == (1, 1)
    assert sessions.examples[0].key == (sid,)
    assert sessions.examples[0].columns["interruptions"][0] == 99
    assert stats.examples[0].key == ("user-3",)

    report = await replayer(kafka_bootstrap, fresh_database, topic).run()
    assert report.swapped
    assert snapshot(fresh_database) == healthy
    assert failing(await verify_db(fresh_database, topic, kafka_bootstrap)) == {}


async def test_replay_of_named_users_fixes_only_them(
    kafka_bootstrap, fresh_database, fresh_topics
):
    topic = fresh_topics.events
    await project(kafka_bootstrap, fresh_database, fresh_topics, stream(2000, users=20))
    healthy = snapshot(fresh_database)
    execute(fresh_database, "UPDATE focus_user_stats SET total_interruptions = -1"
            " WHERE user_id IN ('user-3', 'user-4', 'user-5')")

    report = await replayer(kafka_bootstrap, fresh_database, topic,
                                    users=frozenset({"user-3", "user-4"})).run()
    assert report.diff is not None
    assert report.diff.table("focus_user_stats").differing == 2
    assert report.diff.table("focus_sessions").clean

    found = failing(await verify_db(fresh_database, topic, kafka_bootstrap))
    (example,) = found["focus_user_stats = recomputed from focus_sessions"]
    assert "'user-5'" in example
    execute(fresh_database, "UPDATE focus_user_stats SET total_interruptions ="
            " (SELECT sum(interruptions) FROM focus_sessions WHERE user_id = 'user-5')"
            " WHERE user_id = 'user-5'")
    assert snapshot(fresh_database) == healthy


async def test_verify_reports_held_events_and_inconsistent_positions(
    kafka_bootstrap, fresh_database, fresh_topics
):
    topic = fresh_topics.events
    orphan = ev.ended("zoe", ev.started("zoe", T0).data.session_id, minutes(25))
    await project(kafka_bootstrap, fresh_database, fresh_topics, [
        ev.started("ada", T0), orphan,  # the end's start never arrives: held
    ])
    report = await verify_db(fresh_database, topic, kafka_bootstrap)
    assert report.held == 1
    assert report.held_oldest_age is not None
    assert failing(report) == {}

    execute(fresh_database, "UPDATE projector_positions SET next_offset = next_offset + 5"
            " WHERE topic = %s AND next_offset > 0", topic)
    execute(fresh_database, "INSERT INTO projector_positions (topic, kafka_partition,"
            " next_offset) VALUES (%s, 99, -1)", topic)
    found = failing(await verify_db(fresh_database, topic, kafka_bootstrap))
    problems = found["projector_positions are consistent"]
    assert any("beyond the log end offset" in p for p in problems)
    assert any("no partition 99" in p for p in problems)
    assert any("negative position" in p for p in problems)


def test_the_verify_command_exits_non_zero_on_a_mismatch(
    kafka_bootstrap, fresh_database, fresh_topics
):
    asyncio.run(project(kafka_bootstrap, fresh_database, fresh_topics, stream(300, users=5)))
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": fresh_database,
           "FOCUS_EVENTS_TOPIC": fresh_topics.events, "FOCUS_DLQ_TOPIC": fresh_topics.dlq}
    runner = CliRunner()
    dry = runner.invoke(app, ["replay", "--dry-run", "--workers", "1"], env=env)
    assert dry.exit_code == 0, dry.output
    execute(fresh_database, "UPDATE focus_user_stats SET sessions_started = 0")
    result = runner.invoke(app, ["verify"], env=env)
    assert result.exit_code == 1, result.output
    assert "mismatch" in result.output
    fixed = runner.invoke(app, ["replay", "--workers", "1"], env=env)
    assert fixed.exit_code == 0, fixed.output
    assert runner.invoke(app, ["verify"], env=env).exit_code == 0

"""Replay against the real broker and PostgreSQL: guarantee 5 (replay rebuilds the same state)."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from focus_sessions.bootstrap import producer
from focus_sessions.consumers.replay import pool as replay_pool
from focus_sessions.consumers.replay import shadow_sql
from focus_sessions.consumers.replay.follow import ReplayOptions, topic_log_ends
from focus_sessions.consumers.replay.replayer import Replayer, ReplayReport
from focus_sessions.contracts.codec import encode
from focus_sessions.contracts.events import CloudEvent
from focus_sessions.migrate import migrate
from focus_sessions.producers import events as ev
from focus_sessions.projections.verify import VerifyReport, verify
from tests.integration.api_harness import api_settings, running_api
from tests.support.infra import create_database, drop_database
from tests.support.projection import (
    positions,
    publish,
    running_projector,
    settings_for,
    snapshot,
    snapshot_diff,
)
from tests.support.stream import stream
from tests.unit.histories import T0, minutes


def options(bootstrap: str, url: str, topic: str, **more: object) -> ReplayOptions:
    return ReplayOptions(bootstrap=bootstrap, url=url, topic=topic, workers=2, **more)  # type: ignore[arg-type]


def replayer(bootstrap: str, url: str, topic: str, **more: object) -> Replayer:
    return Replayer(options(bootstrap, url, topic, **more), migrate)


async def caught_up(bootstrap: str, url: str, topic: str, seconds: float = 120) -> None:
    """Wait until the live positions reach the true end of every partition."""
    ends = await topic_log_ends(bootstrap, topic)
    deadline = time.monotonic() + seconds
    while True:
        stored = positions(url, topic)
        if all(stored.get(p, 0) >= end for p, end in ends.items() if end):
            return
        assert time.monotonic() < deadline, f"projection stuck at {stored}, log ends at {ends}"
        await asyncio.sleep(0.1)


def describe(report: ReplayReport) -> str:
    assert report.diff is not None
    return "\n".join(
        f"{t.table}: live {t.live_rows} shadow {t.shadow_rows} only-live {t.only_live} "
        f"only-shadow {t.only_shadow} differing {t.differing} " + "; ".join(map(str, t.examples))
        for t in report.diff.tables
    )


async def test_replay_of_a_simulated_log_equals_the_live_tables(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    async with running_projector(s):
        await publish(kafka_bootstrap, fresh_topics.events, stream(3000, users=40))
        await caught_up(kafka_bootstrap, fresh_database, fresh_topics.events)
    live = snapshot(fresh_database)

    report = await replayer(kafka_bootstrap, fresh_database, fresh_topics.events).run(
        dry_run=True)
    check_weekly_only_new(report)
    assert report.events > 2500
    assert report.caught_up == 0

    report = await replayer(kafka_bootstrap, fresh_database, fresh_topics.events).run()
    assert report.swapped
    assert snapshot(fresh_database) == live
    with psycopg.connect(fresh_database) as conn:
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'focus_%'")
        assert schemas.fetchall() == []


def indexes(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT tablename, indexname, indexdef FROM pg_indexes"
                            " WHERE schemaname = 'public' ORDER BY 1, 2").fetchall()


async def test_the_swap_moves_the_read_models_with_every_index_and_nothing_else(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # the bulk phase drops the bulk tables' keys and full indexes and builds them after the
    # load, and keeps their partial indexes through it: either way, all of them come back
    migrate(fresh_database)
    # a table of the operator's own next to the read models: not the replay's to move
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE operator_notes (note text PRIMARY KEY)")
        conn.execute("INSERT INTO operator_notes VALUES ('kept')")
    before = indexes(fresh_database)
    assert any("WHERE" in definition for _, _, definition in before)  # a partial one is there
    await publish(kafka_bootstrap, fresh_topics.events, stream(300, users=6))
    report = await replayer(kafka_bootstrap, fresh_database, fresh_topics.events).run()
    assert report.swapped
    assert indexes(fresh_database) == before
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT note FROM public.operator_notes").fetchall() == [("kept",)]
    # a swap moves what the registry names, even where a migration made the same other table
    # in the shadow schema too (a ledger, say): such a table keeps its live rows
    async with await psycopg.AsyncConnection.connect(fresh_database) as conn:
        assert await shadow_sql.tables(conn, "public") == list(shadow_sql.SWAPPED)


async def test_without_a_fork_server_the_workers_are_spawned(
    kafka_bootstrap, fresh_database, fresh_topics, monkeypatch
):
    # Linux and macOS have a fork server; elsewhere the bulk workers are spawned, and each
    # imports its modules itself. Same result either way.
    monkeypatch.setattr(replay_pool.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert replay_pool._context().get_start_method() == "spawn"
    migrate(fresh_database)
    placed = await publish(kafka_bootstrap, fresh_topics.events, stream(300, users=6))
    report = await replayer(kafka_bootstrap, fresh_database, fresh_topics.events).run(
        dry_run=True)
    assert report.events + report.duplicates == len(placed)
    assert report.diff is not None
    counts = {t.table: (t.live_rows, t.shadow_rows) for t in report.diff.tables}
    assert counts["session_events"] == (0, report.events)
    assert counts["focus_sessions"][0] == 0 < counts["focus_sessions"][1]


async def test_the_swapped_in_tables_keep_the_live_tables_owner_and_grants(
    kafka_bootstrap, fresh_database, fresh_topics
):
    """A least-privilege reader (say, the API's role) may read the live tables, or some of their
    columns; after a swap it must still be able to, and the tables keep their owner even when
    the replay runs as another role: the shadow tables are new tables."""
    reader, auditor, columns, owner = (f"focus_{kind}_{uuid.uuid4().hex[:8]}"
                                       for kind in ("reader", "auditor", "columns", "owner"))
    roles = (reader, auditor, columns, owner)
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    async with running_projector(s):
        await publish(kafka_bootstrap, fresh_topics.events, stream(300, users=5))
        await caught_up(kafka_bootstrap, fresh_database, fresh_topics.events)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON focus_sessions, focus_user_stats TO {}")
                     .format(sql.Identifier(reader)))
        conn.execute(sql.SQL("GRANT SELECT, DELETE ON session_events TO {} WITH GRANT OPTION")
                     .format(sql.Identifier(auditor)))
        conn.execute(sql.SQL("GRANT SELECT (user_id, sessions_started) ON focus_user_stats TO {}")
                     .format(sql.Identifier(columns)))
        conn.execute(sql.SQL("ALTER TABLE focus_user_weekly OWNER TO {}")
                     .format(sql.Identifier(owner)))
    try:
        report = await replayer(kafka_bootstrap, fresh_database, fresh_topics.events).run()
        assert report.swapped
        with psycopg.connect(fresh_database) as conn:
            def may(role: str, table: str, privilege: str) -> bool:
                row = conn.execute("SELECT has_table_privilege(%s, %s, %s)",
                                   (role, f"public.{table}", privilege)).fetchone()
                return bool(row and row[0])

            def may_read(role: str, table: str, column: str) -> bool:
                row = conn.execute("SELECT has_column_privilege(%s, %s, %s, 'SELECT')",
                                   (role, f"public.{table}", column)).fetchone()
                return bool(row and row[0])

            def owner_of(table: str) -> str:
                row = conn.execute("SELECT tableowner FROM pg_tables"
                                   " WHERE schemaname = 'public' AND tablename = %s",
                                   (table,)).fetchone()
                assert row is not None
                return str(row[0])

            assert may(reader, "focus_sessions", "SELECT")
            assert may(reader, "focus_user_stats", "SELECT")
            assert not may(reader, "focus_sessions", "INSERT")
            assert not may(reader, "session_events", "SELECT")
            assert may(auditor, "session_events", "DELETE WITH GRANT OPTION")
            assert not may(auditor, "focus_sessions", "SELECT")
            assert may_read(columns, "focus_user_stats", "sessions_started")
            assert not may_read(columns, "focus_user_stats", "total_focus_seconds")
            assert not may(columns, "focus_user_stats", "SELECT")
            assert owner_of("focus_user_weekly") == owner
            assert owner_of("focus_sessions") == owner_of("projector_positions") != owner
    finally:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            me = conn.execute("SELECT current_user").fetchone()
            assert me is not None
            for role in roles:
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}; DROP OWNED BY {}; DROP ROLE {}")
                             .format(sql.Identifier(role), sql.Identifier(me[0]),
                                     sql.Identifier(role), sql.Identifier(role)))


def check_weekly_only_new(report: ReplayReport) -> None:
    """Live and replay agree on every table, the weekly rollup included."""
    assert report.diff is not None
    assert report.diff.table("focus_user_weekly").shadow_rows > 0
    assert all(t.clean for t in report.diff.tables), describe(report)


async def verify_db(url: str, topic: str, bootstrap: str) -> VerifyReport:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await verify(conn, topic=topic, log_ends=await topic_log_ends(bootstrap, topic))


@pytest.mark.parametrize("live_is", ["caught up", "behind"])
async def test_replay_while_events_arrive_and_the_api_answers_equals_a_clean_single_pass(
    kafka_bootstrap, postgres_url, fresh_database, fresh_topics, live_is
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    topic = fresh_topics.events
    events = list(stream(16_000, users=60, seed=11))
    reads, errors, sessions_seen = [0], list[str](), [0]
    swapped = asyncio.Event()
    sent = {"during": 0, "after": 0}

    async def keep_publishing(rest: list) -> None:
        for i in range(0, len(rest), 100):
            await publish(kafka_bootstrap, topic, rest[i:i + 100])
            sent["after" if swapped.is_set() else "during"] += len(rest[i:i + 100])
            if sent["after"] >= 1500:
                return
            await asyncio.sleep(0.03)

    async def keep_reading(stop: asyncio.Event) -> None:
        """The read API (the real app and its pool, over ASGI) and plain SQL, in a loop."""
        settings = api_settings(kafka_bootstrap, fresh_database, fresh_topics)
        user = "user-7"
        async with running_api(settings) as api, \
                await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as c:
            while not stop.is_set():
                try:
                    page = await api.client.get(f"/users/{user}/sessions", params={"limit": 5},
                                                headers=api.user(user))
                    answers = [page]
                    answers.append(await api.client.get(f"/users/{user}/analytics",
                                                         headers=api.user(user)))
                    answers.append(await api.client.get(f"/users/{user}/weekly",
                                                        headers=api.user(user)))
                    for item in page.json().get("sessions", [])[:1]:
                        answers.append(await api.client.get(f"/sessions/{item['session_id']}",
                                                            headers=api.user(user)))
                    # every answer but a 200 is a broken promise
                    errors.extend(f"{a.request.url.path}: {a.status_code} {a.text[:200]}"
                                  for a in answers if a.status_code != 200)
                    await c.execute("SELECT count(*), sum(interruptions) FROM focus_sessions")
                    await c.execute("SELECT max(next_offset) FROM projector_positions")
                    reads[0] += 1
                    sessions_seen[0] += len(page.json().get("sessions", []))
                except psycopg.Error as exc:
                    errors.append(repr(exc))
                await asyncio.sleep(0.002)

    async with running_projector(s) as projector:
        await publish(kafka_bootstrap, topic, events[:6000])
        if live_is == "caught up":  # else the shadow overtakes it: fenced, then it re-reads
            await caught_up(kafka_bootstrap, fresh_database, topic)
        stop_reading = asyncio.Event()
        reader = asyncio.create_task(keep_reading(stop_reading))
        publisher = asyncio.create_task(keep_publishing(events[6000:]))
        report = await replayer(kafka_bootstrap, fresh_database, topic).run()
        swapped.set()
        await publisher  # the live projector goes on after the swap
        await caught_up(kafka_bootstrap, fresh_database, topic)
        stop_reading.set()
        await reader
        fenced = projector.stats.fenced
    assert report.swapped
    assert sent["during"] > 0, sent
    assert sent["after"] >= 1500, sent
    assert errors == []
    assert reads[0] > 10
    assert sessions_seen[0] > 0  # the API served data, not only empty pages
    print(f"live {live_is}: lag {report.live_lag}, caught up {report.caught_up}, fenced"
          f" {fenced} time(s), {reads[0]} reads")

    clean = create_database(postgres_url)
    try:
        ref = settings_for(kafka_bootstrap, clean, fresh_topics,
                           focus_consumer_group=f"clean-{topic}")
        async with running_projector(ref):
            await caught_up(kafka_bootstrap, clean, topic)
        assert snapshot(fresh_database) == snapshot(clean)
        assert positions(fresh_database, topic) == positions(clean, topic)
        checked = await verify_db(fresh_database, topic, kafka_bootstrap)
        failing = [p for p in checked.problems if p.count]
        assert failing == []
    finally:
        drop_database(postgres_url, clean)


async def test_mixed_v1_and_v2_ends_project_the_same_live_and_on_replay(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    a = ev.started("mia", T0, time_zone="Europe/Paris")
    b = ev.started("mia", minutes(60))
    c = ev.started("noa", minutes(5))
    log = [
        a, ev.ended_v1("mia", a.data.session_id, minutes(20), completed=True, interruptions=2),
        # two ends for one session, v1 then v2: the earliest ended_at wins whatever the version
        b, ev.ended("mia", b.data.session_id, minutes(90), completed=True, focus_quality=4),
        ev.ended_v1("mia", b.data.session_id, minutes(85), completed=False),
        # a v2 end arriving before its start (held), then a late v1 duplicate-by-content
        ev.ended("noa", c.data.session_id, minutes(30), outcome="cancelled"), c,
        ev.ended_v1("noa", c.data.session_id, minutes(31), completed=True),
    ]
    async with running_projector(s):
        await publish(kafka_bootstrap, fresh_topics.events, log)
        await caught_up(kafka_bootstrap, fresh_database, fresh_topics.events)
    live = snapshot(fresh_database)
    outcomes = {r[0]: (r[10], r[7]) for r in live["focus_sessions"]}
    assert outcomes == {a.data.session_id: ("completed", 2), b.data.session_id: ("abandoned", 0),
                        c.data.session_id: ("cancelled", 0)}

    report = await replayer(kafka_bootstrap, fresh_database, fresh_topics.events).run()
    check_weekly_only_new(report)
    assert snapshot(fresh_database) == live


class SignalsSwap:
    """Progress that tells the test when the swap begins."""

    def __init__(self) -> None:
        self.swapping = asyncio.Event()

    def phase(self, text: str) -> None:
        if text.startswith("swapping"):
            self.swapping.set()

    def bulk_started(self, ends) -> None:
        return None

    def bulk_advanced(self, offsets) -> None:
        return None


async def test_the_swap_backs_off_instead_of_deadlocking_with_a_reader(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    async with running_projector(s):
        await publish(kafka_bootstrap, fresh_topics.events, stream(500, users=5))
        await caught_up(kafka_bootstrap, fresh_database, fresh_topics.events)
    live = snapshot(fresh_database)
    progress = SignalsSwap()
    replay = Replayer(options(kafka_bootstrap, fresh_database, fresh_topics.events), migrate,
                      progress)
    task = asyncio.create_task(replay.run())

    # A reader's transaction holds focus_user_stats when the swap starts locking, then reads
    # session_events, which the swap has locked already: a lock cycle. The swap must be the one
    # that gives way (lock_timeout < deadlock_timeout); the reader must never see an error.
    async with await psycopg.AsyncConnection.connect(fresh_database) as reader:
        await reader.execute("SELECT count(*) FROM focus_user_stats")
        await asyncio.wait_for(progress.swapping.wait(), 60)
        await asyncio.sleep(0.1)
        (count,) = await (await reader.execute("SELECT count(*) FROM session_events")).fetchone()
        assert count == len(live["session_events"])
        await asyncio.sleep(0.5)  # hold on a little longer: the swap keeps backing off
        await reader.commit()
    report = await task
    assert report.swapped
    assert report.swap_attempts > 1
    assert snapshot(fresh_database) == live


async def test_replay_adds_up_users_and_sessions_whose_events_sit_with_different_workers(
    kafka_bootstrap, fresh_database, fresh_topics
):
    """Keys are user ids, so a user's events normally sit on one partition and so with one bulk
    worker; after partitions are added, or from a producer with its own partitioner, they do
    not. The two workers read partitions 0, 2, 4 and 1, 3, 5: every case below crosses them."""
    topic = fresh_topics.events
    placed: list[tuple[int, CloudEvent]] = []
    # a user with a whole session on each worker's side, and one split between them
    for partition, at in ((0, 0), (1, 60)):
        start = ev.started("wanderer", minutes(at))
        sid = start.data.session_id
        placed += [(partition, start),
                   (partition, ev.interrupted("wanderer", sid, minutes(at + 5))),
                   (partition, ev.ended("wanderer", sid, minutes(at + 25)))]
    split = ev.started("wanderer", minutes(120), time_zone="Asia/Tokyo")
    placed += [(2, split), (3, ev.interrupted("wanderer", split.data.session_id, minutes(124))),
               (2, ev.ended("wanderer", split.data.session_id, minutes(150), focus_quality=4))]
    # a user only one worker sees, but one of whose sessions has an end (naming someone else,
    # so a contradiction) on the other worker's side: the coordinator adds that session's
    # share to the row the worker loaded
    for at in (0, 60):
        start = ev.started("homebody", minutes(at))
        placed += [(4, start), (4, ev.ended("homebody", start.data.session_id, minutes(at + 25)))]
    stray = ev.started("homebody", minutes(200))
    placed += [(0, stray), (5, ev.ended("stranger", stray.data.session_id, minutes(225)))]

    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    async with running_projector(s):
        await publish(kafka_bootstrap, topic, stream(600, users=10))
        kafka = producer(kafka_bootstrap)
        await kafka.start()
        try:
            for partition, event in placed:
                await kafka.send_and_wait(topic, encode(event), partition=partition,
                                          key=event.data.user_id.encode())  # type: ignore[attr-defined]
        finally:
            await kafka.stop()
        await caught_up(kafka_bootstrap, fresh_database, topic)
    live = snapshot(fresh_database)
    users = {row[1] for row in live["focus_sessions"]}
    assert {"wanderer", "homebody"} <= users

    report = await replayer(kafka_bootstrap, fresh_database, topic).run()
    assert report.swapped, describe(report)
    assert report.diff is not None and report.diff.clean, describe(report)
    assert snapshot_diff(snapshot(fresh_database), live) == {}

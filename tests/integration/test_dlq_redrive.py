"""`focus dlq redrive` against the real broker and PostgreSQL (issue 19, item 4).

How letters are made honestly: a projector deployed before the ``ended`` v1 -> v2 upcaster
existed knew only ``focus.session.ended.v2`` and refused a v1 end as ``unknown-type``. The test
runs the real projector with its decoder swapped for one that refuses v1 ends exactly as the
contract's decoder refuses a type it does not know (``PoisonEvent("unknown-type", ...)``), then
deploys the fix (the current decoder, which upcasts v1) and redrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from focus_sessions.bootstrap import producer
from focus_sessions.consumers.dlq_letters import REDRIVE_COUNT, REDRIVE_LETTER, LetterFilter
from focus_sessions.consumers.redrive import (
    Limits,
    RedriveOptions,
    Redriver,
    RedriveReport,
)
from focus_sessions.consumers.redrive_ledger import Ledger, RedriveBusy
from focus_sessions.consumers.redrive_plan import Skip
from focus_sessions.consumers.replay.follow import (
    ReplayOptions,
    log_end_offsets,
    partitions_of,
)
from focus_sessions.consumers.replay.replayer import Replayer
from focus_sessions.contracts.codec import PoisonEvent
from focus_sessions.contracts.events import CloudEvent
from focus_sessions.migrate import migrate
from focus_sessions.producers import events as ev
from focus_sessions.projections import wire
from focus_sessions.settings import ProjectorSettings
from tests.support.infra import TopicSet
from tests.support.projection import (
    dead_letters,
    publish,
    rollup_mismatches,
    running_projector,
    settings_for,
    snapshot,
    wait_caught_up,
)
from tests.unit.histories import T0, minutes

V1_END = "focus.session.ended.v1"


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def decoder_without_the_v1_upcaster(key: bytes | None, value: bytes | None) -> Any:
    """The projector's decoder as it was before ``ended.v1`` had an upcaster."""
    if value and f'"type":"{V1_END}"'.encode() in value:
        raise PoisonEvent("unknown-type", f"type {V1_END!r} is not one of: "
                          "focus.session.ended.v2, focus.session.interrupted.v1, "
                          "focus.session.started.v1")
    return wire.decode_message(key, value)


@contextlib.contextmanager
def old_projector_code(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as patched:
        patched.setattr("focus_sessions.consumers.projector.decode_message",
                        decoder_without_the_v1_upcaster)
        yield


async def dead_lettered_by_the_old_projector(
    s: ProjectorSettings, topics: TopicSet, monkeypatch: pytest.MonkeyPatch,
    events: list[CloudEvent], letters: int,
) -> None:
    assert s.database_url is not None
    with old_projector_code(monkeypatch):
        async with running_projector(s):
            sent = await publish(str(s.kafka_bootstrap_servers), topics.events, events)
            await wait_caught_up(s.database_url, topics, sent)
    found = await dead_letters(str(s.kafka_bootstrap_servers), topics.dlq, letters)
    assert Counter(dict(r.headers)["focus.dlq.reason"] for r in found) == {
        b"unknown-type": letters}


def sessions(user: str, n: int) -> tuple[list[CloudEvent], list[CloudEvent]]:
    """``n`` sessions of ``user``: their starts, and their v1 ends (25 min, completed)."""
    starts = [ev.started(user, T0 + timedelta(hours=i)) for i in range(n)]
    ends = [ev.ended_v1(user, s.data.session_id, s.data.started_at + timedelta(minutes=25))
            for s in starts]
    return starts, ends


async def redrive(s: ProjectorSettings, wanted: LetterFilter | None = None,
                  **limits: Any) -> RedriveReport:
    assert s.kafka_bootstrap_servers is not None
    assert s.database_url is not None
    options = RedriveOptions(s.kafka_bootstrap_servers, s.database_url, s.focus_events_topic,
                             s.focus_dlq_topic)
    redriver = Redriver(options, lambda: producer(options.bootstrap))
    return await redriver.run(wanted or LetterFilter(), Limits(**limits))


def cli_environment(s: ProjectorSettings) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "KAFKA_BOOTSTRAP_SERVERS": str(
        s.kafka_bootstrap_servers), "DATABASE_URL": str(s.database_url),
        "FOCUS_EVENTS_TOPIC": s.focus_events_topic, "FOCUS_DLQ_TOPIC": s.focus_dlq_topic}


async def focus(s: ProjectorSettings, *args: str) -> tuple[int, str]:
    """``focus ARGS`` as a process (the event loop keeps running meanwhile): its exit status
    and its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "focus_sessions.cli", *args, env=cli_environment(s),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def redriven_records(bootstrap: str, topic: str) -> list[dict[str, bytes]]:
    """The headers of every record of ``topic`` that a redrive published."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic) or ()]
        consumer.assign(tps)
        ends = await log_end_offsets(consumer, tps)
        await consumer.seek_to_beginning(*tps)
        found = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp.partition]:
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    headers = dict(record.headers)
                    if REDRIVE_LETTER in headers:
                        found.append(headers)
        return found
    finally:
        await consumer.stop()


async def test_events_an_old_projector_refused_as_unknown_type_count_once_after_redrive(
    kafka_bootstrap: str, fresh_database: str, fresh_topics: TopicSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    starts, ends = sessions("ada", 3)
    bo_start, bo_end = sessions("bo", 1)
    # the old projector applies the starts and dead-letters the v1 ends; bo's end arrives twice
    # (a producer retry): two letters of one event
    await dead_lettered_by_the_old_projector(
        s, fresh_topics, monkeypatch, [*starts, *ends, *bo_start, *bo_end, *bo_end], 5)
    assert query(fresh_database, "SELECT count(*) FROM focus_sessions WHERE ended_at IS NULL"
                 ) == [(4,)]

    # the fix is deployed (the current decoder); the operator looks, then redrives
    code, listed = await focus(s, "dlq", "list", "--user", "bo", "--since", "1h")
    assert code == 0, listed
    assert "unknown-type" in listed
    assert "2 letter(s)" in listed
    code, listed = await focus(s, "dlq", "list", "--json", "--reason", "unknown-type")
    rows = [json.loads(line) for line in listed.splitlines() if line.startswith("{")]
    assert sorted(r["event_id"] for r in rows) == sorted(str(e.id) for e in
                                                         [*ends, *bo_end, *bo_end])
    assert {r["type"] for r in rows} == {V1_END}
    code, dry = await focus(s, "dlq", "redrive", "--dry-run")
    assert code == 0, dry
    assert "dry run: 5 letter(s) would go" in dry
    async with running_projector(s) as projector:
        report = await redrive(s)
        assert (report.sent, report.plan.skipped) == (5, {})
        await wait_caught_up(fresh_database, fresh_topics, report.placed, projector=projector)
        assert projector.stats.duplicates == 1  # bo's end, redriven twice, counts once
        after_first = snapshot(fresh_database)

        # a second redrive of the same letters changes nothing
        again = await redrive(s)
        assert (again.sent, again.plan.skip_counts()) == (0, {Skip.ALREADY_SENT: 5})
        assert snapshot(fresh_database) == after_first
        code, shown = await focus(s, "dlq", "show", "0:0")
        assert code == 0, shown
        assert "redriven by run 1 (sent, count 1)" in shown

    assert query(fresh_database, "SELECT count(*), count(*) FILTER (WHERE completed)"
                 " FROM focus_sessions WHERE ended_at IS NOT NULL") == [(4, 4)]
    ids = {str(e.id) for e in ends + bo_end}
    assert {str(i) for (i,) in query(fresh_database, "SELECT event_id FROM session_events"
                                     " WHERE status = 'applied'")} >= ids  # ids kept
    assert query(fresh_database, "SELECT sessions_ended FROM focus_user_stats ORDER BY user_id"
                 ) == [(3,), (1,)]
    assert rollup_mismatches(fresh_database) == []
    assert query(fresh_database, "SELECT state, planned, sent FROM dlq_redrive.runs"
                 ) == [("finished", 5, 5)]

    # a replay rebuilds and swaps the read models, and leaves the ledger alone
    options = ReplayOptions(bootstrap=kafka_bootstrap, url=fresh_database,
                            topic=fresh_topics.events, workers=1)
    assert (await Replayer(options, migrate).run()).swapped
    replayed = snapshot(fresh_database)
    # the replay applies each v1 end at its first offset (today's decoder knows v1), the live
    # projector at its redriven copy's: the same facts, other offsets
    for table in (replayed, after_first):
        table["session_events"] = [row[:-2] for row in table["session_events"]]
    assert replayed == after_first
    assert (await redrive(s)).plan.skip_counts() == {Skip.ALREADY_SENT: 5}


async def test_a_redrive_killed_midway_and_started_again_sends_each_letter_at_most_once_more(
    kafka_bootstrap: str, fresh_database: str, fresh_topics: TopicSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    starts, ends = sessions("cy", 40)
    await dead_lettered_by_the_old_projector(s, fresh_topics, monkeypatch, starts + ends, 40)
    async with running_projector(s):
        # 20 letters/s, 5 per chunk: killed once at least 10 are confirmed, ~2 s in
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "focus_sessions.cli", "dlq", "redrive", "--rate", "20",
            env=cli_environment(s), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 40
        while query(fresh_database, "SELECT count(*) FROM dlq_redrive.letters WHERE state = 'sent'"
                    ) < [(10,)]:
            assert first.returncode is None, "the first redrive ended by itself"
            assert time.monotonic() < deadline, "the redrive confirmed nothing in 40 s"
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        await asyncio.wait_for(first.wait(), timeout=10)
        confirmed = {o for (o,) in query(fresh_database, "SELECT dlq_offset FROM"
                                         " dlq_redrive.letters WHERE state = 'sent'")}
        assert 10 <= len(confirmed) < 40
        # The narrowest window, made certain: the broker acknowledged the last confirmed letter
        # but the crash came before the ledger said so (the kill usually lands in a pause)
        (lost,) = query(fresh_database, "UPDATE dlq_redrive.letters SET state = 'sending' WHERE"
                        " dlq_offset = (SELECT max(dlq_offset) FROM dlq_redrive.letters WHERE"
                        " state = 'sent') RETURNING dlq_offset")[0]
        confirmed.discard(lost)

        # while the lock is free again, a second run finishes the job
        code, second = await focus(s, "dlq", "redrive")
        assert code == 0, second
        assert re.search(r"to send: \d+ \(\d+ left uncertain by a run that crashed\)", second)
        assert "already redriven (the ledger has it)" in second
        sent_again = await redriven_records(kafka_bootstrap, fresh_topics.events)
        placed = query(fresh_database, "SELECT events_partition, events_offset FROM"
                       " dlq_redrive.letters")
        await wait_caught_up(fresh_database, fresh_topics, placed)

    per_letter = Counter(h[REDRIVE_LETTER].rsplit(b":", 1)[1] for h in sent_again)
    assert len(per_letter) == 40
    assert max(per_letter.values()) <= 2  # at most once more
    assert all(per_letter[str(o).encode()] == 1 for o in confirmed)  # never again
    assert per_letter[str(lost).encode()] == 2  # the uncertain one: once more
    assert {h[REDRIVE_COUNT] for h in sent_again} == {b"1"}
    assert query(fresh_database, "SELECT count(*) FROM session_events") == [(80,)]
    assert query(fresh_database, "SELECT sessions_ended FROM focus_user_stats") == [(40,)]
    assert rollup_mismatches(fresh_database) == []
    assert query(fresh_database, "SELECT state FROM dlq_redrive.runs ORDER BY run_id") == [
        ("interrupted",), ("finished",)]


async def test_contradictions_redriven_stay_contradictions_and_stop_at_the_loop_guard(
    kafka_bootstrap: str, fresh_database: str, fresh_topics: TopicSet,
) -> None:
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    start = ev.started("dee", T0)
    sid = start.data.session_id
    end = ev.ended("dee", sid, minutes(25))
    async with running_projector(s) as projector:
        sent = await publish(kafka_bootstrap, fresh_topics.events, [
            start, end,
            ev.interrupted("dee", sid, minutes(40)),  # after the end: contradiction (stored)
            ev.ended("dee", sid, minutes(30), event_id=end.id),  # the end's id, another fact
        ])
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
        before = snapshot(fresh_database)
        sent_counts = []
        for _ in range(5):
            report = await redrive(s, max_redrives=3)
            sent_counts.append(report.sent)
            await wait_caught_up(fresh_database, fresh_topics, report.placed,
                                 projector=projector)
            assert snapshot(fresh_database) == before  # nothing changes, ever
        # run 1 sends both; the interruption is a duplicate of a stored contradiction and
        # comes back no more; the other end comes back as a new letter after each redrive,
        # until its bytes have gone round 3 times
        assert sent_counts == [2, 1, 1, 0, 0]
        assert report.plan.skip_counts() == {Skip.ALREADY_SENT: 4, Skip.LOOP_GUARD: 1}
    assert query(fresh_database, "SELECT status, count(*) FROM session_events GROUP BY status"
                 " ORDER BY status") == [("applied", 2), ("contradiction", 1)]
    assert query(fresh_database, "SELECT ended_at FROM focus_sessions") == [(minutes(25),)]


async def test_a_second_redrive_of_one_topic_is_refused_while_one_runs(
    kafka_bootstrap: str, fresh_database: str, fresh_topics: TopicSet,
) -> None:
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    migrate(fresh_database)
    holder = await Ledger.open(fresh_database, fresh_topics.dlq)
    try:
        await holder.lock()
        await holder.start(fresh_topics.events, {}, planned=7)
        with pytest.raises(RedriveBusy, match=r"another redrive of .* is running: run 1 "
                           r"\(running\).* 0 of 7 sent"):
            await redrive(s)
    finally:
        await holder.close()
    assert (await redrive(s)).sent == 0  # free again once the first run's session ended

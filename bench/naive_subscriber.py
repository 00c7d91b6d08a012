"""The baseline of ``bench/projector_bench.py``: a naive FastStream subscriber.

What a first version of the projector would look like: FastStream 0.7 hands over one message at
a time, the event is validated with pydantic (:func:`focus_sessions.contracts.codec.decode`) and
applied in its
own PostgreSQL transaction with straightforward SQL (insert or update the ``focus_sessions`` row,
add to ``focus_user_stats``). No dedupe table, no held events, no stored positions: it has fewer
guarantees than the projector, and it only has to be right for an in-order stream without
duplicates, which is what the benchmark publishes.

Kept deliberately fair to the baseline: FastStream's per-message logging is off and the message
body reaches the handler as raw bytes (no second JSON parse by FastStream's default decoder).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage

from focus_sessions.contracts.codec import decode
from focus_sessions.contracts.events import EndedEvent, Event, StartedEvent

INSERT_SESSION = """
INSERT INTO focus_sessions (session_id, user_id, step_id, started_at, duration_minutes,
                            created_at, time_zone, start_event_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id) DO NOTHING
"""
ADD_STARTED = """
INSERT INTO focus_user_stats (user_id, sessions_started, total_planned_minutes, last_session_at)
VALUES (%s, 1, %s, %s)
ON CONFLICT (user_id) DO UPDATE SET
    sessions_started = focus_user_stats.sessions_started + 1,
    total_planned_minutes = focus_user_stats.total_planned_minutes
                            + EXCLUDED.total_planned_minutes,
    last_session_at = GREATEST(focus_user_stats.last_session_at, EXCLUDED.last_session_at)
"""
COUNT_INTERRUPTION = """
UPDATE focus_sessions f
SET interruption_events = f.interruption_events + 1,
    interruptions = GREATEST(f.interruptions, f.interruption_events + 1)
FROM (SELECT interruptions AS before FROM focus_sessions WHERE session_id = %s) old
WHERE f.session_id = %s
RETURNING f.interruptions - old.before
"""
END_SESSION = """
UPDATE focus_sessions f
SET ended_at = %s, completed = %s, outcome = %s, focus_quality = %s,
    reported_interruptions = %s, end_event_id = %s,
    focus_seconds = EXTRACT(EPOCH FROM (%s - f.started_at)),
    interruptions = GREATEST(f.interruption_events, COALESCE(%s, 0))
FROM (SELECT interruptions AS before FROM focus_sessions WHERE session_id = %s) old
WHERE f.session_id = %s AND f.ended_at IS NULL
RETURNING f.focus_seconds, f.interruptions - old.before
"""
ADD_INTERRUPTIONS = """
UPDATE focus_user_stats SET total_interruptions = total_interruptions + %s WHERE user_id = %s
"""
ADD_ENDED = """
UPDATE focus_user_stats
SET sessions_ended = sessions_ended + 1,
    sessions_completed = sessions_completed + %s,
    total_focus_seconds = total_focus_seconds + %s,
    total_interruptions = total_interruptions + %s
WHERE user_id = %s
"""


async def apply_event(conn: psycopg.AsyncConnection[Any], event: Event) -> None:
    """One event, straight into the read models (the caller holds the transaction)."""
    data = event.data
    if isinstance(event, StartedEvent):
        s = event.data
        cur = await conn.execute(INSERT_SESSION, (
            s.session_id, s.user_id, s.step_id, s.started_at, s.duration_minutes, event.time,
            s.time_zone, event.id))
        if cur.rowcount == 1:
            await conn.execute(ADD_STARTED, (s.user_id, s.duration_minutes, s.started_at))
    elif isinstance(event, EndedEvent):
        e = event.data
        cur = await conn.execute(END_SESSION, (
            e.ended_at, e.outcome == "completed", e.outcome, e.focus_quality,
            e.reported_interruptions, event.id, e.ended_at, e.reported_interruptions,
            e.session_id, e.session_id))
        row = await cur.fetchone()
        if row is not None:
            seconds, added = row
            await conn.execute(ADD_ENDED, (int(e.outcome == "completed"), seconds, added,
                                           e.user_id))
    else:
        cur = await conn.execute(COUNT_INTERRUPTION, (data.session_id, data.session_id))
        row = await cur.fetchone()
        if row is not None and row[0]:
            await conn.execute(ADD_INTERRUPTIONS, (row[0], data.user_id))


class Window(Protocol):
    """Opened when the first event is committed, closed at the ``limit``-th (CPU sampling)."""

    def open(self, postgres_pids: list[int]) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class NaiveRun:
    """Timestamps (``time.perf_counter``) of one run."""

    limit: int
    processed: int = 0
    started: float = 0.0  # broker.start() called
    first_at: float = 0.0  # first event committed
    last_at: float = 0.0  # ``limit``-th event committed (or the timeout)
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def raw_body(message: StreamMessage[Any]) -> bytes:
    """FastStream decoder: hand the handler the bytes as they came (decode() validates).
    Async on purpose: FastStream runs a synchronous decoder in a worker thread."""
    body: bytes = message.body
    return body


async def run_naive(
    bootstrap: str, url: str, topic: str, group: str, limit: int,
    give_up_after: float, window: Window,
) -> NaiveRun:
    """Consume ``topic`` from the start with a new group until ``limit`` events are committed
    (or ``give_up_after`` seconds pass); return when and at what CPU cost."""
    run = NaiveRun(limit=limit)
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    broker = KafkaBroker(bootstrap, logger=None, consumer_only=True)

    @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest", decoder=raw_body)
    async def handle(body: bytes) -> None:
        event = decode(body)
        async with conn.transaction():
            await apply_event(conn, event)
        run.processed += 1
        if run.processed == 1:
            run.first_at = time.perf_counter()
            window.open([conn.info.backend_pid])
        if run.processed == run.limit:
            run.last_at = time.perf_counter()
            window.close()
            run.done.set()

    try:
        run.started = time.perf_counter()
        await broker.start()
        try:
            await asyncio.wait_for(run.done.wait(), give_up_after)
        except TimeoutError:
            run.last_at = time.perf_counter()
            window.close()
    finally:
        await broker.stop()
        await conn.close()
    return run

"""Bulk phase of a replay: worker processes read partitions from their checkpoints into the shadow
tables, holding at most their share of the memory budget.

Decoding and folding (~10 µs an event, ~4 of it decoding) dominate, so each worker process owns
a share of the partitions: it reads them with manual assignment up to the end offsets captured
when the replay began and folds them in memory
(:class:`focus_sessions.consumers.replay.memory.ShadowState`), every event decoded once. When
the sessions it holds reach its share of the budget (and when its partitions end) it *flushes*:
one transaction derives every held session with the projector's ``derive``, COPYs their events
and rows into the shadow tables, adds their rollup contributions with the live projector's own
upserts, records each session part in ``replay_sessions``, and moves the worker's checkpoint
(offsets, counts) — so a killed replay continues from its last flush. Then it starts afresh.

A session whose events fall on both sides of a flush, or on partitions of two workers, is
written in parts; :mod:`.split` folds those whole once every worker is done. Dead letters are
not re-published: the live projector already did.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import signal
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from focus_sessions.consumers.replay import checkpoint, rss
from focus_sessions.consumers.replay.memory import Rollups, ShadowState
from focus_sessions.contracts.codec import PoisonEvent
from focus_sessions.projections.readmodels import ROLLUPS, Table
from focus_sessions.projections.readmodels.sessions import EVENTS, SESSIONS, event_record
from focus_sessions.projections.wire import decode_message

PROGRESS_EVERY = 0.2  # seconds between progress messages to the coordinator
#: Resident bytes a held event is first assumed to need: the decoded event (~430), its share of
#: the session, of the rows a flush builds and of the records fetched ahead. Every flush
#: measures what its events took at its end (RSS, the flush's own rows included) and sets how
#: many to hold next from that.
EVENT_BYTES = 1000
#: The fewest events a worker holds before it flushes, whatever the budget.
MIN_HELD = 256
#: Share of a worker's memory its held events may fill: the rest is for the flush's rows and
#: buffers.
HEADROOM = 0.85
#: Sessions a flush writes per pair of COPYs (bounds the rows it builds).
FLUSH_CHUNK = 2000
#: Accepted events between two looks at the worker's RSS.
RSS_CHECK_EVERY = 4096
#: Binary COPY layout of ``replay_sessions``.
PARTS = Table("replay_sessions", ("session_id", "grp"), ("uuid", "int2"), key=())


@dataclass(frozen=True, slots=True)
class BulkSpec:
    bootstrap: str
    url: str
    topic: str
    schema: str
    group: int
    partitions: tuple[int, ...]
    ends: dict[int, int]
    generation: int
    #: Resident bytes this worker may use (its share of the replay's memory budget).
    memory_limit: int
    users: frozenset[str] | None = None
    #: ``(partition, offset)`` of events the live projector recorded as unstorable: skipped,
    #: as it skipped them (guarantee 5 with guarantee 4).
    skip: frozenset[tuple[int, int]] = frozenset()


@dataclass(slots=True)
class Progress:
    """What a worker reports to the coordinator a few times a second."""

    group: int
    offsets: dict[int, int] = field(default_factory=dict)
    bytes: dict[int, int] = field(default_factory=dict)
    held: int = 0
    flushes: int = 0
    flushed_bytes: int = 0


def run_worker(spec: BulkSpec, pipe: Connection) -> None:
    """Process entry point: read and flush to the end offsets; the outcome goes to ``pipe``."""
    _die_with_parent()
    gc.disable()  # millions of long-lived objects: the cyclic collector only burns CPU here
    try:
        asyncio.run(_work(spec, pipe))
        pipe.send(("done", spec.group))
    except BaseException as exc:  # reported to the coordinator, which raises
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        pipe.close()


def _die_with_parent() -> None:
    """Linux: be killed when the process that started this one (the fork server, which exits
    with the replay) dies, so that a killed replay leaves no worker writing behind it."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _work(spec: BulkSpec, pipe: Connection) -> None:
    # a synchronous connection: a flush runs while nothing else needs the event loop (fetching
    # is paused), and psycopg's synchronous COPY formats each row with less overhead
    with psycopg.connect(spec.url, autocommit=True) as conn:
        mine = checkpoint.worker(conn, spec.schema, spec.group)
        todo = {p: spec.ends[p] for p in spec.partitions
                if mine.next_offsets.get(p, 0) < spec.ends[p]}
        if not todo:
            return
        # fetched records wait in memory too: a small budget fetches less ahead
        ahead = max(1 << 20, spec.memory_limit // 32)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=spec.bootstrap, enable_auto_commit=False, group_id=None,
            max_partition_fetch_bytes=min(8 << 20, ahead),
            fetch_max_bytes=min(64 << 20, 4 * ahead),
        )
        await consumer.start()
        try:
            tps = [TopicPartition(spec.topic, p) for p in todo]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, mine.next_offsets.get(tp.partition, 0))
            carried = checkpoint.load_carry(conn, spec.schema, spec.group)
            await Worker(spec, conn, mine, carried, pipe).consume(consumer, todo)
        finally:
            await consumer.stop()


class Worker:
    def __init__(self, spec: BulkSpec, conn: psycopg.Connection[Any],
                 mine: checkpoint.WorkerCheckpoint, carried: ShadowState,
                 pipe: Connection) -> None:
        self.spec, self.conn, self.pipe = spec, conn, pipe
        #: Counts and offsets as of the last flush (what the checkpoint table holds) ...
        self.saved = mine
        # ... and as read so far
        self.offsets, self.bytes = dict(mine.next_offsets), dict(mine.bytes)
        self.last_times = dict(mine.last_times)
        #: Sessions carried over the last flush (read back from ``replay_carry`` when this
        #: worker continues a killed run); their events were counted when they came.
        self.state = carried
        self.carried = self.state.held()
        self.dead = 0  # poison and unstorable records since the last flush
        self.base = rss.rss()
        self.cap = max(MIN_HELD, int((spec.memory_limit - self.base) * HEADROOM) // EVENT_BYTES)
        self.checked = 0

    async def consume(self, consumer: AIOKafkaConsumer, todo: dict[int, int]) -> None:
        users, skip = self.spec.users, self.spec.skip
        keys = None if users is None else {u.encode() for u in users}
        last_report = 0.0
        while todo:
            batches = await consumer.getmany(timeout_ms=500,
                                             max_records=max(MIN_HELD, min(20_000, self.cap)))
            state = self.state
            for tp, records in batches.items():
                p, end = tp.partition, todo.get(tp.partition)
                if end is None:
                    continue
                newest = self.last_times.get(p)
                size = 0
                for rec in records:
                    if rec.offset >= end:
                        break
                    size += rec.serialized_value_size + max(rec.serialized_key_size, 0)
                    if keys is not None and rec.key is not None and rec.key not in keys:
                        continue  # --users: a valid event's key is its user id
                    try:
                        event = decode_message(rec.key, rec.value)
                    except PoisonEvent:
                        self.dead += 1
                        continue
                    if newest is None or event.time > newest:
                        newest = event.time
                    if skip and (p, rec.offset) in skip:
                        self.dead += 1
                        continue
                    if users is None or event.data.user_id in users:
                        state.add(event, p, rec.offset)
                if newest is not None:
                    self.last_times[p] = newest
                self.bytes[p] = self.bytes.get(p, 0) + size
                self.offsets[p] = min(records[-1].offset + 1, end)
                if self.offsets[p] >= end:
                    del todo[p]
                    consumer.pause(tp)
            if todo and self._full():
                consumer.pause(*consumer.assignment())  # nothing fetched ahead meanwhile
                self.flush()
                consumer.resume(*(tp for tp in consumer.assignment() if tp.partition in todo))
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY:
                self.report()
                last_report = now
        self.flush(final=True)
        self.report()

    def _full(self) -> bool:
        held = self.state.events + self.carried
        if held >= self.cap:
            return True
        if held - self.checked < RSS_CHECK_EVERY:
            return False
        self.checked = held
        if rss.rss() <= self.spec.memory_limit:
            return False
        self.cap = max(MIN_HELD, held)  # events are bigger than assumed: hold no more
        return True

    def report(self) -> None:
        s = self.saved
        self.pipe.send(("progress", Progress(self.spec.group, dict(self.offsets),
                                             dict(self.bytes), self.state.events, s.flushes,
                                             s.flushed_bytes)))

    def flush(self, *, final: bool = False) -> None:
        """Write every held session and the checkpoint in one transaction; start afresh.

        Open sessions (no start or no end yet) are *carried* into the next round instead
        (once: a session still open at the next flush is written then), their events recorded
        in ``replay_carry`` in the same transaction, so that a flush rarely cuts a session in
        two and the checkpoint still covers every record below its offsets.

        Sessions are taken out of the state as they are written, a chunk at a time (two COPYs
        per chunk), so a flush needs little memory beyond what the held events already took.
        The rollups' sums are staged by COPY too, and added up once at the end
        (:func:`focus_sessions.projections.readmodels.base.Rollup.load_staged`).
        """
        state, spec = self.state, self.spec
        self._calibrate()
        rollups = Rollups()
        carry = ShadowState() if final else state.take_open()
        with self.conn.transaction(), self.conn.cursor() as cur:
            checkpoint.check_generation(self.conn, spec.schema, spec.generation)
            checkpoint.replace_carry(cur, spec.schema, spec.group, carry.sessions.values())
            drained = state.drain()
            while True:
                rows: list[tuple[Any, ...]] = []
                parts: list[tuple[Any, ...]] = []
                with cur.copy(EVENTS.copy_into(spec.schema)) as copy:
                    copy.set_types(EVENTS.types)
                    write = copy.write_row
                    for session, row, status in itertools.islice(drained, FLUSH_CHUNK):
                        events = session.history.events
                        for (key, event), (p, o) in zip(events.items(), session.where,
                                                        strict=True):
                            write(event_record(event, status[key], p, o))
                        parts.append((next(iter(events.values())).data.session_id, spec.group))
                        if row is not None:
                            rows.append(row)
                            rollups.add_row(row)
                if not parts:
                    break
                copy_rows(cur, spec.schema, SESSIONS, rows)
                copy_rows(cur, spec.schema, PARTS, parts)
            for rollup in ROLLUPS:
                copy_rows(cur, spec.schema, checkpoint.staged(rollup), rollups.records(rollup))
            saved = self.saved
            flushed = sum(self.bytes.values()) - sum(saved.bytes.values())
            nxt = checkpoint.WorkerCheckpoint(
                spec.group, dict(self.offsets), dict(self.bytes), dict(self.last_times),
                saved.events + state.events, saved.duplicates + state.duplicates,
                saved.dead_letters + state.conflicts + self.dead, saved.flushes + 1,
                saved.flushed_bytes + flushed)
            checkpoint.save_worker_sync(self.conn, spec.schema, nxt)
        self.saved, self.state, self.dead, self.checked = nxt, carry, 0, 0
        self.carried = carry.held()
        _trim()

    def _calibrate(self) -> None:
        """Adjust how many events to hold from the RSS they reached: fewer when over the
        limit, more (at most a quarter more) when well under it. (Memory freed by a flush is
        not always returned to the system, so only the direction of RSS against the limit is
        trusted, not its size after a flush.)"""
        held, now = self.state.events + self.carried, rss.rss()
        allowance = self.spec.memory_limit - self.base
        if held < 1000 or not now or allowance <= 0:
            return
        used = max(1, now - self.base)
        if now > self.spec.memory_limit * 0.95:
            self.cap = max(MIN_HELD, int(held * HEADROOM * allowance / used))
        elif used < 0.7 * allowance and held >= self.cap:
            self.cap = int(self.cap * min(1.25, HEADROOM * allowance / used))


def _trim() -> None:
    """Give the C heap's free memory back to the system (glibc), so that RSS shows what the
    next events take rather than what the last flush's did."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)


def copy_rows(cur: psycopg.Cursor[Any], schema: str, table: Table,
              rows: Iterable[tuple[Any, ...]]) -> None:
    with cur.copy(table.copy_into(schema)) as copy:
        copy.set_types(table.types)
        for row in rows:
            copy.write_row(row)


def totals(progress: Mapping[int, Progress]) -> Progress:
    """Every worker's progress added up (offsets and bytes by partition)."""
    out = Progress(-1)
    for p in progress.values():
        out.offsets.update(p.offsets)
        out.bytes.update(p.bytes)
        out.held += p.held
        out.flushes += p.flushes
        out.flushed_bytes += p.flushed_bytes
    return out

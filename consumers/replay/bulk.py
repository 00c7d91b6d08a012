"""Bulk phase of a replay: worker processes read partitions from offset 0 into empty tables.

Decoding and folding (~10 µs an event, ~4 of it decoding) dominate, so each worker process owns
a share of the partitions: it reads them with manual assignment up to the end offsets captured
when the replay started, folds everything in memory
(:class:`focus_sessions.consumers.replay.memory.ShadowState`) and bulk loads its sessions and
its users' rollups with binary COPY. Sessions whose events sit on
partitions of *different* workers (only possible when events of one session name different
users, or after partitions were added) are handed back to the coordinator, which folds them
whole; so are the rollups of users that more than one worker saw, which the coordinator adds up.
Dead letters are not re-published: the live projector already did.
"""

from __future__ import annotations

import asyncio
import gc
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from focus_sessions.consumers.replay.memory import Placed, Rollups, ShadowState, build
from focus_sessions.contracts.codec import PoisonEvent
from focus_sessions.projections.readmodels import ROLLUPS, Table
from focus_sessions.projections.readmodels.sessions import (
    EVENTS,
    SESSIONS,
    event_record,
    session_record,
)
from focus_sessions.projections.wire import decode_message

PROGRESS_EVERY = 0.2  # seconds between progress messages to the coordinator


@dataclass(frozen=True, slots=True)
class BulkSpec:
    bootstrap: str
    url: str
    topic: str
    schema: str
    partitions: tuple[int, ...]
    ends: dict[int, int]
    users: frozenset[str] | None = None
    #: ``(partition, offset)`` of events the live projector recorded as unstorable: skipped,
    #: as it skipped them (guarantee 5 with guarantee 4).
    skip: frozenset[tuple[int, int]] = frozenset()


@dataclass(slots=True)
class WorkerResult:
    shared: list[Placed] = field(default_factory=list)
    rollups: Rollups = field(default_factory=Rollups)
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    last_event_time: dict[int, datetime] = field(default_factory=dict)


def run_worker(spec: BulkSpec, pipe: Connection) -> None:
    """Process entry point: read, exchange session ids, load; every outcome goes to ``pipe``."""
    gc.disable()  # millions of long-lived objects: the cyclic collector only burns CPU here
    try:
        state, result = asyncio.run(_read(spec, pipe))
        pipe.send(("seen", (b"".join(sid.to_bytes(16) for sid in state.sessions), state.users)))
        kind, (shared, shared_users) = pipe.recv()
        assert kind == "shared"
        result.shared = state.take(int.from_bytes(shared[i:i + 16])
                                   for i in range(0, len(shared), 16))
        result.duplicates = state.duplicates
        result.dead_letters += state.conflicts
        result.events = state.events
        result.rollups = load(spec.url, spec.schema, state, shared_users)
        pipe.send(("done", result))
    except BaseException as exc:  # reported to the coordinator, which raises
        pipe.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        pipe.close()


async def _read(spec: BulkSpec, pipe: Connection) -> tuple[ShadowState, WorkerResult]:
    state, result = ShadowState(), WorkerResult()
    todo = {p: spec.ends[p] for p in spec.partitions if spec.ends[p] > 0}
    if not todo:
        return state, result
    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec.bootstrap, enable_auto_commit=False, group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(spec.topic, p) for p in todo]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        await _consume(consumer, spec, todo, state, result, pipe)
    finally:
        await consumer.stop()
    return state, result


async def _consume(
    consumer: AIOKafkaConsumer, spec: BulkSpec, todo: dict[int, int], state: ShadowState,
    result: WorkerResult, pipe: Connection,
) -> None:
    users, skip = spec.users, spec.skip
    keys = None if users is None else {u.encode() for u in users}
    done: dict[int, int] = {}
    last_report = 0.0
    while todo:
        batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
        for tp, records in batches.items():
            p, end = tp.partition, todo.get(tp.partition)
            if end is None:
                continue
            newest = result.last_event_time.get(p)
            for rec in records:
                if rec.offset >= end:
                    break
                if keys is not None and rec.key is not None and rec.key not in keys:
                    continue  # --users: a valid event's key is its user id
                try:
                    event = decode_message(rec.key, rec.value)
                except PoisonEvent:
                    result.dead_letters += 1
                    continue
                if newest is None or event.time > newest:
                    newest = event.time
                if skip and (p, rec.offset) in skip:
                    result.dead_letters += 1
                    continue
                if users is None or event.data.user_id in users:
                    state.add(event, p, rec.offset)
            if newest is not None:
                result.last_event_time[p] = newest
            done[p] = min(records[-1].offset + 1, end)
            if done[p] >= end:
                del todo[p]
                consumer.pause(tp)
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY or not todo:
            pipe.send(("progress", dict(done)))
            last_report = now


def load(url: str, schema: str, state: ShadowState, shared_users: Iterable[str]) -> Rollups:
    """Derive every session once and COPY events, rows and rollups into the shadow tables.

    The rollups of users no other worker saw are complete here and are loaded too; those of
    ``shared_users`` are returned, to be added up by the coordinator. (Keys are user ids, so a
    user is normally one partition's, one worker's: loading here spares pickling ~8 MB of
    rollups to the coordinator and loading them there, one process after another.)
    """
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        # events stream into COPY while sessions are derived: the server parses meanwhile
        with cur.copy(EVENTS.copy_into(schema)) as copy:
            copy.set_types(EVENTS.types)
            out = build(state, event_record, session_record, copy.write_row)
        state.sessions.clear()
        copy_rows(cur, schema, SESSIONS, out.sessions)
        shared = out.rollups.take_users(shared_users)
        for rollup in ROLLUPS:
            copy_rows(cur, schema, rollup.tables[0], out.rollups.records(rollup))
    return shared


def copy_rows(
    cur: psycopg.Cursor[Any], schema: str, table: Table, rows: Iterable[tuple[Any, ...]],
) -> None:
    with cur.copy(table.copy_into(schema)) as copy:
        copy.set_types(table.types)
        for row in rows:
            copy.write_row(row)

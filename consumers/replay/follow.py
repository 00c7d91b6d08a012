"""The replay's own reader: log end offsets, and catch-up of the shadow with the live code path.

After the bulk phase the shadow is no longer empty, so it follows the log exactly as the live
projector does — :func:`focus_sessions.projections.batch.plan` over histories read back from the
shadow, one
:meth:`ProjectionRepository.write` per batch with compare-and-set positions — only into the
shadow schema, and without publishing dead letters (the live projector already did).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import AsyncConnection

from focus_sessions.consumers.replay import shadow_sql
from focus_sessions.contracts.codec import PoisonEvent
from focus_sessions.projections.batch import Located, plan, session_ids
from focus_sessions.projections.readmodels import UNSTORABLE
from focus_sessions.projections.repository import Advance, ProjectionRepository
from focus_sessions.projections.wire import decode_message


def default_workers() -> int:
    """Bulk worker processes: one per CPU, plus one. A worker waits on PostgreSQL and the broker
    about a quarter of its time; the spare one fills those waits (bulk phase of 1M events on 2
    CPUs: 106,489 events/s with 2 workers, 115,398 with 3, no more with 4)."""
    return (os.cpu_count() or 2) + 1


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    bootstrap: str
    url: str
    topic: str
    live: str = "public"
    shadow: str = "focus_shadow"
    #: Rebuild only these users (``--users``); ``None`` rebuilds everything.
    users: frozenset[str] | None = None
    workers: int = field(default_factory=default_workers)
    keep_retired: bool = False
    lock_timeout_ms: int = 300
    lock_attempts: int = 200
    batch: int = 5000
    #: Resident memory every replay process together may use, bytes (FOCUS_REPLAY_MEMORY).
    memory_budget: int = 1 << 30
    #: Start from zero even when an interrupted replay left checkpoints (``--restart``).
    restart: bool = False


class ReplayProgress(Protocol):
    def phase(self, text: str) -> None: ...
    def bulk_started(self, ends: Mapping[int, int]) -> None: ...
    def bulk_advanced(self, offsets: Mapping[int, int]) -> None: ...


class Silent:
    """Progress that goes nowhere (tests, benchmarks)."""

    def phase(self, text: str) -> None:
        return None

    def bulk_started(self, ends: Mapping[int, int]) -> None:
        return None

    def bulk_advanced(self, offsets: Mapping[int, int]) -> None:
        return None


class TopicUnavailable(RuntimeError):
    """The topic is missing, or its log no longer starts at offset 0."""


async def log_end_offsets(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], seconds: float = 10.0
) -> dict[int, int]:
    """Each partition's log end offset, taken from a fetch's high watermark.

    ``end_offsets`` alone is not trusted: the embedded broker answers the last batch's *base*
    offset + 1. Fetching from just below that answer returns the true high watermark on any
    broker. ``consumer`` must have ``tps`` assigned; their positions are moved.
    """
    listed = await consumer.end_offsets(list(tps))
    ends = {tp.partition: 0 for tp, end in listed.items() if end == 0}
    pending = [tp for tp, end in listed.items() if end > 0]
    for tp in pending:
        consumer.seek(tp, listed[tp] - 1)
    consumer.resume(*pending)
    deadline = asyncio.get_running_loop().time() + seconds
    while pending:
        fetched = await consumer.getmany(*pending, timeout_ms=200)
        for tp in list(pending):
            high = consumer.highwater(tp)
            if high is not None and (tp in fetched or high >= listed[tp]):
                ends[tp.partition] = max(high, listed[tp])
                pending.remove(tp)
        if pending and asyncio.get_running_loop().time() > deadline:
            raise TopicUnavailable(f"no high watermark for {pending} within {seconds:.0f} s")
    return ends


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[int] | None:
    """``topic``'s partitions from fresh metadata; ``None`` when the broker does not know it.

    Not ``consumer.partitions_for_topic`` after ``consumer.topics()``: ``topics()`` fetches every
    topic's metadata but leaves the consumer's own view alone, which on Apache Kafka holds only
    the topics it was given (tansu happened to answer with all of them).
    """
    cluster = await consumer._client.fetch_all_metadata()
    partitions = cluster.partitions_for_topic(topic)
    return None if partitions is None else sorted(partitions)


async def topic_log_ends(bootstrap: str, topic: str, *, timeout: float = 5.0) -> dict[int, int]:  # noqa: ASYNC109
    """Every partition's log end offset of ``topic`` (:func:`log_end_offsets`), read by a
    consumer of its own; ``timeout`` bounds connecting and each request."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(consumer.start(), timeout)
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic) or ()]
        consumer.assign(tps)
        return await log_end_offsets(consumer, tps)
    finally:
        await consumer.stop()


class Follower:
    def __init__(self, options: ReplayOptions, progress: ReplayProgress) -> None:
        self.options = options
        self.progress = progress
        self.repository = ProjectionRepository(options.shadow)
        self.live = ProjectionRepository(options.live)
        self.tps: list[TopicPartition] = []
        self.consumer: AIOKafkaConsumer

    async def start(self) -> None:
        # built here, not in __init__: aiokafka binds to the running event loop
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.options.bootstrap, enable_auto_commit=False, group_id=None,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self.consumer.start()

    async def stop(self) -> None:
        consumer = getattr(self, "consumer", None)
        if consumer is not None:
            await consumer.stop()

    async def log_ends(self) -> dict[int, int]:
        """Every partition's end offset now; refuses a log whose beginning was deleted."""
        topic = self.options.topic
        partitions = await partitions_of(self.consumer, topic)
        if partitions is None:
            raise TopicUnavailable(f"topic {topic!r} does not exist on {self.options.bootstrap}")
        self.tps = [TopicPartition(topic, p) for p in partitions]
        self.consumer.assign(self.tps)
        self.consumer.pause(*self.tps)
        starts = await self.consumer.beginning_offsets(self.tps)
        lost = {tp.partition: o for tp, o in starts.items() if o > 0}
        if lost:
            raise TopicUnavailable(
                f"{topic} no longer starts at offset 0 (partition: first offset {lost}): "
                "retention deleted history, so a replay cannot rebuild it; keep the events "
                "topic with retention.ms=-1"
            )
        ends = await log_end_offsets(self.consumer, self.tps)
        self.consumer.pause(*self.tps)
        return ends

    async def unstorable(self, conn: AsyncConnection[Any]) -> set[tuple[int, int]]:
        """Positions of the events the live projector recorded as unstorable (it skipped them:
        so does the replay). Read after the live positions, it covers every event below them."""
        if UNSTORABLE not in await shadow_sql.tables(conn, self.options.live):
            return set()  # a live schema from before migration 0003
        return await self.live.unstorable_positions(conn, self.options.topic)

    async def catch_up(self, conn: AsyncConnection[Any], targets: Mapping[int, int]) -> int:
        """Apply the log from the shadow's positions up to ``targets``, in the caller's
        transaction; return how many records were read."""
        topic = self.options.topic
        current = await shadow_sql.positions(conn, self.options.shadow, topic)
        need = {p: t for p, t in targets.items() if t > current.get(p, 0) and p in current}
        if not need:
            return 0
        skip = await self.unstorable(conn)
        by_partition = {tp.partition: tp for tp in self.tps}
        for p in need:
            self.consumer.seek(by_partition[p], current[p])
            self.consumer.resume(by_partition[p])
        read = 0
        while need:
            fetched = await self.consumer.getmany(timeout_ms=500, max_records=self.options.batch)
            located: list[Located] = []
            advances: list[Advance] = []
            for tp, records in fetched.items():
                end = need.get(tp.partition)
                if end is None:
                    continue
                taken = [r for r in records if r.offset < end]
                if not taken:
                    continue
                newest = self._decode(taken, located, skip)
                p, next_offset = tp.partition, taken[-1].offset + 1
                advances.append(Advance(p, current[p], next_offset, newest))
                current[p] = next_offset
                read += len(taken)
                if next_offset >= end:
                    del need[p]
                    self.consumer.pause(tp)
            if advances:
                await self._apply(conn, located, advances)
        return read

    def _decode(self, records: Sequence[Any], into: list[Located],
                skip: set[tuple[int, int]]) -> datetime | None:
        users, newest = self.options.users, None
        for rec in records:
            try:
                event = decode_message(rec.key, rec.value)
            except PoisonEvent:
                continue
            newest = event.time if newest is None else max(newest, event.time)
            if (rec.partition, rec.offset) in skip:
                continue
            if users is None or event.data.user_id in users:
                into.append(Located(event, rec.partition, rec.offset))
        return newest

    async def _apply(self, conn: AsyncConnection[Any], located: list[Located],
                     advances: list[Advance]) -> None:
        prior = await self.repository.load_histories(conn, session_ids(located))
        result = plan(prior, located)
        await self.repository.write(conn, self.options.topic, result, advances)

"""The projector: Kafka in, batches folded, one PostgreSQL transaction per batch.

Poll -> decode -> pure fold (:mod:`projections.batch`) -> dead letters -> one write with the
positions (compare-and-set) -> commit. Positions live in PostgreSQL, so a restart, crash or
rebalance resumes exactly where the last committed transaction ended (guarantee 1). Kafka's own
committed offsets are written after the transaction, for lag tooling only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from consumers.backoff import Backoff
from consumers.dlq import DeadLetter, contradiction_letter, dead_letter
from contracts.codec import PoisonEvent
from projections.batch import Located, plan, session_ids
from projections.repository import Advance, Fenced, ProjectionRepository
from projections.wire import decode_message

log = logging.getLogger(__name__)

ConnectionFactory = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


@dataclass(slots=True)
class Stats:
    """Counters for logs, metrics and tests."""

    batches: int = 0
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    fenced: int = 0
    retries: int = 0
    last_batch_at: float = 0.0
    partitions: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Span:
    """What one batch holds of one partition."""

    partition: int
    count: int = 0
    last_offset: int = -1
    last_event_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    located: list[Located]
    letters: list[DeadLetter]
    spans: list[Span]
    count: int


class Projector:
    """Projects one topic into the read models of one schema."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        connect: ConnectionFactory,
        repository: ProjectionRepository | None = None,
        topic: str,
        dlq_topic: str,
        max_records: int = 10_000,
        wait_ms: int = 100,
        backoff: Backoff | None = None,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.connect = connect
        self.repository = repository or ProjectionRepository()
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.max_records = max_records
        self.wait_ms = wait_ms
        self.backoff = backoff or Backoff()
        self.stats = Stats()
        #: Position each owned partition is at in PostgreSQL, as far as this process knows.
        self.expected: dict[int, int] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._stopping = asyncio.Event()
        #: Bumped on every seek: batches fetched before it are stale.
        self._generation = 0

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, then stop (SIGTERM handler)."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`; every batch is applied exactly once or not at all.

        Two stages: a fetcher polls and decodes the next batch while the current one is being
        written, so Python's decoding overlaps PostgreSQL's work. A batch fetched before a seek
        (rebalance, fence) carries an old generation and is dropped unapplied.
        """
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        ready: asyncio.Queue[tuple[int, Decoded]] = asyncio.Queue(maxsize=1)
        fetcher = asyncio.create_task(self._fetch(ready))
        stop = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                take = asyncio.create_task(ready.get())
                done, _ = await asyncio.wait({take, stop, fetcher},
                                             return_when=asyncio.FIRST_COMPLETED)
                if take not in done:
                    take.cancel()
                    if fetcher in done:
                        fetcher.result()  # re-raise what stopped the fetcher
                    break
                generation, decoded = take.result()
                if generation == self._generation:
                    await self.project(decoded)
        finally:
            for task in (fetcher, stop):
                task.cancel()
            await asyncio.gather(fetcher, stop, return_exceptions=True)
            await self._close_connection()

    async def _fetch(self, ready: asyncio.Queue[tuple[int, Decoded]]) -> None:
        while True:
            records = await self.consumer.getmany(
                timeout_ms=self.wait_ms, max_records=self.max_records
            )
            generation = self._generation
            owned = [rs for tp, rs in records.items() if tp.partition in self.expected and rs]
            if owned:
                await ready.put((generation, self._decode(owned)))

    # -- one batch -----------------------------------------------------------------------

    async def project(self, decoded: Decoded) -> None:
        """Apply one decoded batch: retried with backoff until it commits or is fenced."""
        generation = self._generation
        advances = [Advance(s.partition, self.expected[s.partition], s.last_offset + 1,
                            s.last_event_time) for s in decoded.spans]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch %s", [(a.partition, a.expected, a.next_offset) for a in advances])
        attempt = 0
        insert_new = True
        while True:
            try:
                await self._apply(decoded, advances, insert_new=insert_new)
                break
            except psycopg.errors.UniqueViolation as exc:
                if not insert_new:
                    raise  # the upsert path has no insert that can collide: a real bug
                # a session row the stored events do not account for (edited by hand?):
                # apply this batch again, upserting every row (see repository.write)
                log.warning("batch retried with upserts: %s", exc)
                insert_new = False
                await self._close_connection()
            except Fenced as exc:
                self.stats.fenced += 1
                log.warning("batch dropped: %s", exc)
                # another writer (a replay's swap) may have moved any partition, not only
                # this batch's: read every owned position again
                await self.on_assigned(list(self.expected))
                return
            except (psycopg.OperationalError, KafkaError, OSError) as exc:
                attempt += 1
                self.stats.retries += 1
                await self._close_connection()
                delay = self.backoff.delay(attempt)
                log.warning("batch failed (%s: %s); retry %d in %.1fs",
                            type(exc).__name__, exc, attempt, delay)
                if await self._sleep_or_stop(delay):
                    log.warning("stopping with an uncommitted batch: it will be projected "
                                "again from the stored positions")
                    return
        if generation == self._generation:
            # else a rebalance came during the transaction: the positions it read (or the
            # compare-and-set of the next batch) are the truth, and a revoked partition must
            # not come back
            for adv in advances:
                self.expected[adv.partition] = adv.next_offset
        self.stats.batches += 1
        self.stats.events += decoded.count
        self.stats.last_batch_at = time.monotonic()
        await self._commit_kafka_offsets(advances)

    def _decode(self, polled: Sequence[Sequence[ConsumerRecord[bytes, bytes]]]) -> Decoded:
        """Decode what one poll returned, a list of records per partition, in log order."""
        located: list[Located] = []
        letters: list[DeadLetter] = []
        spans: list[Span] = []
        count = 0
        for records in polled:
            newest: datetime | None = None
            for rec in records:
                try:
                    event = decode_message(rec.key, rec.value)
                except PoisonEvent as poison:
                    letters.append(dead_letter(
                        reason=poison.reason, detail=poison.detail, topic=rec.topic,
                        partition=rec.partition, offset=rec.offset, key=rec.key,
                        value=rec.value,
                    ))
                    continue
                located.append(Located(event, rec.partition, rec.offset, rec.value))
                if newest is None or event.time > newest:
                    newest = event.time
            last = records[-1]
            spans.append(Span(last.partition, len(records), last.offset, newest))
            count += len(records)
        return Decoded(located, letters, spans, count)

    async def _apply(
        self, decoded: Decoded, advances: Sequence[Advance], *, insert_new: bool = True
    ) -> None:
        conn = await self._connection()
        async with conn.transaction():
            prior = await self.repository.load_histories(conn, session_ids(decoded.located))
            result = plan(prior, decoded.located)
            letters = decoded.letters + [
                contradiction_letter(c, self.topic) for c in result.contradictions
            ]
            # Dead letters are acknowledged before the positions commit: a crash in between
            # repeats them (at-least-once, each carries its origin), it never loses one.
            await self._publish(letters)
            await self.repository.write(conn, self.topic, result, advances,
                                        insert_new=insert_new)
        self.stats.duplicates += result.duplicates
        self.stats.dead_letters += len(letters)

    async def _publish(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        sent = [
            await self.producer.send(self.dlq_topic, d.value, key=d.key, headers=d.headers)
            for d in letters
        ]
        await asyncio.gather(*sent)

    # -- positions -----------------------------------------------------------------------

    async def on_assigned(self, partitions: Sequence[int]) -> None:
        """Read the stored positions of ``partitions`` (creating missing ones), then seek every
        owned partition to its position (:meth:`_rewind`)."""
        attempt = 0
        while True:
            try:
                # a connection of its own: a rebalance may call this while a batch's
                # transaction is open on the projector's connection, and must read only
                # committed positions
                async with await self.connect() as conn, conn.transaction():
                    stored = await self.repository.ensure_positions(conn, self.topic, partitions)
                break
            except (psycopg.OperationalError, OSError) as exc:
                attempt += 1
                delay = self.backoff.delay(attempt)
                log.warning("cannot read positions (%s); retry in %.1fs", exc, delay)
                if await self._sleep_or_stop(delay):
                    return  # not seeking means not owning: nothing will be applied
        self.expected.update(stored)
        self._rewind()
        log.info("assigned %s at %s", sorted(partitions), stored)

    def on_revoked(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            self.expected.pop(p, None)
        self._rewind()

    def _rewind(self) -> None:
        """Start a new generation: seek *every* owned partition to its stored position.

        A new generation makes stale the batch waiting in the queue and the one being fetched,
        and those hold records of any owned partition, not only of the partitions just
        (re)assigned. The consumer has moved past those records: seeking every partition back
        reads them again, where seeking only the reassigned ones would skip the others'.
        """
        assigned = self.consumer.assignment()
        for p, offset in self.expected.items():
            tp = TopicPartition(self.topic, p)
            if tp in assigned:
                self.consumer.seek(tp, offset)
        self._generation += 1
        self.stats.partitions = set(self.expected)

    async def _commit_kafka_offsets(self, advances: Sequence[Advance]) -> None:
        offsets = {TopicPartition(self.topic, a.partition): a.next_offset for a in advances}
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # only lag tooling reads these; PostgreSQL has the truth
            log.info("kafka offset commit skipped: %s", exc)

    # -- plumbing ------------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await self.connect()
        return self._conn

    async def _close_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if asked to stop meanwhile (give up the batch)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True



class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.projector.on_revoked([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        mine = [tp.partition for tp in assigned if tp.topic == self.projector.topic]
        if mine:
            await self.projector.on_assigned(mine)

"""The projector: Kafka in, batches folded, one PostgreSQL transaction per batch.

Poll -> decode -> pure fold (:mod:`focus_sessions.projections.batch`) -> dead letters -> one write
with the
positions (compare-and-set) -> commit. Positions live in PostgreSQL, so a restart, crash or
rebalance resumes exactly where the last committed transaction ended (guarantee 1). Kafka's own
committed offsets are written after the transaction, for lag tooling only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from psycopg import sql

from focus_sessions.consumers.backoff import Backoff
from focus_sessions.consumers.dlq import (
    MAX_ORIGINAL_BYTES,
    DeadLetter,
    contradiction_letter,
    dead_letter,
)
from focus_sessions.consumers.metrics import HELD_QUERY, ProjectorMetrics
from focus_sessions.contracts import topics
from focus_sessions.contracts.codec import PoisonEvent
from focus_sessions.projections.batch import Located, Plan, plan, session_ids
from focus_sessions.projections.repository import Advance, Fenced, ProjectionRepository, Unstorable
from focus_sessions.projections.wire import decode_message

log = logging.getLogger(__name__)

#: Errors an event's *data* causes when PostgreSQL stores it (data, constraint and encoding
#: errors; a value over an index's size limit) or when a row is formatted for it: isolated to
#: the events that cause them, which are dead-lettered as ``unstorable`` (guarantee 4). Never
#: retried: the same data fails the same way. Connection and server failures are retried.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded,
    UnicodeError, OverflowError,
)
#: A dead letter the broker will never take: logged with its origin, and the partition moves on.
UNSENDABLE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)

ConnectionFactory = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]
#: With metrics on: how often an idle projector refreshes its heartbeat and lag gauges, and
#: the least time between two counts of the held events.
TICK_SECONDS = 1.0


@dataclass(slots=True)
class Stats:
    """Counters for logs, metrics and tests."""

    batches: int = 0
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    #: Events PostgreSQL refused although valid (each also counts as a dead letter).
    unstorable: int = 0
    #: Dead letters the broker refused (too large): logged, not sent.
    letters_lost: int = 0
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
    #: The first valid event's time (log order: the one that waited longest), for metrics.
    first_event_time: datetime | None = None


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
        max_original_bytes: int = MAX_ORIGINAL_BYTES,
        metrics: ProjectorMetrics | None = None,
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
        self.max_original_bytes = max_original_bytes
        self.stats = Stats()
        #: Position each owned partition is at in PostgreSQL, as far as this process knows.
        self.expected: dict[int, int] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._stopping = asyncio.Event()
        #: Bumped on every seek: batches fetched before it are stale.
        self._generation = 0
        #: None: metrics off (no gauges, no held-event counts, no idle ticks).
        self.metrics = metrics
        #: Heartbeat: Unix time of the last poll of the broker.
        self.polled_at = time.time()
        #: Per partition, (last offset, Kafka timestamp in ms of the first record) of each
        #: fetched chunk not yet committed, oldest first: the lag in seconds (metrics only).
        self._fetched: dict[int, deque[tuple[int, int]]] = {}
        self._gone: set[int] = set()  # revoked since the last gauge update
        self._held_counted = 0.0  # monotonic time of the last count of held events
        self._held_dirty = True

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
        tick = None if self.metrics is None else TICK_SECONDS
        take: asyncio.Task[tuple[int, Decoded]] | None = None
        try:
            while not self._stopping.is_set():
                take = take or asyncio.create_task(ready.get())
                done, _ = await asyncio.wait({take, stop, fetcher}, timeout=tick,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:  # idle: only with metrics on
                    await self._observe()
                    continue
                if take not in done:
                    take.cancel()
                    if fetcher in done:
                        fetcher.result()  # re-raise what stopped the fetcher
                    break
                generation, decoded = take.result()
                take = None
                if generation == self._generation:
                    await self.project(decoded)
        finally:
            if take is not None:
                take.cancel()
            for task in (fetcher, stop):
                task.cancel()
            await asyncio.gather(fetcher, stop, return_exceptions=True)
            await self._close_connection()

    async def _fetch(self, ready: asyncio.Queue[tuple[int, Decoded]]) -> None:
        while True:
            records = await self.consumer.getmany(
                timeout_ms=self.wait_ms, max_records=self.max_records
            )
            self.polled_at = time.time()
            generation = self._generation
            owned = [rs for tp, rs in records.items() if tp.partition in self.expected and rs]
            if owned:
                await ready.put((generation, self._decode(owned)))

    # -- one batch -----------------------------------------------------------------------

    async def project(self, decoded: Decoded) -> None:
        """Apply one decoded batch: retried with backoff until it commits or is fenced.

        1. decode (done by the fetcher: poison becomes a dead letter);
        2. load the touched sessions' histories, fold, publish the dead letters;
        3. write rows, rollups and positions (compare-and-set) in one transaction; commit;
        4. with metrics on, update them once for the whole batch (:meth:`_committed`);
        5. copy the positions to Kafka's committed offsets (for lag tooling).

        A data error in step 2 or 3 is isolated to the events that cause it (:meth:`_isolate`);
        they become dead letters and the rest commits. An infrastructure error retries the
        batch with backoff; a letter the broker acknowledged is not sent again.
        """
        generation = self._generation
        advances = [Advance(s.partition, self.expected[s.partition], s.last_offset + 1,
                            s.last_event_time) for s in decoded.spans]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch %s", [(a.partition, a.expected, a.next_offset) for a in advances])
        attempt = 0
        insert_new = True
        sent: set[tuple[bytes, ...]] = set()  # letters the broker has acknowledged
        unstorable: list[Unstorable] = []
        while True:
            try:
                began = time.perf_counter()
                result, letters = await self._apply(decoded, advances, insert_new=insert_new,
                                                    sent=sent, unstorable=unstorable)
                took = time.perf_counter() - began
                break
            except Fenced as exc:
                self.stats.fenced += 1
                if self.metrics is not None:
                    self.metrics.fenced.inc()
                log.warning("batch dropped: %s", exc)
                # another writer (a replay's swap) may have moved any partition, not only
                # this batch's: read every owned position again
                await self.on_assigned(list(self.expected))
                return
            except DATA_ERRORS as exc:
                if insert_new and isinstance(exc, psycopg.errors.UniqueViolation):
                    # a session row the stored events do not account for (edited by hand?):
                    # apply this batch again, upserting every row (see repository.write)
                    log.warning("batch retried with upserts: %s", exc)
                    insert_new = False
                    await self._close_connection()
                    continue
                try:
                    decoded = await self._isolate(decoded, exc, unstorable)
                except (psycopg.OperationalError, OSError) as lost:
                    if await self._retry(lost, attempt := attempt + 1):
                        return
            except (psycopg.OperationalError, KafkaError, OSError) as exc:
                if await self._retry(exc, attempt := attempt + 1):
                    return
        if generation == self._generation:
            # else a rebalance came during the transaction: the positions it read (or the
            # compare-and-set of the next batch) are the truth, and a revoked partition must
            # not come back
            for adv in advances:
                self.expected[adv.partition] = adv.next_offset
        self.stats.batches += 1
        self.stats.events += decoded.count
        self.stats.unstorable += len(unstorable)
        self.stats.last_batch_at = time.monotonic()
        if self.metrics is not None:
            self._committed(decoded, result, letters, took, advances)
            await self._observe()
        await self._commit_kafka_offsets(advances)

    # -- metrics (per batch and per idle tick, never per event) ---------------------------

    def _committed(self, decoded: Decoded, result: Plan, letters: Sequence[DeadLetter],
                   seconds: float, advances: Sequence[Advance]) -> None:
        assert self.metrics is not None
        self.metrics.committed(
            consumed=decoded.count, projected=len(result.new_events),
            duplicates=result.duplicates, letters=letters, seconds=seconds,
            event_times=[s.first_event_time for s in decoded.spans], now=time.time())
        for adv in advances:
            chunks = self._fetched.get(adv.partition)
            while chunks and chunks[0][0] < adv.next_offset:
                chunks.popleft()
        self._held_dirty = True

    async def _observe(self) -> None:
        """Refresh the heartbeat and lag gauges; count the held events when a batch has
        committed since the last count and a tick has passed."""
        assert self.metrics is not None
        now = time.time()
        lags: dict[int, tuple[int, float]] = {}
        assigned = self.consumer.assignment()  # highwater() asserts its partition is assigned
        for p, position in list(self.expected.items()):
            tp = TopicPartition(self.topic, p)
            end = self.consumer.highwater(tp) if tp in assigned else None
            events = 0 if end is None else max(0, end - position)
            chunks = self._fetched.get(p)
            lags[p] = (events, max(0.0, now - chunks[0][1] / 1000)
                       if events and chunks else 0.0)
        gone, self._gone = self._gone - set(lags), set()
        self.metrics.partitions(lags, gone, self.polled_at,
                                caught_up=not any(e for e, _ in lags.values()), now=now)
        if self._held_dirty and time.monotonic() - self._held_counted >= TICK_SECONDS:
            await self._count_held(now)

    async def _count_held(self, now: float) -> None:
        assert self.metrics is not None
        self._held_counted = time.monotonic()
        try:
            conn = await self._connection()
            async with conn.transaction():
                cur = await conn.execute(
                    sql.SQL(HELD_QUERY).format(schema=sql.Identifier(self.repository.schema)))
                count, oldest = await cur.fetchone() or (0, None)
        except (psycopg.Error, OSError) as exc:  # a gauge never stops the projection
            log.warning("held events not counted: %s", exc)
            await self._close_connection()
            return
        self._held_dirty = False
        self.metrics.held_events(count, oldest, now)

    async def _retry(self, exc: BaseException, attempt: int) -> bool:
        """Back off after an infrastructure failure; True when asked to stop meanwhile."""
        self.stats.retries += 1
        if self.metrics is not None:
            self.metrics.retries.inc()
        await self._close_connection()
        delay = self.backoff.delay(attempt)
        log.warning("batch failed (%s: %s); retry %d in %.1fs",
                    type(exc).__name__, exc, attempt, delay)
        if await self._sleep_or_stop(delay):
            log.warning("stopping with an uncommitted batch: it will be projected "
                        "again from the stored positions")
            return True
        return False

    # -- isolating what the database refuses --------------------------------------------

    async def _isolate(self, decoded: Decoded, error: BaseException,
                       unstorable: list[Unstorable]) -> Decoded:
        """The batch without the events that make PostgreSQL fail, which become dead letters
        with reason ``unstorable`` (and rows of ``unstorable_events``).

        Found by bisection in rolled-back transactions: a part that applies on top of the
        parts already found good is kept; a failing part is halved, down to single events.
        One culprit in a batch of n costs about 2·log2(n) trial transactions; valid batches
        never come here. If no part fails alone (the failure did not come from the data),
        the original error is raised as an infrastructure failure, to be retried.
        """
        log.warning("batch refused by PostgreSQL (%s: %s); isolating the events that cause it",
                    type(error).__name__, error)
        found = await self._culprits(decoded.located, error)
        if not found:
            raise psycopg.OperationalError(f"batch failed but no event alone fails: {error}")
        bad = {id(item) for item, _ in found}
        letters = list(decoded.letters)
        for item, detail in found:
            event = item.event
            log.error("unstorable event %s at %s[%d]@%d: %s", event.id, self.topic,
                      item.partition, item.offset, detail)
            unstorable.append(Unstorable(item.partition, item.offset, event.id,
                                         event.data.session_id, detail))
            letters.append(dead_letter(
                reason="unstorable", detail=detail, topic=self.topic, partition=item.partition,
                offset=item.offset, key=event.data.user_id.encode(),
                value=item.raw, max_original=self.max_original_bytes))
        kept = [item for item in decoded.located if id(item) not in bad]
        return Decoded(kept, letters, decoded.spans, decoded.count)

    async def _culprits(self, items: list[Located], error: BaseException
                        ) -> list[tuple[Located, str]]:
        good: list[Located] = []
        found: list[tuple[Located, str]] = []

        async def search(part: list[Located], failed: BaseException | None) -> None:
            failed = failed or await self._trial(good + part)
            if failed is None:
                good.extend(part)  # in log order: parts are searched left to right
            elif len(part) == 1:
                found.append((part[0], f"{type(failed).__name__}: {failed}"))
            else:
                half = len(part) // 2
                await search(part[:half], None)
                await search(part[half:], None)

        await search(items, error)
        return found

    async def _trial(self, items: list[Located]) -> BaseException | None:
        """The data error applying ``items`` gives (rolled back whatever happens), or None."""
        conn = await self._connection()
        try:
            async with conn.transaction(force_rollback=True):
                prior = await self.repository.load_histories(conn, session_ids(items))
                await self.repository.write(conn, self.topic, plan(prior, items), (),
                                            insert_new=False)
        except DATA_ERRORS as exc:
            return exc
        return None

    def _decode(self, polled: Sequence[Sequence[ConsumerRecord[bytes, bytes]]]) -> Decoded:
        """Decode what one poll returned, a list of records per partition, in log order."""
        located: list[Located] = []
        letters: list[DeadLetter] = []
        spans: list[Span] = []
        count = 0
        fetched = self._fetched if self.metrics is not None else None
        for records in polled:
            newest: datetime | None = None
            start = len(located)
            for rec in records:
                try:
                    event = decode_message(rec.key, rec.value)
                except PoisonEvent as poison:
                    letters.append(self._letter(poison.reason, poison.detail, rec))
                    continue
                except Exception as exc:  # a decoder bug must not stop the stream either
                    log.exception("decoding %s[%d]@%d failed", rec.topic, rec.partition,
                                  rec.offset)
                    letters.append(self._letter("invalid", f"the decoder failed: "
                                                f"{type(exc).__name__}: {exc}", rec))
                    continue
                located.append(Located(event, rec.partition, rec.offset, rec.value))
                if newest is None or event.time > newest:
                    newest = event.time
            last = records[-1]
            spans.append(Span(last.partition, len(records), last.offset, newest,
                              located[start].event.time if len(located) > start else None))
            if fetched is not None:
                fetched.setdefault(last.partition, deque()).append(
                    (last.offset, records[0].timestamp))
            count += len(records)
        return Decoded(located, letters, spans, count)

    def _letter(self, reason: str, detail: str, rec: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        return dead_letter(reason=reason, detail=detail, topic=rec.topic,
                           partition=rec.partition, offset=rec.offset, key=rec.key,
                           value=rec.value, max_original=self.max_original_bytes)

    async def _apply(
        self, decoded: Decoded, advances: Sequence[Advance], *, insert_new: bool = True,
        sent: set[tuple[bytes, ...]] | None = None, unstorable: Sequence[Unstorable] = (),
    ) -> tuple[Plan, list[DeadLetter]]:
        conn = await self._connection()
        async with conn.transaction():
            prior = await self.repository.load_histories(conn, session_ids(decoded.located))
            result = plan(prior, decoded.located)
            letters = decoded.letters + [
                contradiction_letter(c, self.topic, self.max_original_bytes)
                for c in result.contradictions
            ]
            # Dead letters are acknowledged before the positions commit: a crash in between
            # repeats them (at-least-once, each carries its origin), it never loses one.
            await self._publish(letters, set() if sent is None else sent)
            await self.repository.write(conn, self.topic, result, advances,
                                        insert_new=insert_new, unstorable=unstorable)
        self.stats.duplicates += result.duplicates
        self.stats.dead_letters += len(letters)
        return result, letters

    async def _publish(self, letters: Sequence[DeadLetter], sent: set[tuple[bytes, ...]]
                       ) -> None:
        """Send the letters not in ``sent`` and wait for their acknowledgements, adding each
        acknowledged one to ``sent``. A letter the broker will never take (too large) is
        logged with its origin and counted, not retried; other failures raise (retry)."""
        pending = []
        failure: BaseException | None = None
        for letter in letters:
            if letter.origin in sent:
                continue
            try:
                future = await self.producer.send(self.dlq_topic, letter.value, key=letter.key,
                                                  headers=letter.headers)
            except UNSENDABLE as exc:
                self._lost(letter, exc, sent)
                continue
            except (KafkaError, OSError) as exc:  # no metadata or buffer space in time
                failure = exc
                break  # the letters sent so far are still awaited and remembered
            pending.append((letter, future))
        outcomes = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        for (letter, _), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, UNSENDABLE):
                self._lost(letter, outcome, sent)
            elif isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                sent.add(letter.origin)
        if failure is not None:
            raise failure

    def _lost(self, letter: DeadLetter, exc: BaseException, sent: set[tuple[bytes, ...]]
              ) -> None:
        headers = dict(letter.headers)
        log.error("dead letter not sent (%s: %s): reason %s, origin %s[%s]@%s, %d bytes",
                  type(exc).__name__, exc, headers.get(topics.DLQ_REASON, b"?").decode(),
                  self.topic, headers.get(topics.DLQ_ORIGINAL_PARTITION, b"?").decode(),
                  headers.get(topics.DLQ_ORIGINAL_OFFSET, b"?").decode(),
                  len(letter.value))
        self.stats.letters_lost += 1
        if self.metrics is not None:
            self.metrics.dead_letters_unsent.inc()
        sent.add(letter.origin)

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
        # a rebalance may have revoked some of them while the positions were read (the
        # listener runs meanwhile): keep only what the consumer still owns
        owned = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        stored = {p: offset for p, offset in stored.items() if p in owned}
        self.expected.update(stored)
        self._rewind()
        log.info("assigned %s at %s", sorted(partitions), stored)

    def on_revoked(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            self.expected.pop(p, None)
        self._gone.update(partitions)
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
        self._fetched.clear()  # what was fetched before the seek is read again
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

"""``focus dlq``'s I/O: reading the dead-letter topic, and a redrive run: lock, plan, publish
in chunks recorded in the ledger, at a capped rate.

The rest of ``focus dlq`` is in three modules: ``dlq_letters`` (a letter read back from its
headers, filters) and ``redrive_plan`` (what a run sends and why it skips the rest) are pure;
``redrive_ledger`` keeps the runs and the letters they sent in PostgreSQL. Workflow:
``docs/dlq.md``.

A run reads the dead-letter topic up to the ends it finds when it starts: letters that its own
events cause (an event refused again) land after those ends and wait for the next run, whose
loop guard counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from focus_sessions.consumers.dlq_letters import (
    REDRIVE_COUNT,
    REDRIVE_LETTER,
    REDRIVE_RUN,
    Letter,
    LetterFilter,
    parse_letter,
)
from focus_sessions.consumers.redrive_ledger import Ledger
from focus_sessions.consumers.redrive_plan import (
    RedrivePlan,
    Send,
    chunk_size,
    pause,
    plan_redrive,
)
from focus_sessions.consumers.replay.follow import (
    TopicUnavailable,
    log_end_offsets,
    partitions_of,
)

#: Polls of a second that return nothing below a partition's end before a read gives up.
STALLED_POLLS = 30


@dataclass(frozen=True, slots=True)
class RedriveOptions:
    bootstrap: str
    url: str
    events_topic: str
    dlq_topic: str


@dataclass(frozen=True, slots=True)
class Limits:
    max_letters: int | None = None  # --max
    rate: float | None = None  # --rate, letters per second
    max_redrives: int = 3  # --max-redrives


class Progress(Protocol):
    def started(self, total: int) -> None: ...
    def advanced(self, sent: int) -> None: ...


class Silent:
    def started(self, total: int) -> None:
        return None

    def advanced(self, sent: int) -> None:
        return None


@dataclass(slots=True)
class RedriveReport:
    plan: RedrivePlan
    run_id: int | None = None
    sent: int = 0
    seconds: float = 0.0
    #: ``(partition, offset)`` in the events topic of each letter sent.
    placed: list[tuple[int, int]] = field(default_factory=list)


async def read_letters(bootstrap: str, dlq_topic: str, wanted: LetterFilter | None = None
                       ) -> AsyncIterator[Letter]:
    """The letters of ``dlq_topic`` that match ``wanted``, partition by partition in log
    order, up to the ends the topic has now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, request_timeout_ms=15_000)
    try:
        await consumer.start()
        partitions = await partitions_of(consumer, dlq_topic)
        if partitions is None:
            raise TopicUnavailable(f"the broker at {bootstrap} has no topic {dlq_topic!r} "
                                   "(FOCUS_DLQ_TOPIC)")
        tps = [TopicPartition(dlq_topic, p) for p in partitions]
        consumer.assign(tps)
        ends = await log_end_offsets(consumer, tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            end = ends[tp.partition]
            if starts[tp] >= end:
                continue
            consumer.seek(tp, starts[tp])
            stalled = 0
            while (position := await consumer.position(tp)) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=500)
                stalled = stalled + 1 if await consumer.position(tp) == position else 0
                if stalled >= STALLED_POLLS:
                    raise TopicUnavailable(f"{dlq_topic}[{tp.partition}] returned nothing at "
                                           f"offset {position} of {end} in {STALLED_POLLS} s")
                for record in batch.get(tp, []):
                    if record.offset >= end:
                        break
                    letter = parse_letter(record.partition, record.offset, record.timestamp,
                                          record.value, list(record.headers))
                    if wanted is None or wanted.matches(letter):
                        yield letter
    finally:
        await consumer.stop()


class Redriver:
    """``focus dlq redrive``: letters back to the events topic, at most once each."""

    def __init__(self, options: RedriveOptions, producer: Callable[[], AIOKafkaProducer],
                 progress: Progress | None = None) -> None:
        """``producer`` makes the producer, in the run's event loop, when there is something
        to send (:func:`focus_sessions.bootstrap.producer` in ``focus dlq``)."""
        self.options = options
        self.make_producer = producer
        self.progress = progress or Silent()

    async def run(self, wanted: LetterFilter, limits: Limits, *, dry_run: bool = False
                  ) -> RedriveReport:
        """Plan (and unless ``dry_run``, send) the letters that match ``wanted``.

        Raises :class:`focus_sessions.consumers.redrive_ledger.RedriveBusy` when another run
        of the same dead-letter topic holds the lock (a dry run takes no lock)."""
        o = self.options
        ledger = await Ledger.open(o.url, o.dlq_topic)
        try:
            if not dry_run:
                await ledger.lock()
            prior = await ledger.prior()
            letters = [x async for x in read_letters(o.bootstrap, o.dlq_topic, wanted)]
            plan = plan_redrive(letters, prior, events_topic=o.events_topic,
                                max_redrives=limits.max_redrives, max_letters=limits.max_letters)
            report = RedriveReport(plan)
            if dry_run or not plan.sends:
                return report
            record = {**wanted.as_dict(), "max": limits.max_letters, "rate": limits.rate,
                      "max_redrives": limits.max_redrives}
            report.run_id = await ledger.start(o.events_topic, record, len(plan.sends))
            try:
                await self._send(ledger, report, limits.rate)
            except BaseException:
                # best effort: the next run marks it `interrupted` anyway (Ledger.lock)
                with contextlib.suppress(Exception):
                    await asyncio.shield(ledger.finish(report.run_id, "interrupted"))
                raise
            await ledger.finish(report.run_id)
            return report
        finally:
            await ledger.close()

    async def _send(self, ledger: Ledger, report: RedriveReport, rate: float | None) -> None:
        """1. record a chunk ``sending``; 2. publish it and await every acknowledgement;
        3. record it ``sent``; 4. wait as long as ``rate`` asks; repeat."""
        assert report.run_id is not None
        sends = report.plan.sends
        size = chunk_size(rate)
        self.progress.started(len(sends))
        began = time.monotonic()
        producer = self.make_producer()
        await producer.start()
        try:
            for first in range(0, len(sends), size):
                chunk = sends[first:first + size]
                await ledger.sending(report.run_id, chunk)
                futures = [await self._publish(producer, report.run_id, s) for s in chunk]
                placed = await asyncio.gather(*futures)
                acks = [(s, m.partition, m.offset) for s, m in zip(chunk, placed, strict=True)]
                await ledger.sent(report.run_id, acks)
                report.placed.extend((partition, offset) for _, partition, offset in acks)
                report.sent += len(chunk)
                self.progress.advanced(report.sent)
                await asyncio.sleep(pause(report.sent, time.monotonic() - began, rate))
        finally:
            report.seconds = time.monotonic() - began
            await producer.stop()

    async def _publish(self, producer: AIOKafkaProducer, run_id: int, send: Send
                       ) -> asyncio.Future[RecordMetadata]:
        letter = send.letter
        headers = [(REDRIVE_COUNT, str(send.count).encode()),
                   (REDRIVE_RUN, str(run_id).encode()),
                   (REDRIVE_LETTER,
                    f"{self.options.dlq_topic}:{letter.partition}:{letter.offset}".encode())]
        future: asyncio.Future[RecordMetadata] = await producer.send(
            self.options.events_topic, letter.value, key=letter.key(), headers=headers)
        return future

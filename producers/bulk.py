"""Fast publishing of pre-encoded ``(key, value)`` pairs: the simulator's and benchmarks' path.

Per-message ``send()`` costs a future and a coroutine per event; here records go straight into
one batch per partition, and a full batch is handed to aiokafka, which keeps one batch in flight
per partition (natural back-pressure). Keys are hashed with the same murmur2 partitioner as
:class:`~focus_sessions.producers.publisher.Publisher` and the Java client, so a user's events land
on the same
partition whichever path sent them, and stay in order there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2


@dataclass(frozen=True, slots=True)
class Published:
    events: int
    bytes: int
    seconds: float
    per_partition: dict[int, int]

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) picks for ``key``."""
    index: int = (murmur2(key) & 0x7FFFFFFF) % partitions
    return index


async def publish_pairs(
    producer: AIOKafkaProducer,
    topic: str,
    pairs: Iterable[tuple[bytes, bytes]],
    *,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 5000,
) -> Published:
    """Send every pair and wait until all are acknowledged (``acks`` as ``producer`` has it).

    ``rate`` caps events per second (None: as fast as possible); ``progress(n)`` is called with
    the number of events added since the last call.
    """
    known = sorted(await producer.partitions_for(topic))
    count = len(known)
    slot: dict[bytes, int] = {}
    batches: list[Any] = [producer.create_batch() for _ in known]
    in_flight: list[asyncio.Future[Any]] = []
    per_partition = dict.fromkeys(known, 0)
    sent = size = reported = 0
    # With a rate, look at the clock often enough to keep it smooth (~50 checks a second).
    check = max(1, min(progress_every, int(rate / 50))) if rate else progress_every
    started = time.perf_counter()

    async def ship(index: int) -> None:
        in_flight.append(await producer.send_batch(batches[index], topic, partition=known[index]))
        batches[index] = producer.create_batch()
        if len(in_flight) > 4 * count:  # bound the memory held by acknowledged futures
            await asyncio.gather(*(f for f in in_flight if f.done()))
            in_flight[:] = [f for f in in_flight if not f.done()]

    async def ship_all() -> None:
        for index, batch in enumerate(batches):
            if batch.record_count():
                await ship(index)

    for key, value in pairs:
        index = slot.get(key)
        if index is None:
            index = slot[key] = partition_for(key, count)
        if batches[index].append(key=key, value=value, timestamp=None) is None:
            await ship(index)  # full: send it; an empty batch takes any first record
            batches[index].append(key=key, value=value, timestamp=None)
        per_partition[known[index]] += 1
        sent += 1
        size += len(value)
        if sent % check == 0:
            if progress is not None and sent - reported >= progress_every // 5:
                progress(sent - reported)
                reported = sent
            ahead = sent / rate - (time.perf_counter() - started) if rate else 0.0
            if ahead > 0:
                await ship_all()  # a paced stream should not sit in half-full batches
            await asyncio.sleep(max(ahead, 0.0))  # also lets the sender task drain batches
    await ship_all()
    await asyncio.gather(*in_flight)
    if progress is not None and sent > reported:
        progress(sent - reported)
    return Published(sent, size, time.perf_counter() - started, per_partition)

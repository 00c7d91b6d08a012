"""The composition root: builds brokers, connections and repositories from settings.

Nothing connects at import time; tests pass overrides instead of patching modules.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from focus_sessions.consumers.backoff import Backoff
from focus_sessions.consumers.projector import Projector
from focus_sessions.projections.repository import ProjectionRepository
from focus_sessions.settings import ProjectorSettings

log = logging.getLogger(__name__)


def producer(bootstrap_servers: str, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas. Idempotence is off because the embedded
    broker refuses it; duplicates that may cause are removed by event id downstream."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 15_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def build_projector(settings: ProjectorSettings, schema: str = "public") -> Projector:
    """A projector wired to the settings' broker and database (not started)."""
    url, kafka = settings.database_url, settings.kafka_bootstrap_servers
    if not (url and kafka):
        raise ValueError(
            "build_projector needs resolved settings (focus_sessions.servers.resolved)")

    async def connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(url, connect_timeout=5)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka,
        group_id=settings.focus_consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.focus_session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.focus_session_timeout_ms // 5),
        # a batch may wait on PostgreSQL's backoff for a while; stay in the group meanwhile
        max_poll_interval_ms=max(300_000, int(settings.focus_retry_max_seconds * 4000)),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    return Projector(
        consumer=consumer,
        producer=producer(kafka),
        connect=connect,
        repository=ProjectionRepository(schema),
        topic=settings.focus_events_topic,
        dlq_topic=settings.focus_dlq_topic,
        max_records=settings.focus_batch_max_records,
        wait_ms=settings.focus_batch_wait_ms,
        backoff=Backoff(cap=settings.focus_retry_max_seconds),
        max_original_bytes=settings.focus_dlq_max_original_bytes,
    )


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM/SIGINT; install it before anything slow happens."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping


#: Cyclic-GC thresholds for projector processes. A batch in flight keeps ~10 tracked objects
#: per event alive (models, UUIDs, datetimes), so with the defaults every batch survived into
#: generation 2 and triggered a full collection: a third of the projector's time in the
#: benchmark. Nothing the fold builds is cyclic; reference counting frees it either way.
GC_THRESHOLDS = (100_000, 50, 100)


async def run_projector(projector: Projector, stopping: asyncio.Event) -> None:
    """Run until ``stopping`` is set; the batch in hand is finished and committed first, and
    the consumer leaves its group, so the partitions move on at once."""
    if stopping.is_set():
        return
    gc.freeze()  # what start-up built (modules, settings) is never garbage
    gc.set_threshold(*GC_THRESHOLDS)
    relay = asyncio.create_task(stopping.wait())
    relay.add_done_callback(lambda _: projector.stop())
    await projector.producer.start()
    await projector.consumer.start()
    try:
        await projector.run()
    finally:
        relay.cancel()
        await projector.consumer.stop()
        await projector.producer.stop()
        log.info("projector stopped: %s", projector.stats)

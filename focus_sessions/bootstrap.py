"""The composition root: every process's pieces are built here, from settings.

* ``focus project``: :func:`build_projector` (consumer, producer, repository), run by
  :func:`run_projector` until :func:`stop_on_signals` fires;
* ``focus api``: :func:`api_pool` and :func:`api_writer` (the app factory,
  :func:`focus_sessions.api.app.create_app`, adds routes and middleware around them);
* ``focus replay`` / ``focus verify``: :func:`build_replayer` and :func:`verify_read_models`.

Each builder imports what only its process needs when it is called, so a command loads only
its own dependencies (``focus project`` loads no FastAPI, ``focus api`` no replay). Nothing
connects at import time; tests pass overrides instead of patching modules.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import TYPE_CHECKING, Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from focus_sessions.consumers.backoff import Backoff
from focus_sessions.consumers.metrics import ProjectorMetrics
from focus_sessions.consumers.projector import Projector
from focus_sessions.projections.repository import ProjectionRepository
from focus_sessions.settings import CommonSettings, ProjectorSettings

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from focus_sessions.api.settings import ApiSettings
    from focus_sessions.consumers.replay.follow import ReplayProgress
    from focus_sessions.consumers.replay.replayer import Replayer
    from focus_sessions.producers.http import KafkaWriter
    from focus_sessions.projections.verify import VerifyReport
    from focus_sessions.telemetry import Endpoint

log = logging.getLogger(__name__)


def producer(bootstrap_servers: str, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas, idempotent where the broker grants it
    (``FOCUS_KAFKA_IDEMPOTENCE``, see :mod:`focus_sessions.idempotence`). The embedded tansu
    broker refuses it; the duplicates a retry may then write are removed by event id
    downstream. An ``enable_idempotence`` override skips the question."""
    from focus_sessions.idempotence import idempotent_sync

    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 15_000,
    }
    options.update(overrides)
    if "enable_idempotence" not in options:
        options["enable_idempotence"] = idempotent_sync(bootstrap_servers)
    return AIOKafkaProducer(**options)


def servers(settings: CommonSettings, needs: str) -> tuple[str, str]:
    """The settings' (broker, database URL); ``needs`` names the caller in the error."""
    kafka, url = settings.kafka_bootstrap_servers, settings.database_url
    if not (kafka and url):
        raise ValueError(f"{needs} needs resolved settings: KAFKA_BOOTSTRAP_SERVERS and "
                         "DATABASE_URL (focus_sessions.servers.resolved fills them in)")
    return kafka, url


def build_projector(settings: ProjectorSettings, schema: str = "public", *,
                    serve: bool = True) -> Projector:
    """A projector wired to the settings' broker and database (not started). With
    ``FOCUS_PROJECTOR_METRICS_PORT`` set (not 0) it keeps metrics, and :func:`run_projector`
    serves them with its health unless ``serve`` is False (a worker: its supervisor serves)."""
    kafka, url = servers(settings, "build_projector")
    metrics = None
    if settings.focus_projector_metrics_port:
        metrics = ProjectorMetrics()
        if serve:
            metrics.serve = (settings.focus_projector_metrics_port,
                             settings.focus_projector_health_window_s)

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
        metrics=metrics,
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
    endpoint = _endpoint(projector)
    gc.freeze()  # what start-up built (modules, settings) is never garbage
    gc.set_threshold(*GC_THRESHOLDS)
    relay = asyncio.create_task(stopping.wait())
    relay.add_done_callback(lambda _: projector.stop())
    try:
        await projector.producer.start()
        await projector.consumer.start()
        try:
            await projector.run()
        finally:
            relay.cancel()
            await projector.consumer.stop()
            await projector.producer.stop()
            log.info("projector stopped: %s", projector.stats)
    finally:
        if endpoint is not None:
            endpoint.close()


def _endpoint(projector: Projector) -> Endpoint | None:
    """The projector's ``/metrics`` and ``/healthz``, served from a thread (metrics on and
    not a worker); None when off or the port is taken (logged)."""
    if projector.metrics is None or projector.metrics.serve is None:
        return None
    from focus_sessions.telemetry import open_endpoint

    port, window = projector.metrics.serve
    endpoint = open_endpoint(port, projector.metrics.registry, window)
    return None if endpoint is None else endpoint.start_thread()


def api_pool(settings: ApiSettings) -> AsyncConnectionPool[Any]:
    """The API's PostgreSQL pool, not yet open. Getting a connection waits at most
    ``FOCUS_API_DB_TIMEOUT_MS``, and every connection carries a server-side
    ``statement_timeout`` of the same length, for a server that is slow rather than hung
    (:class:`focus_sessions.api.deps.Database` bounds a hung one)."""
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import AsyncConnectionPool

    _, url = servers(settings, "api_pool")
    timeout_ms = settings.focus_api_db_timeout_ms
    given = str(conninfo_to_dict(url).get("options") or "")
    return AsyncConnectionPool(
        url, min_size=settings.focus_api_pool_min, max_size=settings.focus_api_pool_max,
        open=False, timeout=timeout_ms / 1000, name="focus-api",
        kwargs={"autocommit": True, "connect_timeout": 5,
                "options": f"{given} -c statement_timeout={timeout_ms}".strip()},
    )


def api_writer(settings: ApiSettings, started: AIOKafkaProducer | None = None) -> KafkaWriter:
    """The API's publisher: keyed by user, ``acks=all``, each publish bounded by
    ``FOCUS_API_PUBLISH_TIMEOUT_MS``; it connects on first use unless ``started`` (a producer
    the caller started, and stops) is given."""
    from focus_sessions.producers.http import KafkaWriter

    kafka, _ = servers(settings, "api_writer")
    timeout_ms = settings.focus_api_publish_timeout_ms
    return KafkaWriter(lambda: producer(kafka, linger_ms=0, request_timeout_ms=timeout_ms),
                       settings.focus_events_topic, kafka, timeout_ms / 1000, started)


def build_replayer(
    settings: ProjectorSettings, progress: ReplayProgress | None = None, *,
    users: frozenset[str] | None = None, workers: int | None = None,
    shadow: str = "focus_shadow", keep_retired: bool = False, restart: bool = False,
    memory: int | None = None,
) -> Replayer:
    """``focus replay``: rebuilds the read models from the settings' topic into ``shadow``."""
    from focus_sessions.consumers.replay.follow import ReplayOptions, default_workers
    from focus_sessions.consumers.replay.replayer import Replayer
    from focus_sessions.migrate import migrate

    kafka, url = servers(settings, "build_replayer")
    options = ReplayOptions(bootstrap=kafka, url=url, topic=settings.focus_events_topic,
                            shadow=shadow, users=users, workers=workers or default_workers(),
                            keep_retired=keep_retired, restart=restart,
                            memory_budget=memory or settings.replay_memory_bytes)
    return Replayer(options, migrate, progress)


async def verify_read_models(
    settings: ProjectorSettings, examples: int = 5
) -> tuple[VerifyReport, str | None]:
    """``focus verify``: every read model against its definition, and the stored positions
    against the log's ends; without a broker the latter are skipped and the second item says
    why."""
    from aiokafka.errors import KafkaError

    from focus_sessions.consumers.replay.follow import topic_log_ends
    from focus_sessions.projections.verify import verify

    kafka, url = servers(settings, "verify_read_models")
    ends: dict[int, int] | None = None
    error: str | None = None
    try:
        ends = await topic_log_ends(kafka, settings.focus_events_topic)
    except (KafkaError, OSError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    async with await psycopg.AsyncConnection.connect(url) as conn:
        report = await verify(conn, topic=settings.focus_events_topic, log_ends=ends,
                              examples=examples)
    return report, error

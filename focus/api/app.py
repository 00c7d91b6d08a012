"""The app factory: ``create_app(settings)`` builds the API; nothing connects at import time.

Connections open in the lifespan: the PostgreSQL pool (unless one is passed in), the analytics
cache's LISTEN connection (:mod:`focus.api.listener`) and, lazily on the first write, the Kafka
producer, so the read side serves even while Kafka is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from contracts.asyncapi import asyncapi_document
from focus import bootstrap
from focus.api import errors, models, reads, writes
from focus.api.auth import SCOPES, TokenVerifier
from focus.api.cache import AnalyticsCache
from focus.api.deps import Services, Svc, json_response
from focus.api.fastpath import CachedAnalytics
from focus.api.limits import BodyLimit
from focus.api.listener import listen
from focus.api.settings import ApiSettings
from producers.http import BrokerUnavailable, KafkaWriter
from projections.queries import ReadQueries

log = logging.getLogger(__name__)

DESCRIPTION = """Pomodoro focus sessions, event-sourced: writes publish events to Kafka, reads
serve the PostgreSQL projections. Every read says how fresh the projection is.

Bearer JWT scopes: """ + "; ".join(f"`{k}`: {v}" for k, v in SCOPES.items())


def create_app(
    settings: ApiSettings,
    *,
    pool: AsyncConnectionPool[Any] | None = None,
    producer: AIOKafkaProducer | None = None,
) -> FastAPI:
    """Build the API. A ``pool`` passed in must be open and a ``producer`` started; the app
    uses them and leaves closing them to the caller. Otherwise it owns what it builds."""
    if not (settings.database_url and settings.kafka_bootstrap_servers):
        raise ValueError("create_app needs resolved settings: DATABASE_URL and "
                         "KAFKA_BOOTSTRAP_SERVERS (focus.servers.resolved fills them in)")
    database_url, kafka = settings.database_url, settings.kafka_bootstrap_servers

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            db = pool
            if db is None:
                db = AsyncConnectionPool(
                    database_url, min_size=settings.focus_api_pool_min,
                    max_size=settings.focus_api_pool_max, open=False, timeout=5.0,
                    kwargs={"autocommit": True, "connect_timeout": 5},
                    name="focus-api",
                )
                await db.open(wait=False)
                stack.push_async_callback(db.close)
            writer = KafkaWriter(
                lambda: bootstrap.producer(kafka, linger_ms=0, request_timeout_ms=timeout_ms),
                settings.focus_events_topic, kafka, timeout_ms / 1000, producer,
            )
            stack.push_async_callback(writer.close)
            app.state.services = Services(
                db, queries, writer, settings.focus_api_source,
                settings.focus_api_wait_ms / 1000, cache,
            )
            if cache.capacity > 0:
                task = asyncio.create_task(listen(database_url, cache, queries),
                                           name="analytics-cache-listener")
                stack.push_async_callback(_cancel, task)
            yield

    timeout_ms = settings.focus_api_publish_timeout_ms
    app = FastAPI(title="Focus Sessions API", version="1.0.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.verifier = TokenVerifier(settings.jwt_secret, settings.focus_jwt_audience)
    queries = ReadQueries(settings.focus_events_topic)
    cache = AnalyticsCache(settings.focus_api_cache_entries, settings.focus_api_cache_ttl_s,
                           topic=settings.focus_events_topic)
    app.state.analytics_cache = cache
    app.add_middleware(CachedAnalytics, cache=cache, verifier=app.state.verifier)
    # added last, so outermost: nothing reads a body before the limit is checked
    app.add_middleware(BodyLimit, max_bytes=settings.focus_api_max_body_bytes)
    app.include_router(reads.router)
    app.include_router(writes.router)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["ops"],
                      response_model=models.HealthOut, responses={503: {"model": models.HealthOut}})
    document = asyncapi_document(events_topic=settings.focus_events_topic,
                                 dlq_topic=settings.focus_dlq_topic,
                                 partitions=settings.focus_topic_partitions, server=kafka)

    async def asyncapi() -> Response:
        """The event contract: AsyncAPI 3.0 for the events topic and its dead-letter topic."""
        return JSONResponse(document)

    app.add_api_route("/asyncapi", asyncapi, methods=["GET"], tags=["ops"])
    errors.install(app)
    app.add_exception_handler(BrokerUnavailable, _broker_down)
    app.add_exception_handler(psycopg.OperationalError, _database_down)
    app.add_exception_handler(PoolTimeout, _database_down)
    return app


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def healthz(svc: Svc) -> Response:
    """Liveness and readiness: `200` while PostgreSQL answers (reads work), else `503`.
    Kafka and the analytics cache are reported but do not fail the check: reads keep serving
    without either."""
    try:
        async with svc.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        database = "ok"
    except (psycopg.Error, PoolTimeout):
        database = "unavailable"
    broker = "connected" if svc.writer.connected else "not connected"
    cache = "off" if svc.cache.capacity <= 0 else "online" if svc.cache.online else "offline"
    ok = database == "ok"
    return json_response(models.HealthOut(status="ok" if ok else "degraded", database=database,
                                          broker=broker, analytics_cache=cache),
                         200 if ok else 503)


async def _broker_down(request: Request, exc: Exception) -> Response:
    log.warning("write refused, broker unavailable: %s", exc)
    return JSONResponse({"detail": str(exc)}, 503, {"Retry-After": "5"})


async def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("request failed, database unavailable: %s", exc)
    return JSONResponse(
        {"detail": f"PostgreSQL is unavailable ({type(exc).__name__}); retry shortly"},
        503, {"Retry-After": "5"},
    )


def from_environment() -> FastAPI:
    """uvicorn factory for ``focus api``: settings from the environment (servers resolved)."""
    return create_app(ApiSettings())

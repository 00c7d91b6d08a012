"""The app factory: ``create_app(settings)`` builds the API; nothing connects at import time.

Connections open in the lifespan: the PostgreSQL pool (unless one is passed in), the analytics
cache's LISTEN connection (:mod:`focus_sessions.api.listener`) and, lazily on the first write,
the Kafka producer, so the read side serves even while Kafka is down. The pool and the writer
are built by the composition root, :mod:`focus_sessions.bootstrap`; this module adds the routes,
middleware and error handlers around them.

Bounds (see docs/api.md): a body over ``FOCUS_API_MAX_BODY_BYTES`` is refused unread
(:mod:`focus_sessions.api.limits`); every PostgreSQL use ends within ``FOCUS_API_DB_TIMEOUT_MS`` and
every publish within ``FOCUS_API_PUBLISH_TIMEOUT_MS`` (:mod:`focus_sessions.api.deps`); errors are
answered by :mod:`focus_sessions.api.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

from focus_sessions import bootstrap
from focus_sessions.api import errors, models, reads, writes
from focus_sessions.api.auth import SCOPES, TokenVerifier
from focus_sessions.api.cache import AnalyticsCache
from focus_sessions.api.deps import DATABASE_ERRORS, Database, Services, Svc, json_response
from focus_sessions.api.fastpath import CachedAnalytics
from focus_sessions.api.limits import BodyLimit
from focus_sessions.api.listener import listen
from focus_sessions.api.metrics import ApiMetrics, Timed
from focus_sessions.api.settings import ApiSettings
from focus_sessions.contracts.asyncapi import asyncapi_document
from focus_sessions.projections.queries import ReadQueries

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
    kafka, database_url = bootstrap.servers(settings, "create_app")
    db_timeout_ms = settings.focus_api_db_timeout_ms

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            db = pool
            if db is None:
                db = bootstrap.api_pool(settings)
                await db.open(wait=False)
                stack.push_async_callback(db.close)
            database = Database(db, db_timeout_ms / 1000)
            stack.push_async_callback(database.abandoned.close)
            writer = bootstrap.api_writer(settings, producer)
            stack.push_async_callback(writer.close)
            services = Services(
                database, queries, writer, settings.focus_api_source,
                settings.focus_api_wait_ms / 1000, cache,
                settings.focus_api_publish_timeout_ms / 1000, kafka,
            )
            stack.push_async_callback(services.background.close)
            app.state.services = services
            if cache.capacity > 0:
                task = asyncio.create_task(
                    listen(database_url, cache, queries, answer_within=db_timeout_ms / 1000),
                    name="analytics-cache-listener")
                stack.push_async_callback(_cancel, task)
            yield

    app = FastAPI(title="Focus Sessions API", version="1.0.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.verifier = TokenVerifier(settings.jwt_secret, settings.focus_jwt_audience)
    queries = ReadQueries(settings.focus_events_topic)
    cache = AnalyticsCache(settings.focus_api_cache_entries, settings.focus_api_cache_ttl_s,
                           topic=settings.focus_events_topic)
    app.state.analytics_cache = cache
    app.add_middleware(CachedAnalytics, cache=cache, verifier=app.state.verifier)
    # added after the fast path, so outside it: nothing reads a body before the limit is checked
    app.add_middleware(BodyLimit, max_bytes=settings.focus_api_max_body_bytes)
    metrics = ApiMetrics(cache)
    app.add_middleware(Timed, metrics=metrics)  # outermost: every request is timed
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
    # Prometheus scrapes it without a token, like any exporter (docs/metrics.md); not part of
    # the documented API, so it stays out of the OpenAPI schema
    app.add_api_route("/metrics", metrics.endpoint, methods=["GET"], include_in_schema=False)
    errors.install(app)
    return app


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def healthz(svc: Svc) -> Response:
    """Liveness and readiness: `200` while PostgreSQL answers (reads work), else `503`
    (`degraded`) within `FOCUS_API_DB_TIMEOUT_MS`. Kafka and the analytics cache are reported
    but do not fail the check: reads keep serving without either."""
    try:
        await svc.db.run(_ping)
        database = "ok"
    except DATABASE_ERRORS:
        database = "unavailable"
    broker = "connected" if svc.writer.connected else "not connected"
    cache = "off" if svc.cache.capacity <= 0 else "online" if svc.cache.online else "offline"
    ok = database == "ok"
    return json_response(models.HealthOut(status="ok" if ok else "degraded", database=database,
                                          broker=broker, analytics_cache=cache),
                         200 if ok else 503, None if ok else errors.RETRY_AFTER)


async def _ping(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SELECT 1")


def from_environment() -> FastAPI:
    """uvicorn factory for ``focus api``: settings from the environment (servers resolved)."""
    return create_app(ApiSettings())

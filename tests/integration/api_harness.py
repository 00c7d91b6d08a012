"""The API wired to a real broker and PostgreSQL, in-process, for the ``test_api_*`` modules.

``running_api`` migrates a fresh database, builds the app with ``create_app``, runs its lifespan,
and (optionally) a real projector as a task, and yields an httpx client speaking ASGI to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from focus_sessions.api import ApiSettings, create_app, mint_token
from focus_sessions.api.auth import ANALYTICS, SELF, WRITE
from focus_sessions.api.cache import AnalyticsCache
from focus_sessions.bootstrap import build_projector
from focus_sessions.migrate import migrate
from focus_sessions.settings import ProjectorSettings
from tests.support.infra import TopicSet

SECRET = "test-secret-" + "x" * 40


def token(subject: str, *scopes: str, ttl: int = 86_400, secret: str = SECRET) -> dict[str, str]:
    """An ``Authorization`` header for ``subject`` with ``scopes``.

    Valid for a day by default: the module-level tokens below are minted at import, and a
    suite on a slow machine has run for over ten minutes (they expired mid-run at 600 s)."""
    return {"Authorization": f"Bearer {mint_token(secret, subject, scopes, ttl_seconds=ttl)}"}


USER_SCOPES = (SELF,)
SERVICE = token("timer-service", WRITE)
ANALYST = token("analyst", ANALYTICS)


@dataclass
class Api:
    client: httpx.AsyncClient
    settings: ApiSettings
    app: FastAPI

    @property
    def cache(self) -> AnalyticsCache:
        found: AnalyticsCache = self.app.state.analytics_cache
        return found

    def user(self, user_id: str) -> dict[str, str]:
        return token(user_id, SELF)


def api_settings(kafka: str, database_url: str, topics: TopicSet, **extra: object) -> ApiSettings:
    return ApiSettings(
        kafka_bootstrap_servers=kafka, database_url=database_url,
        focus_events_topic=topics.events, focus_dlq_topic=topics.dlq,
        focus_jwt_secret=SECRET, **extra,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def projecting(kafka: str, database_url: str, topics: TopicSet) -> AsyncIterator[None]:
    """A real projector running as a task until the block ends."""
    projector = build_projector(ProjectorSettings(
        kafka_bootstrap_servers=kafka, database_url=database_url,
        focus_events_topic=topics.events, focus_dlq_topic=topics.dlq,
        focus_consumer_group=f"api-test-{uuid.uuid4().hex[:8]}", focus_batch_wait_ms=20,
    ))
    await projector.producer.start()
    await projector.consumer.start()
    task = asyncio.create_task(projector.run())
    try:
        yield
    finally:
        projector.stop()
        await task
        await projector.consumer.stop()
        await projector.producer.stop()


@contextlib.asynccontextmanager
async def running_api(
    settings: ApiSettings, *, projector_kafka: str | None = None, topics: TopicSet | None = None
) -> AsyncIterator[Api]:
    assert settings.database_url
    await asyncio.to_thread(migrate, settings.database_url)
    app = create_app(settings)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        if projector_kafka and topics:
            await stack.enter_async_context(
                projecting(projector_kafka, settings.database_url, topics))
        client = await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=30))
        yield Api(client, settings, app)


async def eventually(check: object, attempts: Iterable[int] = range(200)) -> None:
    """Await ``check()`` until it returns truthy (10 s at most)."""
    for _ in attempts:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def seed_session(database_url: str, user_id: str, *, minutes_ago: int = 5,
                 ended: bool = False) -> str:
    """Write one projected session row directly (for tests that are not about projection)."""
    import psycopg

    sid = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO focus_sessions (session_id, user_id, started_at, ended_at,"
            " duration_minutes, start_event_id, focus_seconds)"
            " VALUES (%s, %s, now() - make_interval(mins => %s),"
            " CASE WHEN %s THEN now() END, 25, %s, CASE WHEN %s THEN 60 END)",
            (sid, user_id, minutes_ago, ended, uuid.uuid4(), ended),
        )
    return str(sid)


@contextlib.asynccontextmanager
async def module_infra(postgres_url: str, kafka: str) -> AsyncIterator[tuple[str, TopicSet]]:
    """A database and topics shared by one module's tests (they only read or 202-publish)."""
    from tests.support.infra import create_database, create_topic_set, drop_database

    url = await asyncio.to_thread(create_database, postgres_url)
    topics = await asyncio.to_thread(create_topic_set, kafka)
    await asyncio.to_thread(migrate, url)
    try:
        yield url, topics
    finally:
        await asyncio.to_thread(drop_database, postgres_url, url)


@contextlib.asynccontextmanager
async def seeded_api(postgres_url: str, kafka: str, *, wait_ms: int,
                     **sessions: dict[str, Any]) -> AsyncIterator[Api]:
    """The API over a module's own database and topics (no projector), with alice's sessions
    written directly: each keyword becomes an attribute of the :class:`Api` holding the id of
    ``seed_session(url, "alice", **its_options)``."""
    async with module_infra(postgres_url, kafka) as (url, topics):
        settings = api_settings(kafka, url, topics, focus_api_wait_ms=wait_ms)
        async with running_api(settings) as api:
            for name, options in sessions.items():
                setattr(api, name, seed_session(url, "alice", **options))
            yield api

"""Keeps the analytics cache coherent: LISTEN for the writers' change notices and apply them.

The cache serves only while this listener holds a live connection. On connect it LISTENs
*first* and then reads the positions, so no commit falls between the two; on any error it takes
the cache offline (nothing served, nothing kept), backs off and connects again. An idle
connection is pinged every ``heartbeat`` seconds, so a silently dead server is noticed. Each
query has ``answer_within`` seconds (``FOCUS_API_DB_TIMEOUT_MS``): a server that hangs takes
the cache offline at that deadline, so every read goes to PostgreSQL, where it meets the same
bound, and no request waits on this connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, sql

from focus_sessions.api.cache import AnalyticsCache
from focus_sessions.consumers.backoff import Backoff
from focus_sessions.projections import notify
from focus_sessions.projections.queries import ReadQueries

log = logging.getLogger(__name__)
T = TypeVar("T")
#: How the listener's connection shows in ``pg_stat_activity``.
APPLICATION_NAME = "focus-api-cache"


class ListenerTimeout(TimeoutError):
    """The listener's connection did not answer in time."""


async def listen(url: str, cache: AnalyticsCache, queries: ReadQueries, *,
                 heartbeat: float = 5.0, backoff: Backoff | None = None,
                 answer_within: float = 2.0) -> None:
    """Run until cancelled (the app's lifespan owns the task)."""
    backoff = backoff or Backoff(base=0.1, cap=5.0)
    attempt = 0
    while True:
        try:
            async with await AsyncConnection.connect(
                    url, autocommit=True, connect_timeout=5,
                    application_name=APPLICATION_NAME) as conn:
                await _bounded(cache, answer_within, conn.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(notify.CHANNEL))))
                cache.go_online(await _bounded(cache, answer_within, queries.freshness(conn)))
                attempt = 0
                log.info("analytics cache online")
                await _follow(conn, cache, queries, heartbeat, answer_within)
        except (psycopg.Error, OSError) as exc:
            cache.go_offline()
            attempt += 1
            delay = backoff.delay(attempt)
            log.warning("analytics cache offline (%s: %s); reconnecting in %.1fs",
                        type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
        except BaseException:
            cache.go_offline()
            raise


async def _follow(conn: AsyncConnection[Any], cache: AnalyticsCache, queries: ReadQueries,
                  heartbeat: float, answer_within: float) -> None:
    while True:
        # stop_after=1 ends the generator after the packet in hand (never inside it, which
        # would lose the rest of the packet), so the connection is free for a query
        flush = received = False
        async for n in conn.notifies(timeout=heartbeat, stop_after=1):
            received = True
            flush = cache.apply(notify.parse(n.payload)) or flush
        if flush:
            cache.go_online(await _bounded(cache, answer_within, queries.freshness(conn)))
        elif not received:
            await _bounded(cache, answer_within, conn.execute("SELECT 1"))


async def _bounded(cache: AnalyticsCache, within: float, query: Awaitable[T]) -> T:
    """``await query``, but take the cache offline and raise :class:`ListenerTimeout` when it
    has not answered after ``within`` seconds. Cancelling psycopg mid-query waits for the
    server to confirm (up to 10 s when it hangs), so the cache goes offline first."""
    task = asyncio.ensure_future(query)
    try:
        async with asyncio.timeout(within) as deadline:
            return await asyncio.shield(task)
    except TimeoutError:
        if not deadline.expired():
            raise
        cache.go_offline()
        task.cancel()
        try:  # psycopg cancels on the server, or closes the connection
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # the app is stopping
                raise
        except Exception:  # noqa: S110 - the connection is given up in any case
            pass
        raise ListenerTimeout(f"no answer within {within:g} s") from None
    except BaseException:
        task.cancel()
        raise

"""What the routes share: the services built by the app factory, the bounded database and
publish calls, and the JSON response helper.

Every PostgreSQL use and every publish has a deadline, so a server that hangs (accepts the
connection, never answers) costs a request a known time, not as long as it hangs:

* :meth:`Database.run` bounds getting a pooled connection plus the queries on it by
  ``FOCUS_API_DB_TIMEOUT_MS``. The work runs in a task of its own, and at the deadline the
  request stops waiting for it: cancelling psycopg mid-query makes it ask the server to cancel
  and wait for that (up to 10 s against a hung server) before it lets go, which a request must
  not wait for. The abandoned task is cancelled; psycopg then closes the connection (or gets it
  back idle once the server answers the cancel), and the pool discards a closed connection
  rather than hand it out again. The pool's own connections also carry a server-side
  ``statement_timeout`` of the same length, for a server that is slow rather than hung.
* :meth:`Services.publish` bounds a publish by ``FOCUS_API_PUBLISH_TIMEOUT_MS`` (plus a moment):
  the writer gives up at that time, but then stops its failed producer, which flushes and can
  take as long again; that clean-up finishes in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import psycopg
from aiokafka.errors import KafkaConnectionError
from fastapi import Depends, Request, Response
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel

from focus_sessions.api.cache import AnalyticsCache
from focus_sessions.contracts.events import CloudEvent
from focus_sessions.producers.http import BrokerUnavailable, KafkaWriter, Published
from focus_sessions.projections.queries import ReadQueries

log = logging.getLogger(__name__)
T = TypeVar("T")

_FIRST_POLL_S = 0.005
_MAX_POLL_S = 0.05
#: How much longer than the writer's own timeout a publish is waited for: the writer's error
#: (which says why) normally comes first.
PUBLISH_GRACE_S = 0.25


class DatabaseTimeout(TimeoutError):
    """PostgreSQL did not answer within the bound."""


#: What a failed PostgreSQL use raises: each means "unavailable", answered 503.
DATABASE_ERRORS = (psycopg.OperationalError, PoolTimeout, DatabaseTimeout)


class PublishFailed(Exception):
    """A publish that did not get its acknowledgement.

    ``maybe_published`` is False only when Kafka certainly never got the event (no connection
    could be made); otherwise it may be in the log, and may yet be projected."""

    def __init__(self, what: str, *, maybe_published: bool) -> None:
        super().__init__(what)
        self.what = what
        self.maybe_published = maybe_published


class Abandoned:
    """Tasks a request stopped waiting for, referenced until they end (asyncio keeps only weak
    references to tasks), and cancelled when the app stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: asyncio.Task[Any], *, cancel: bool) -> None:
        if cancel:
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # retrieved: no warning
            log.debug("abandoned task ended with %r", task.exception())

    async def close(self, grace: float = 5.0) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()  # a second cancel: psycopg closes the connection at once
        if tasks:
            await asyncio.wait(tasks, timeout=grace)


class Database:
    """The API's PostgreSQL pool, with every use bounded by ``timeout_s``."""

    def __init__(self, pool: AsyncConnectionPool[Any], timeout_s: float) -> None:
        self.pool = pool
        self.timeout = timeout_s
        self.abandoned = Abandoned()

    async def run(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]],
                  within: float | None = None) -> T:
        """``await work(conn)`` on a pooled connection, within ``within`` seconds from now
        (default and most: the setting) for both the pool and the queries;
        :class:`DatabaseTimeout` after."""
        bound = self.timeout if within is None else min(within, self.timeout)
        if bound <= 0:
            raise DatabaseTimeout("no time was left for PostgreSQL")
        # a task of its own, not asyncio.timeout around the work: see the module docstring
        # (costs 10-25 µs a use on the 2-core development VM, next to ~150 µs for the query)
        task = asyncio.create_task(self._use(work, bound))
        try:
            async with asyncio.timeout(bound) as deadline:
                return await asyncio.shield(task)
        except TimeoutError:
            if not deadline.expired():
                raise
            self.abandoned.add(task, cancel=True)
            raise DatabaseTimeout(
                f"no answer within {bound * 1000:.0f} ms, FOCUS_API_DB_TIMEOUT_MS") from None
        except BaseException:
            if not task.done():  # the request itself was cancelled (client gone)
                self.abandoned.add(task, cancel=True)
            raise

    async def _use(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]],
                   bound: float) -> T:
        async with self.pool.connection(timeout=bound) as conn:
            return await work(conn)


@dataclass(slots=True)
class Services:
    db: Database
    queries: ReadQueries
    writer: KafkaWriter
    source: str
    wait_seconds: float
    cache: AnalyticsCache
    publish_timeout: float = 5.0
    kafka: str = ""
    background: Abandoned = field(default_factory=Abandoned)

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self.db.pool

    async def publish(self, event: CloudEvent) -> Published:
        """Publish with ``acks=all`` within the publish timeout; :class:`PublishFailed` says
        whether the event may be in the log anyway."""
        task = asyncio.create_task(self.writer.publish(event))
        try:
            async with asyncio.timeout(self.publish_timeout + PUBLISH_GRACE_S) as deadline:
                return await asyncio.shield(task)
        except BrokerUnavailable as exc:
            cause = exc.__cause__
            never_sent = (isinstance(cause, KafkaConnectionError)
                          and "bootstrap" in str(cause))  # start() failed: send never ran
            reason = (str(exc) if cause is None else
                      f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__)
            what = (f"Kafka at {self.kafka!r} could not be reached ({reason})" if never_sent
                    else f"Kafka at {self.kafka!r} did not acknowledge the event within "
                         f"{self.publish_timeout:g} s ({reason})")
            raise PublishFailed(what, maybe_published=not never_sent) from exc
        except TimeoutError:
            if not deadline.expired():
                raise
            self.background.add(task, cancel=False)  # let the writer finish its clean-up
            raise PublishFailed(
                f"Kafka at {self.kafka!r} did not acknowledge the event within "
                f"{self.publish_timeout:g} s", maybe_published=True) from None
        except BaseException:
            if not task.done():
                self.background.add(task, cancel=True)
            raise

    async def projected(self, published: Published, deadline: float) -> bool:
        """Whether the projector has applied ``published``, polled for ``wait_seconds``; each
        poll ends by ``deadline`` (``time.monotonic()``) at the latest. Database errors pass."""
        stop_polling = time.monotonic() + self.wait_seconds
        delay = _FIRST_POLL_S
        while True:
            offset = await self.db.run(
                lambda conn: self.queries.next_offset(conn, published.partition),
                deadline - time.monotonic())
            if offset > published.offset:
                return True
            remaining = stop_polling - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_POLL_S)


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain function in a worker thread, on every request
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(services)]


def json_response(model: BaseModel, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """Serialise with pydantic-core directly (no second validation pass in FastAPI)."""
    return Response(model.model_dump_json(by_alias=True), status_code, headers,
                    media_type="application/json")

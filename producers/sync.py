"""A blocking wrapper around :class:`~focus_sessions.producers.publisher.Publisher` for code
without asyncio.

    with SyncPublisher("kafka:9092", source="urn:my-timer") as publisher:
        receipt = publisher.start_session("user-42")

The async publisher runs on a private event loop in a daemon thread; each call blocks until the
broker has acknowledged (or ``timeout`` seconds pass). Safe to call from several threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar
from uuid import UUID

from focus_sessions.contracts.events import DEFAULT_PLANNED_MINUTES, CloudEvent
from focus_sessions.producers.publisher import Publisher, Receipt

_T = TypeVar("_T")


class SyncPublisher:
    """Same methods as :class:`Publisher`, blocking. Takes the same keyword arguments."""

    def __init__(self, bootstrap_servers: str, *, timeout: float = 30.0, **options: Any) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="focus-publisher", daemon=True
        )
        self._thread.start()
        self._publisher = Publisher(bootstrap_servers, **options)  # connects on start()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if not self._thread.is_alive():
            coroutine.close()
            raise RuntimeError("SyncPublisher is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout)

    def start(self) -> None:
        self._run(self._publisher.start())

    def close(self) -> None:
        """Flush, disconnect and stop the loop thread (idempotent)."""
        if not self._thread.is_alive():
            return
        try:
            self._run(self._publisher.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)
            self._loop.close()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def publish(self, event: CloudEvent) -> Receipt:
        return self._run(self._publisher.publish(event))

    def publish_many(self, events: Sequence[CloudEvent]) -> list[Receipt]:
        return self._run(self._publisher.publish_many(events))

    def start_session(
        self, user_id: str, *, started_at: datetime | None = None,
        session_id: UUID | None = None, step_id: UUID | None = None,
        duration_minutes: int = DEFAULT_PLANNED_MINUTES, time_zone: str | None = None,
        event_id: UUID | None = None,
    ) -> Receipt:
        return self._run(self._publisher.start_session(
            user_id, started_at=started_at, session_id=session_id, step_id=step_id,
            duration_minutes=duration_minutes, time_zone=time_zone, event_id=event_id,
        ))

    def interrupt(
        self, user_id: str, session_id: UUID, *, interrupted_at: datetime | None = None,
        reason: str | None = None, event_id: UUID | None = None,
    ) -> Receipt:
        return self._run(self._publisher.interrupt(
            user_id, session_id, interrupted_at=interrupted_at, reason=reason,
            event_id=event_id,
        ))

    def end_session(
        self, user_id: str, session_id: UUID, *, ended_at: datetime | None = None,
        completed: bool = True, outcome: str | None = None,
        reported_interruptions: int | None = None, focus_quality: int | None = None,
        event_id: UUID | None = None,
    ) -> Receipt:
        return self._run(self._publisher.end_session(
            user_id, session_id, ended_at=ended_at, completed=completed, outcome=outcome,
            reported_interruptions=reported_interruptions, focus_quality=focus_quality,
            event_id=event_id,
        ))

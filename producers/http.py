"""The producing half of the HTTP write endpoints: request bodies in, published events out.

Bodies are the original spec's ``FocusSessionCreate`` / ``FocusSessionUpdate`` (plus an
interruption body); :func:`start_event` and friends turn them into contract events, and
:class:`KafkaWriter` publishes them keyed by user with ``acks=all``. An ``Idempotency-Key``
makes ids deterministic (uuid5), so a retried request produces the *same* event and the
projector's event-id dedupe removes the copy: no extra table, no extra state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated
from uuid import UUID, uuid4, uuid5

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from focus_sessions.contracts.codec import encode
from focus_sessions.contracts.events import (
    DEFAULT_PLANNED_MINUTES,
    MAX_PLANNED_MINUTES,
    MIN_PLANNED_MINUTES,
    CloudEvent,
    EndedEvent,
    Instant,
    InterruptedEvent,
    Reason,
    StartedEvent,
    TimeZone,
    UserId,
)
from focus_sessions.producers import events

log = logging.getLogger(__name__)

#: Namespace of the ids derived from Idempotency-Keys (fixed forever: changing it would turn
#: every retry after a deploy into a second session).
IDEMPOTENCY_NAMESPACE = UUID("6f1c2b1e-4d0a-5e8b-9a53-6d2f0c9e7a41")
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=255,
                                                  pattern=r"^[\x21-\x7e]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FocusSessionCreate(_Body):
    """Start a session (the original spec's body, plus an optional time zone)."""

    user_id: UserId
    step_id: UUID | None = None
    duration_minutes: int = Field(DEFAULT_PLANNED_MINUTES, ge=MIN_PLANNED_MINUTES,
                                  le=MAX_PLANNED_MINUTES, description="Planned length.")
    time_zone: TimeZone | None = Field(None, description="IANA zone for daily buckets.")


class FocusSessionUpdate(_Body):
    """End a session. ``ended_at`` defaults to now; ``completed`` defaults to whether the
    planned duration was reached; ``interruptions`` is the timer's own count, if it kept one."""

    ended_at: Instant | None = None
    completed: bool | None = None
    interruptions: int | None = Field(None, ge=0, le=10_000)


class InterruptionCreate(_Body):
    """Record an interruption. ``interrupted_at`` defaults to now."""

    interrupted_at: Instant | None = None
    reason: Reason | None = None


def derived_id(*parts: str) -> UUID:
    """A stable id from an idempotency key and what it is scoped to."""
    return uuid5(IDEMPOTENCY_NAMESPACE, "\n".join(parts))


def start_event(body: FocusSessionCreate, now: datetime, source: str,
                key: str | None = None) -> StartedEvent:
    """The ``started`` event for a start request; with a key, its ids derive from the key."""
    sid = derived_id("session", body.user_id, key) if key else uuid4()
    eid = derived_id("started", body.user_id, key) if key else uuid4()
    return events.started(
        body.user_id, now, session_id=sid, event_id=eid, step_id=body.step_id,
        duration_minutes=body.duration_minutes, time_zone=body.time_zone, source=source,
    )


def end_event(body: FocusSessionUpdate, user_id: str, session_id: UUID, started_at: datetime,
              planned_minutes: int, now: datetime, source: str,
              key: str | None = None) -> EndedEvent:
    """The ``ended`` (v2) event for an end request; see :class:`FocusSessionUpdate`."""
    ended_at = body.ended_at or now
    completed = body.completed
    if completed is None:
        completed = ended_at - started_at >= timedelta(minutes=planned_minutes)
    return events.ended(
        user_id, session_id, ended_at, completed=completed,
        reported_interruptions=body.interruptions, source=source, time=now,
        event_id=end_event_id(session_id, key) if key else uuid4(),
    )


def end_event_id(session_id: UUID, key: str) -> UUID:
    return derived_id("ended", str(session_id), key)


def interruption_event(body: InterruptionCreate, user_id: str, session_id: UUID,
                       now: datetime, source: str, key: str | None = None) -> InterruptedEvent:
    eid = derived_id("interrupted", str(session_id), key) if key else uuid4()
    return events.interrupted(user_id, session_id, body.interrupted_at or now,
                              reason=body.reason, event_id=eid, source=source, time=now)


class BrokerUnavailable(RuntimeError):
    """The event was not acknowledged by the broker; say where we tried and what to do."""


@dataclass(frozen=True, slots=True)
class Published:
    partition: int
    offset: int


class KafkaWriter:
    """Publishes events keyed by user; (re)connects lazily so the API starts without Kafka."""

    def __init__(self, factory: Callable[[], AIOKafkaProducer], topic: str, address: str,
                 timeout_s: float, producer: AIOKafkaProducer | None = None) -> None:
        self._factory = factory
        self._topic = topic
        self._address = address
        self._timeout = timeout_s
        self._producer = producer
        self._owned = producer is None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def publish(self, event: CloudEvent) -> Published:
        """Send and wait for ``acks=all``; :class:`BrokerUnavailable` if that cannot happen."""
        key = event.data.user_id.encode()  # type: ignore[attr-defined]
        try:
            async with asyncio.timeout(self._timeout):
                producer = await self._started()
                meta = await producer.send_and_wait(self._topic, encode(event), key=key)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._discard()
            raise BrokerUnavailable(
                f"Kafka at {self._address!r} did not acknowledge the event within "
                f"{self._timeout:g} s ({type(exc).__name__}: {exc}). Nothing was projected; "
                "retry later — with the same Idempotency-Key, a retry cannot duplicate."
            ) from exc
        return Published(meta.partition, meta.offset)

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = self._factory()
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def _discard(self) -> None:
        # A producer that failed may be wedged; an owned one is rebuilt on the next write.
        if not self._owned:
            return
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception:  # it is broken already; we only let go of it
                log.debug("stopping a failed producer raised", exc_info=True)

    async def close(self) -> None:
        if self._owned:
            await self._discard()

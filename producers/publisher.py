"""Publisher library for other Python services: valid events in, partition and offset out.

    async with Publisher("kafka:9092", source="urn:my-timer") as publisher:
        receipt = await publisher.start_session("user-42", duration_minutes=25)
        await publisher.end_session("user-42", receipt.session_id, completed=True)

Events are CloudEvents JSON keyed by ``user_id`` (all of a user's events share a partition, so
they stay in order), sent with ``acks=all`` and, where the broker grants it, idempotence
(``FOCUS_KAFKA_IDEMPOTENCE``, see :mod:`focus_sessions.idempotence`): Apache Kafka does, the
embedded development broker does not. Either way the projector drops duplicates by event ``id``,
so a retried send can never count twice. Bad input raises pydantic's ``ValidationError`` before
anything is sent.

Create the topic before the first event (``focus emit`` and the compose stack do): a broker that
auto-creates it picks its own partition count, and keys would map to other partitions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from focus_sessions.contracts.codec import encode
from focus_sessions.contracts.events import DEFAULT_PLANNED_MINUTES, WIRE_TYPES, CloudEvent
from focus_sessions.contracts.topics import EVENTS_TOPIC
from focus_sessions.idempotence import Idempotence, idempotent
from focus_sessions.producers import events as build


class PublisherError(RuntimeError):
    """The broker could not be reached or did not accept the event (see the message)."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where an accepted event now lives in the log."""

    event_id: UUID
    session_id: UUID
    type: str
    topic: str
    partition: int
    offset: int

    def as_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, UUID) else v for k, v in asdict(self).items()}


def _key(event: CloudEvent) -> bytes:
    user_id: str = event.data.user_id  # type: ignore[attr-defined]
    return user_id.encode()


def _now() -> datetime:
    return datetime.now(UTC)


def checked(event: CloudEvent) -> bytes:
    """Encode ``event`` after re-validating the bytes as its wire type (models built with
    ``model_construct`` skip validation) and checking ``subject == data.session_id``."""
    model = WIRE_TYPES.get(event.type)
    raw = encode(event)
    if model is None or type(event) is not model:
        raise TypeError(f"{type(event).__name__} with type {event.type!r} is not a wire event")
    model.model_validate_json(raw)
    session_id = str(event.data.session_id)  # type: ignore[attr-defined]
    if event.subject != session_id:
        error = InitErrorDetails(
            type=PydanticCustomError("subject_mismatch", "subject must equal data.session_id"),
            loc=("subject",), input=event.subject,
        )
        raise ValidationError.from_exception_data(model.__name__, [error])
    return raw


class Publisher:
    """Async publisher of focus-session events; use ``async with`` or ``start()``/``stop()``."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = EVENTS_TOPIC,
        source: str = build.DEFAULT_SOURCE,
        clock: Callable[[], datetime] = _now,
        producer: AIOKafkaProducer | None = None,
        request_timeout_ms: int = 15_000,
        idempotence: Idempotence | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.idempotence = idempotence  # None: the FOCUS_KAFKA_IDEMPOTENCE setting
        self.topic = topic
        self.source = source
        self._clock = clock
        self._request_timeout_ms = request_timeout_ms
        self._producer: Any = producer  # built on start(): aiokafka needs the running loop
        self._started = False

    async def start(self) -> None:
        """Connect; raise :class:`PublisherError` naming the address when no broker answers."""
        if self._started:
            return
        if self._producer is None:
            # acks=all: the answer means every in-sync replica has the event. Idempotence: see
            # the module docstring. linger_ms=0: a single event should not wait for company.
            self._producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers, acks="all",
                enable_idempotence=await idempotent(self.bootstrap_servers, self.idempotence),
                linger_ms=0, request_timeout_ms=self._request_timeout_ms,
            )
        try:
            await self._producer.start()
        except (KafkaConnectionError, KafkaError, OSError) as error:
            await self._producer.stop()
            raise PublisherError(
                f"No Kafka broker answered at {self.bootstrap_servers!r} ({error}). Check the "
                "bootstrap servers (the focus CLI reads KAFKA_BOOTSTRAP_SERVERS)."
            ) from error
        self._started = True

    async def stop(self) -> None:
        """Flush what is in flight and disconnect."""
        self._started = False
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(self, event: CloudEvent) -> Receipt:
        """Publish one event (any wire type) keyed by its user; wait for ``acks=all``."""
        (receipt,) = await self.publish_many([event])
        return receipt

    async def publish_many(self, events: Sequence[CloudEvent]) -> list[Receipt]:
        """Publish events in order (per user, the log keeps it) and wait for all of them.

        Every event is validated before the first is sent.
        """
        values = [checked(event) for event in events]
        if not self._started:
            raise PublisherError("Publisher is not started: use 'async with' or await start().")
        with self._translated_errors():
            futures = [
                await self._producer.send(self.topic, value=value, key=_key(event))
                for event, value in zip(events, values, strict=True)
            ]
            metas = await asyncio.gather(*futures)
        return [
            Receipt(event.id, event.data.session_id, event.type,  # type: ignore[attr-defined]
                    meta.topic, meta.partition, meta.offset)
            for event, meta in zip(events, metas, strict=True)
        ]

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except KafkaTimeoutError as error:
            raise PublisherError(
                f"Timed out publishing to topic {self.topic!r} on {self.bootstrap_servers!r}: "
                "is the broker up, and does the topic exist (it may not auto-create topics)?"
            ) from error
        except KafkaError as error:
            raise PublisherError(
                f"Broker {self.bootstrap_servers!r} refused the event for topic "
                f"{self.topic!r}: {error!r}"
            ) from error

    async def start_session(
        self, user_id: str, *, started_at: datetime | None = None,
        session_id: UUID | None = None, step_id: UUID | None = None,
        duration_minutes: int = DEFAULT_PLANNED_MINUTES, time_zone: str | None = None,
        event_id: UUID | None = None,
    ) -> Receipt:
        """``focus.session.started.v1``; a new session id unless one is given."""
        return await self.publish(build.started(
            user_id, started_at or self._clock(), session_id=session_id, step_id=step_id,
            duration_minutes=duration_minutes, time_zone=time_zone, event_id=event_id,
            source=self.source,
        ))

    async def interrupt(
        self, user_id: str, session_id: UUID, *, interrupted_at: datetime | None = None,
        reason: str | None = None, event_id: UUID | None = None,
    ) -> Receipt:
        """``focus.session.interrupted.v1``."""
        return await self.publish(build.interrupted(
            user_id, session_id, interrupted_at or self._clock(), reason=reason,
            event_id=event_id, source=self.source,
        ))

    async def end_session(
        self, user_id: str, session_id: UUID, *, ended_at: datetime | None = None,
        completed: bool = True, outcome: str | None = None,
        reported_interruptions: int | None = None, focus_quality: int | None = None,
        event_id: UUID | None = None,
    ) -> Receipt:
        """``focus.session.ended.v2``; ``outcome`` (completed/abandoned/cancelled) wins over
        ``completed`` when given."""
        return await self.publish(build.ended(
            user_id, session_id, ended_at or self._clock(), completed=completed,
            outcome=outcome, reported_interruptions=reported_interruptions,
            focus_quality=focus_quality, event_id=event_id, source=self.source,
        ))

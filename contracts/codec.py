"""Bytes <-> events, at the edge, once. Decoding upcasts every event to its newest version."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Protocol, TypeVar, cast
from uuid import UUID

from pydantic import Field, TypeAdapter, ValidationError

from focus_sessions.contracts.events import (
    WIRE_TYPES,
    CloudEvent,
    EndedEvent,
    EndedEventV1,
    Event,
    InterruptedEvent,
    SessionEndedV2,
    StartedEvent,
)


class PoisonEvent(ValueError):
    """Bytes that can never become a valid event. ``reason`` is a short, stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


T = TypeVar("T")

_WireEvent = Annotated[
    StartedEvent | InterruptedEvent | EndedEventV1 | EndedEvent,
    Field(discriminator="type"),
]
_wire = TypeAdapter(_WireEvent)
#: The core validator itself: skips TypeAdapter's Python wrapper on the hot path.
_validate_json = _wire.validator.validate_json


class EndedV1Fields(Protocol):
    """The data of a v1 end, as either decoder holds it (a contract model or its mirror)."""

    @property
    def session_id(self) -> UUID: ...
    @property
    def user_id(self) -> str: ...
    @property
    def ended_at(self) -> datetime: ...
    @property
    def completed(self) -> bool: ...
    @property
    def interruptions(self) -> int | None: ...


def upcast_ended_data(v1: EndedV1Fields, build: Callable[..., T]) -> T:
    """The one upcaster of ``ended`` data, v1 -> v2: ``completed`` becomes ``outcome``
    (completed or abandoned), ``interruptions`` is renamed ``reported_interruptions``, and there
    is no ``focus_quality`` rating. The envelope is kept as it is.

    ``build`` makes the v2 data from its fields by keyword: :func:`upcast` passes the contract's
    ``SessionEndedV2.model_construct``, :mod:`focus_sessions.projections.wire` its mirror's struct.
    (A callback
    taking keywords, not a dict of fields: a dict unpacked into the msgspec struct cost the fast
    decoder ~0.3 µs more per v1 end, ~6 % of decoding one.) ``build=dict`` shows the mapping;
    ``tests/unit/test_one_contract.py`` fails when v2 gains a field this does not fill.
    """
    return build(session_id=v1.session_id, user_id=v1.user_id, ended_at=v1.ended_at,
                 outcome="completed" if v1.completed else "abandoned",
                 reported_interruptions=v1.interruptions, focus_quality=None)


def upcast(event: CloudEvent) -> Event:
    """Bring any known version of an event to the newest shape of its type."""
    if isinstance(event, EndedEventV1):
        # Both sides are already validated: construct without re-validating (hot path).
        return EndedEvent.model_construct(
            id=event.id, source=event.source, time=event.time, subject=event.subject,
            data=upcast_ended_data(event.data, SessionEndedV2.model_construct),
        )
    assert isinstance(event, StartedEvent | InterruptedEvent | EndedEvent)
    return event


def decode(raw: bytes | None) -> Event:
    """Parse and validate one message value; raise :class:`PoisonEvent` saying why not."""
    return decode_message(None, raw)


def decode_message(key: bytes | None, value: bytes | None) -> Event:
    """Decode one Kafka message: the value as :func:`decode`, and the key (when present) must
    be the event's ``user_id`` — per-user order depends on it.

    The authority on what is valid: the projection's faster decoder
    (:mod:`focus_sessions.projections.wire`)
    answers as this does, and falls back to it for whatever it refuses.
    """
    if not value:
        raise PoisonEvent("empty", "message has no value")
    try:
        event: Any = _validate_json(value)
    except ValidationError as exc:
        raise _classify(exc) from exc
    check_message(key, event.subject, event.data.session_id, event.data.user_id)
    if type(event) is EndedEventV1:
        return upcast(event)
    return cast(Event, event)


def check_message(key: bytes | None, subject: str, session_id: UUID, user_id: str) -> None:
    """What the models cannot check alone: the subject is the session id, and the Kafka key
    (when present) is the user id — per-user order depends on it."""
    # subject == str(session_id), at half the cost: the hex digits, and the hyphens where
    # str() puts them
    if (len(subject) != 36 or subject.replace("-", "") != session_id.hex
            or not subject[8] == subject[13] == subject[18] == subject[23] == "-"):
        raise PoisonEvent("invalid", "subject must equal data.session_id")
    if key is not None and key != user_id.encode():
        raise PoisonEvent("key-mismatch", "the Kafka key must equal data.user_id (per-user order)")


def _classify(exc: ValidationError) -> PoisonEvent:
    first = exc.errors(include_url=False)[0]
    kind = first["type"]
    if kind == "json_invalid":
        return PoisonEvent("malformed-json", first["msg"])
    if kind == "union_tag_invalid":
        known = ", ".join(sorted(WIRE_TYPES))
        tag = first.get("ctx", {}).get("tag", "?")
        return PoisonEvent("unknown-type", f"type {tag!r} is not one of: {known}")
    if kind in ("union_tag_not_found", "dict_type", "model_attributes_type"):
        return PoisonEvent("not-an-event", "expected a CloudEvents JSON object with a 'type'")
    where = ".".join(str(p) for p in first["loc"][1:]) or "event"
    return PoisonEvent("invalid", f"{where}: {first['msg']}")


def encode(event: CloudEvent) -> bytes:
    """Serialise an event as CloudEvents structured JSON."""
    return event.model_dump_json().encode()

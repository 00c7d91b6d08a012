"""Focus-session events: immutable facts, in a CloudEvents 1.0 envelope (structured JSON mode).

Other services code against the ``type`` names and ``data`` fields defined here; the JSON Schemas
exported by :mod:`focus_sessions.contracts.schema` are generated from these classes, so this module
*is* the
contract. Types are versioned in their name: additive changes keep the version, breaking changes
get a new version plus an upcaster (:func:`focus_sessions.contracts.codec.upcast`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Final, Literal
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

STARTED_V1: Final = "focus.session.started.v1"
INTERRUPTED_V1: Final = "focus.session.interrupted.v1"
ENDED_V1: Final = "focus.session.ended.v1"
ENDED_V2: Final = "focus.session.ended.v2"

#: Planned Pomodoro length bounds from the original spec (BE-03).
MIN_PLANNED_MINUTES = 5
MAX_PLANNED_MINUTES = 90
DEFAULT_PLANNED_MINUTES = 25

#: User ids are opaque, but bounded: 1-255 printable characters without whitespace or slashes,
#: so they are safe as Kafka keys, URL path segments and log fields.
USER_ID_PATTERN: Final = r"^[A-Za-z0-9._:@+\-|=~]+$"
UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=USER_ID_PATTERN),
]


# -- what the read models can store and a timer can mean (guarantee 4) ----------------------
# Every rule here is checked by the API (422 naming the field) and by the projector (a dead
# letter with reason ``invalid``, or ``contradiction`` for the session-length rule, which needs
# the session's start): one rule set, in one place.

#: Text may hold any character PostgreSQL's ``text`` can store: everything but NUL. (Lone
#: surrogates cannot be encoded as UTF-8: both JSON decoders refuse them as malformed JSON, and
#: pydantic refuses them in Python strings.)
NO_NUL_PATTERN: Final = "^[^\\u0000]*$"
#: Every time (envelope ``time`` and the data's ``*_at``) lies in ``[EARLIEST, LATEST)``: far
#: inside what PostgreSQL's ``timestamptz`` and Python's ``datetime`` hold, with room for any
#: UTC offset and for the week and day arithmetic of the rollups.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
#: The longest a session may last: its end and its interruptions lie within this time after
#: its start (a Pomodoro does not last three years). An end or interruption past it is a
#: contradiction; the API refuses it with 422.
MAX_SESSION: Final = timedelta(hours=24)
TIME_RANGE_TEXT: Final = (f"between {EARLIEST:%Y-%m-%dT%H:%M:%SZ} (inclusive) and "
                          f"{LATEST:%Y-%m-%dT%H:%M:%SZ} (exclusive)")


def storable_text(value: str) -> str:
    """``value`` unless it holds a NUL character, which PostgreSQL text cannot store."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


def in_time_range(value: datetime) -> datetime:
    """``value`` if it lies in ``[EARLIEST, LATEST)``, else ``ValueError``."""
    # the year check first: comparing an aware time near year 1 or 9999 with another converts
    # it to UTC, which can overflow
    if not (EARLIEST.year - 1 <= value.year <= LATEST.year and EARLIEST <= value < LATEST):
        raise ValueError(f"must lie {TIME_RANGE_TEXT}")
    return value


_NO_NUL = Field(json_schema_extra={"pattern": NO_NUL_PATTERN})
#: The ``source`` of an event: 1-255 characters, no NUL.
Source = Annotated[str, StringConstraints(min_length=1, max_length=255),
                   AfterValidator(storable_text), _NO_NUL]
#: An interruption's reason: at most 500 characters, no NUL.
Reason = Annotated[str, StringConstraints(max_length=500), AfterValidator(storable_text), _NO_NUL]
#: An aware time in the supported range.
Instant = Annotated[AwareDatetime, AfterValidator(in_time_range), Field(
    description=f"RFC 3339 with an offset, {TIME_RANGE_TEXT}.")]


@lru_cache(maxsize=4096)  # on the hot path of every start event; zones are few
def known_zone(value: str) -> str:
    """``value`` if it names an IANA time zone, else ``ValueError``."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


TimeZone = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    AfterValidator(known_zone),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SessionStartedV1(_Frozen):
    """A focus session started. ``duration_minutes`` is the *planned* length (5-90, default 25)."""

    session_id: UUID
    user_id: UserId
    step_id: UUID | None = None
    duration_minutes: int = Field(
        DEFAULT_PLANNED_MINUTES, ge=MIN_PLANNED_MINUTES, le=MAX_PLANNED_MINUTES
    )
    started_at: Instant
    #: Additive (still v1): the user's IANA time zone, used for daily/weekly buckets.
    time_zone: TimeZone | None = None


class SessionInterruptedV1(_Frozen):
    """The user was interrupted during a session (phone, colleague, ...)."""

    session_id: UUID
    user_id: UserId
    interrupted_at: Instant
    reason: Reason | None = None


class SessionEndedV1(_Frozen):
    """A session ended; ``completed`` says whether the user finished it.

    ``interruptions`` is the total the timer counted itself, or null if it did not count.
    """

    session_id: UUID
    user_id: UserId
    ended_at: Instant
    completed: bool
    interruptions: int | None = Field(None, ge=0, le=10_000)


class SessionEndedV2(_Frozen):
    """v2 of ``ended``: the outcome is an explicit enum and the user rates their focus.

    Why a new version: ``completed: bool`` could not tell "abandoned" from "cancelled before it
    began", and the rename of ``interruptions`` to ``reported_interruptions`` says whose count it
    is. v1 events are upcast to this shape (``completed`` -> outcome, no rating).
    """

    session_id: UUID
    user_id: UserId
    ended_at: Instant
    outcome: Literal["completed", "abandoned", "cancelled"]
    reported_interruptions: int | None = Field(None, ge=0, le=10_000)
    focus_quality: int | None = Field(None, ge=1, le=5)

    @property
    def completed(self) -> bool:
        return self.outcome == "completed"


SessionData = SessionStartedV1 | SessionInterruptedV1 | SessionEndedV1 | SessionEndedV2


class CloudEvent(_Frozen):
    """CloudEvents 1.0 envelope, structured JSON mode. ``id`` is the dedupe key."""

    specversion: Literal["1.0"] = "1.0"
    id: UUID
    source: Source
    type: str
    time: Instant
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"


class StartedEvent(CloudEvent):
    type: Literal["focus.session.started.v1"] = STARTED_V1
    data: SessionStartedV1


class InterruptedEvent(CloudEvent):
    type: Literal["focus.session.interrupted.v1"] = INTERRUPTED_V1
    data: SessionInterruptedV1


class EndedEventV1(CloudEvent):
    type: Literal["focus.session.ended.v1"] = ENDED_V1
    data: SessionEndedV1


class EndedEvent(CloudEvent):
    """The newest ``ended`` shape; every ``ended`` is upcast to this before projection."""

    type: Literal["focus.session.ended.v2"] = ENDED_V2
    data: SessionEndedV2


#: Every event type on the wire, by its CloudEvents ``type``.
WIRE_TYPES: dict[str, type[CloudEvent]] = {
    STARTED_V1: StartedEvent,
    INTERRUPTED_V1: InterruptedEvent,
    ENDED_V1: EndedEventV1,
    ENDED_V2: EndedEvent,
}

#: What the projection sees: the newest version of each type.
Event = StartedEvent | InterruptedEvent | EndedEvent


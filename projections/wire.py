"""The projection's decoder: the contract's events, decoded at a little over half the cost.

:mod:`focus_sessions.contracts.codec` (pydantic) is the contract and the authority on what is
valid. The
projector and the replay decode every event of the log, and pydantic models are costly there:
two models per event, each with its own ``__dict__``, all tracked by the garbage collector.
This module mirrors the contract's event types as msgspec structs (no ``__dict__``, never
tracked by the collector) with the same fields, defaults and bounds.

The mirror is only a fast path. :func:`decode_message` gives exactly the answers of
:func:`focus_sessions.contracts.codec.decode_message`:

- what msgspec accepts is valid for the contract too, with equal values (a differential
  property test holds the two to that: ``tests/unit/test_wire.py``);
- everything msgspec refuses — malformed or invalid bytes, but also valid spellings only
  pydantic's lax mode takes, such as ``"25"`` for an integer — goes to the contract's decoder,
  which returns its event or raises its :class:`~focus_sessions.contracts.codec.PoisonEvent`;
- so does anything with more than six fractional digits of a second (msgspec rounds them,
  pydantic truncates), or with a ``\\u`` escape (which could spell such digits, a NUL or a
  lone surrogate), a time zone the zone database does not know, and a time near or outside
  the contract's range (:data:`focus_sessions.contracts.events.EARLIEST` to ``LATEST``).

So the fold sees either kind of event, with the same attribute names and types
(:data:`AnyEvent`); events rebuilt from PostgreSQL stay pydantic models.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, cast
from uuid import UUID

import msgspec
from msgspec.structs import force_setattr

from focus_sessions.contracts.codec import check_message, upcast_ended_data
from focus_sessions.contracts.codec import decode_message as contract_decode
from focus_sessions.contracts.codec import encode as contract_encode
from focus_sessions.contracts.events import (
    DEFAULT_PLANNED_MINUTES,
    EARLIEST,
    ENDED_V1,
    ENDED_V2,
    INTERRUPTED_V1,
    LATEST,
    MAX_PLANNED_MINUTES,
    MIN_PLANNED_MINUTES,
    STARTED_V1,
    USER_ID_PATTERN,
    EndedEvent,
    Event,
    InterruptedEvent,
    StartedEvent,
    known_zone,
)

#: The contract's pattern is checked by :func:`decode_message`, not here (see ``_USER_ID``).
_UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
_Aware = Annotated[datetime, msgspec.Meta(tz=True)]  # AwareDatetime
_Count = Annotated[int, msgspec.Meta(ge=0, le=10_000)]


class _Data(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False, kw_only=True):
    session_id: UUID
    user_id: _UserId


class StartedData(_Data, frozen=True, kw_only=True):
    step_id: UUID | None = None
    duration_minutes: Annotated[int, msgspec.Meta(ge=MIN_PLANNED_MINUTES,
                                                  le=MAX_PLANNED_MINUTES)] = (
        DEFAULT_PLANNED_MINUTES)
    started_at: _Aware
    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class InterruptedData(_Data, frozen=True, kw_only=True):
    interrupted_at: _Aware
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class EndedV1Data(_Data, frozen=True, kw_only=True):
    ended_at: _Aware
    completed: bool
    interruptions: _Count | None = None


class EndedData(_Data, frozen=True, kw_only=True):
    ended_at: _Aware
    outcome: Literal["completed", "abandoned", "cancelled"]
    reported_interruptions: _Count | None = None
    focus_quality: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None

    @property
    def completed(self) -> bool:
        return self.outcome == "completed"


class _Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False, kw_only=True,
                tag_field="type"):
    specversion: Literal["1.0"] = "1.0"
    id: UUID
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    time: _Aware
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"


class Started(_Envelope, frozen=True, kw_only=True, tag=STARTED_V1):
    data: StartedData


class Interrupted(_Envelope, frozen=True, kw_only=True, tag=INTERRUPTED_V1):
    data: InterruptedData


class _EndedV1(_Envelope, frozen=True, kw_only=True, tag=ENDED_V1):
    data: EndedV1Data


class Ended(_Envelope, frozen=True, kw_only=True, tag=ENDED_V2):
    data: EndedData


WireEvent = Started | Interrupted | Ended
#: What the fold takes: a contract event (rebuilt from PostgreSQL, or decoded by pydantic)
#: or its mirror (decoded here).
AnyEvent = Event | WireEvent
Kind = Literal["started", "interrupted", "ended"]
#: Each event class's kind, by exact type (either decoder's class). The fold asks for every
#: event's kind, and ``isinstance`` against a pydantic model class goes through
#: ``ABCMeta.__instancecheck__``: ~0.35 µs when it fails, against ~0.05 µs for this look-up.
#: Hot callers write ``KINDS.get(type(event)) or kind_of(event)``, sparing a call.
KINDS: dict[type, Kind] = {
    Started: "started", Interrupted: "interrupted", Ended: "ended",
    StartedEvent: "started", InterruptedEvent: "interrupted", EndedEvent: "ended",
}


def kind_of(event: AnyEvent) -> Kind:
    """``"started"``, ``"interrupted"`` or ``"ended"`` (subclasses too, the slow way)."""
    found = KINDS.get(type(event))
    if found is not None:
        return found
    for cls, kind in KINDS.items():
        if isinstance(event, cls):
            return kind
    raise TypeError(f"not an event: {type(event).__name__}")

_decoder = msgspec.json.Decoder(Started | Interrupted | _EndedV1 | Ended)
#: More than six fractional digits: msgspec rounds them to the microsecond, pydantic truncates.
#: (Anywhere in the bytes, so a reason text can trigger it too; the fallback is only slower.)
_SUB_MICROSECOND = re.compile(rb"\.[0-9]{7}")


#: Recently seen sessions, by ``UUID.int``: ``str(session_id)`` and the session id itself.
#: The subject must be exactly that string, and a session's events come close together in the
#: log, so its later events pay a dict look-up instead of formatting the id again. Bounded:
#: cleared when full. (See :func:`_share`.)
_SESSIONS: dict[int, tuple[str, UUID]] = {}
#: Recently seen ``source`` strings, each kept as one object. Bounded likewise.
_STRINGS: dict[str, str] = {}
#: The contract's user id pattern. pydantic's patterns are Rust regexes, where ``$`` is the end
#: of the text; in Python's ``re`` it also matches before a final newline: ``\Z`` keeps them
#: equal. Checked here, not by msgspec: ``Meta(pattern=...)`` runs the regex for every event
#: (~0.6 µs, a fifth of decoding), yet a log repeats its users, so :data:`_USERS` remembers
#: the ids found valid (kept as one object each, like :data:`_STRINGS`).
_USER_ID = re.compile(USER_ID_PATTERN.removesuffix("$") + r"\Z")
_USERS: dict[str, str] = {}
_CACHE_MAX = 1 << 15
#: Years whose every time lies in the contract's range whatever its UTC offset: a time in one
#: is accepted here with two integer comparisons; any other goes to the contract to decide.
_FIRST_SAFE_YEAR, _LAST_SAFE_YEAR = EARLIEST.year + 1, LATEST.year - 2


def decode_message(key: bytes | None, value: bytes | None) -> AnyEvent:
    """:func:`focus_sessions.contracts.codec.decode_message`, answered by msgspec when it can."""
    if not value or _SUB_MICROSECOND.search(value) or (b"\\" in value and b"\\u" in value):
        # a \u escape can spell such a fraction too ("\u002e9999995"); ``b"\\" in`` is a
        # memchr, and guards the slower two-byte search
        return contract_decode(key, value)
    try:
        event: Started | Interrupted | _EndedV1 | Ended = _decoder.decode(value)
    except msgspec.MsgspecError:
        return contract_decode(key, value)  # invalid, or valid only in pydantic's lax mode
    data = event.data
    zone = None
    if type(data) is StartedData:
        at, zone = data.started_at, data.time_zone
    elif type(data) is InterruptedData:
        at = data.interrupted_at
    else:
        at = cast("EndedData | EndedV1Data", data).ended_at
    if not (_FIRST_SAFE_YEAR <= at.year <= _LAST_SAFE_YEAR
            and _FIRST_SAFE_YEAR <= event.time.year <= _LAST_SAFE_YEAR):
        return contract_decode(key, value)  # the contract decides the range's edges
    if zone is not None:
        try:
            known_zone(zone)
        except ValueError:
            return contract_decode(key, value)  # the contract says why
    user = _USERS.get(data.user_id)
    if user is None:
        if not _USER_ID.search(data.user_id):
            return contract_decode(key, value)  # the contract says why
        user = _kept(_USERS, data.user_id)
    sid = data.session_id
    session = _SESSIONS.get(sid.int)
    if session is None:
        if len(_SESSIONS) >= _CACHE_MAX:
            _SESSIONS.clear()
        # msgspec writes the canonical form, str(sid)'s, in C: 0.19 µs against 0.66
        session = _SESSIONS[sid.int] = (msgspec.to_builtins(sid), sid)
    if event.subject != session[0] or (key is not None and key != data.user_id.encode()):
        check_message(key, event.subject, sid, data.user_id)  # raises, saying which
    _share(event, data, session, user)
    if type(event) is _EndedV1:  # the contract's upcaster, onto the mirror's v2
        return Ended(id=event.id, source=event.source, time=event.time, subject=event.subject,
                     data=upcast_ended_data(event.data, EndedData))
    return cast(WireEvent, event)


def _share(event: WireEvent | _EndedV1, data: _Data, session: tuple[str, UUID],
           user: str) -> None:
    """Point the event's repeated values at one shared object each (equal values: nothing a
    reader can see changes). Decoding makes new strings and UUIDs for every event, yet a log
    repeats them: the session's id and subject on each of its events, the user and the source
    on many. A replay holds every event of the log in memory at once: sharing takes ~40 % off
    an event's bytes there (docs/replay.md has the figures)."""
    force_setattr(event, "subject", session[0])
    force_setattr(data, "session_id", session[1])
    force_setattr(event, "source", _kept(_STRINGS, event.source))
    force_setattr(data, "user_id", user)


def _kept(cache: dict[str, str], text: str) -> str:
    """The one object ``cache`` keeps equal to ``text`` (``text`` itself when first seen)."""
    found = cache.get(text)
    if found is None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        found = cache[text] = text
    return found


def encode(event: AnyEvent) -> bytes:
    """CloudEvents structured JSON of either kind of event (as
    :func:`focus_sessions.contracts.codec.encode`)."""
    if isinstance(event, Started | Interrupted | Ended):
        return msgspec.json.encode(event)
    return contract_encode(event)

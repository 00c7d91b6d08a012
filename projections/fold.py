"""The pure fold: a session's events in, its read-model row and each event's status out.

A session's state is the *set* of its events (deduplicated by event id). Everything else — the
``focus_sessions`` row, which end wins, what is held or contradictory — is derived from that set
by :func:`derive`, so any arrival order of the same events gives the same result (guarantee 2).
No I/O, no clock, no settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple, cast
from uuid import UUID

from focus_sessions.contracts.events import MAX_SESSION, EndedEvent, InterruptedEvent, StartedEvent
from focus_sessions.projections.wire import KINDS, AnyEvent, Ended, Interrupted, Started, kind_of

_MICROS = Decimal(1_000_000)
_LONGEST = f"{MAX_SESSION.total_seconds() / 3600:g} h"


class Status(StrEnum):
    APPLIED = "applied"  # counts in the row and rollups
    HELD = "held"  # waiting for the session's start
    SUPERSEDED = "superseded"  # a valid end that lost to an earlier one, or a later start
    CONTRADICTION = "contradiction"  # cannot be true given the session's start/end


#: The members as module globals, for :func:`derive`: ``Status.APPLIED`` goes through the enum
#: class (~0.1 µs), a global is a dict look-up, and a session sets five statuses or so.
_APPLIED, _HELD, _SUPERSEDED, _CONTRADICTION = (
    Status.APPLIED, Status.HELD, Status.SUPERSEDED, Status.CONTRADICTION)


#: Events are keyed by their id's 128-bit integer (``UUID.int``), not by the UUID:
#: ``UUID.__hash__`` is Python code, and the fold hashes every event id several times.
EventKey = int


@dataclass(frozen=True, slots=True)
class History:
    """Everything known about one session: its events, by event id (the dedupe key)."""

    events: dict[EventKey, AnyEvent] = field(default_factory=dict)

    def __contains__(self, event_id: UUID) -> bool:
        return event_id.int in self.events

    def __len__(self) -> int:
        return len(self.events)


def apply(history: History, event: AnyEvent) -> History:
    """Add one event to a session's history. A known event id changes nothing (dedupe)."""
    return extend(history, [event])[0]


def extend(history: History, events: Iterable[AnyEvent]) -> tuple[History, int]:
    """Add many events at once (one copy); return the new history and how many were known."""
    new = dict(history.events)
    known = 0
    for event in events:
        size = len(new)
        new.setdefault(event.id.int, event)
        if len(new) == size:
            known += 1
    return History(new), known


def fact(event: AnyEvent) -> tuple[object, ...]:
    """What an event says, for telling a duplicate from a conflict: its kind and its data (the
    newest version's fields; the envelope's ``time`` and ``source`` say when and who sent it,
    not what happened). Two events with one id and equal facts are one event delivered twice."""
    d = event.data
    kind = KINDS.get(type(event)) or kind_of(event)
    if kind == "started":
        s = cast("StartedEvent | Started", event).data
        return (kind, s.session_id, s.user_id, s.step_id, s.duration_minutes, s.started_at,
                s.time_zone)
    if kind == "interrupted":
        i = cast("InterruptedEvent | Interrupted", event).data
        return (kind, i.session_id, i.user_id, i.interrupted_at, i.reason)
    e = cast("EndedEvent | Ended", event).data
    return (kind, d.session_id, d.user_id, e.ended_at, e.outcome, e.reported_interruptions,
            e.focus_quality)


def conflict(known: AnyEvent, event: AnyEvent) -> str | None:
    """Why ``event`` cannot be the event ``known`` with the same id, or None if it is."""
    if fact(known) == fact(event):
        return None
    return (f"event id {event.id} already names another {kind_of(known)} event of session "
            f"{known.data.session_id} with different content; an event id names one fact")


class SessionRow(NamedTuple):
    """One row of ``focus_sessions`` (columns in table order): a pure function of the history.

    A NamedTuple rather than a frozen dataclass: it is built for every session of every batch,
    and tuple construction is several times cheaper.
    """

    session_id: UUID
    user_id: str
    step_id: UUID | None
    started_at: datetime
    ended_at: datetime | None
    duration_minutes: int
    completed: bool
    interruptions: int
    created_at: datetime
    focus_seconds: Decimal | None
    outcome: str | None
    focus_quality: int | None
    interruption_events: int
    reported_interruptions: int | None
    time_zone: str | None
    start_event_id: UUID
    end_event_id: UUID | None


class Derived(NamedTuple):  # built once or twice per session of every batch
    row: SessionRow | None
    #: Every event's status, by :data:`EventKey`.
    status: dict[EventKey, Status]
    #: Human-readable reason per contradicting event, by :data:`EventKey`.
    reasons: dict[EventKey, str]


def derive(history: History) -> Derived:
    """The row and every event's status, decided only by the events' content."""
    status: dict[EventKey, Status] = {}
    reasons: dict[EventKey, str] = {}
    starts: list[StartedEvent | Started] = []
    ends: list[EndedEvent | Ended] = []
    interruptions: list[InterruptedEvent | Interrupted] = []
    for event in history.events.values():
        kind = KINDS.get(type(event)) or kind_of(event)
        if kind == "started":
            starts.append(cast("StartedEvent | Started", event))
        elif kind == "ended":
            ends.append(cast("EndedEvent | Ended", event))
        else:
            interruptions.append(cast("InterruptedEvent | Interrupted", event))
    if not starts:
        return Derived(None, dict.fromkeys(history.events, _HELD), reasons)

    # Conflicts are settled by content, never arrival: the earliest start and the earliest
    # valid end win (ties: the smaller event id); the others are superseded.
    start = min(starts, key=_start_order) if len(starts) > 1 else starts[0]
    for other in starts:
        status[other.id.int] = _SUPERSEDED
    status[start.id.int] = _APPLIED
    user, t0 = start.data.user_id, start.data.started_at
    latest = t0 + MAX_SESSION  # the longest a session lasts (contracts.events.MAX_SESSION)

    valid_ends: list[EndedEvent | Ended] = []
    for end in ends:
        if end.data.user_id != user:
            _contradicts(status, reasons, end,
                         f"user_id {end.data.user_id!r} differs from the start's {user!r}")
        elif end.data.ended_at < t0:
            _contradicts(status, reasons, end, f"ended_at {end.data.ended_at.isoformat()} is "
                         f"before started_at {t0.isoformat()}")
        elif end.data.ended_at > latest:
            _contradicts(status, reasons, end, f"ended_at {end.data.ended_at.isoformat()} is "
                         f"more than {_LONGEST} after started_at {t0.isoformat()}")
        else:
            valid_ends.append(end)
    winner = (min(valid_ends, key=_end_order) if len(valid_ends) > 1
              else valid_ends[0] if valid_ends else None)
    for end in valid_ends:
        status[end.id.int] = _APPLIED if end is winner else _SUPERSEDED

    t1 = winner.data.ended_at if winner else None
    counted = 0
    for interruption in interruptions:
        at = interruption.data.interrupted_at
        if interruption.data.user_id != user:
            _contradicts(status, reasons, interruption, f"user_id "
                         f"{interruption.data.user_id!r} differs from the start's {user!r}")
        elif at < t0 or at > (latest if t1 is None else t1):
            _contradicts(status, reasons, interruption, f"interrupted_at {at.isoformat()} is "
                         f"outside the session [{t0.isoformat()}, "
                         f"{t1.isoformat() if t1 else f'open, at most {_LONGEST}'}]")
        else:
            status[interruption.id.int] = _APPLIED
            counted += 1

    reported = winner.data.reported_interruptions if winner else None
    # positional, in column order: 17 keyword arguments cost ~1.2 µs more per session
    row = SessionRow._make((
        start.data.session_id,
        user,
        start.data.step_id,
        t0,  # started_at
        t1,  # ended_at
        start.data.duration_minutes,
        bool(winner and winner.data.outcome == "completed"),  # completed
        max(counted, reported or 0),  # interruptions
        start.time,  # created_at
        _seconds(t1 - t0) if t1 is not None else None,  # focus_seconds
        winner.data.outcome if winner else None,
        winner.data.focus_quality if winner else None,
        counted,  # interruption_events
        reported,  # reported_interruptions
        start.data.time_zone,
        start.id,  # start_event_id
        winner.id if winner else None,  # end_event_id
    ))
    return Derived(row, status, reasons)


def _contradicts(status: dict[EventKey, Status], reasons: dict[EventKey, str], event: AnyEvent,
                 why: str) -> None:
    # not a closure inside derive: closing over status would slow every access to it there
    status[event.id.int] = _CONTRADICTION
    reasons[event.id.int] = why


def _seconds(delta: timedelta) -> Decimal:
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(micros) / _MICROS


def _start_order(event: StartedEvent | Started) -> tuple[datetime, UUID]:
    return event.data.started_at, event.id


def _end_order(event: EndedEvent | Ended) -> tuple[datetime, UUID]:
    return event.data.ended_at, event.id

"""Replay's fold: the whole log into empty shadow tables, with every history kept in memory.

The live projector reads each touched session's history back from PostgreSQL per batch; a replay
into *empty* tables never needs to, so it keeps histories in memory and derives every row once at
the end, with :func:`focus_sessions.projections.fold.derive` — the same function the live projector
uses, so
replay and live agree by construction (guarantee 5). Per-user and weekly rollups are sums of
per-session contributions (:mod:`focus_sessions.projections.rollups`,
:mod:`focus_sessions.projections.weekly`). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from focus_sessions.projections import weekly
from focus_sessions.projections.fold import EventKey, History, SessionRow, conflict, derive
from focus_sessions.projections.rollups import UserDelta
from focus_sessions.projections.wire import AnyEvent

#: ``(event, partition, offset)``: an accepted event and where the log first held it.
Placed = tuple[AnyEvent, int, int]


@dataclass(slots=True)
class _Session:
    history: History = field(default_factory=History)
    #: Where each event was first seen, ``(partition, offset)``, in the order of
    #: ``history.events`` (events are only ever added, and a dict keeps insertion order).
    where: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class Rollups:
    """Per-user totals and weekly buckets: sums, so partial results from workers just add."""

    users: dict[str, UserDelta] = field(default_factory=dict)
    weeks: dict[weekly.WeekKey, weekly.WeekDelta] = field(default_factory=dict)

    def add_row(self, row: SessionRow) -> None:
        user = self.users.get(row.user_id)
        if user is None:
            user = self.users[row.user_id] = UserDelta()
        user.add(None, row)
        found = weekly.contribution(row)
        if found is not None:
            key, add = found
            self.weeks[key] = self.weeks[key] + add if key in self.weeks else add

    def take_users(self, users: Iterable[str]) -> Rollups:
        """Remove and return the totals and weeks of ``users`` (absent users are skipped)."""
        wanted = set(users) & self.users.keys()
        taken = Rollups(users={u: self.users.pop(u) for u in wanted})
        if wanted:
            taken.weeks = {k: w for k, w in self.weeks.items() if k[0] in wanted}
            for key in taken.weeks:
                del self.weeks[key]
        return taken

    def merge(self, other: Rollups) -> None:
        for user, change in other.users.items():
            mine = self.users.get(user)
            self.users[user] = change if mine is None else _sum(mine, change)
        weekly.accumulate(self.weeks, other.weeks)

    def user_records(self) -> Iterator[tuple[Any, ...]]:
        """Rows of ``focus_user_stats``, in its column order."""
        for user in sorted(self.users):
            d = self.users[user]
            yield (user, d.sessions_started, d.sessions_ended, d.sessions_completed,
                   d.focus_seconds, d.planned_minutes, d.interruptions, d.last_session_at)

    def week_records(self) -> Iterator[tuple[str, Any, int, int, Decimal]]:
        """Rows of ``focus_user_weekly``, in its column order."""
        for key in sorted(self.weeks):
            w = self.weeks[key]
            yield (key[0], key[1], w.sessions_ended, w.sessions_completed, w.focus_seconds)


def _sum(a: UserDelta, b: UserDelta) -> UserDelta:
    last = a.last_session_at
    if last is None or (b.last_session_at is not None and b.last_session_at > last):
        last = b.last_session_at
    return UserDelta(
        a.sessions_started + b.sessions_started, a.sessions_ended + b.sessions_ended,
        a.sessions_completed + b.sessions_completed, a.focus_seconds + b.focus_seconds,
        a.planned_minutes + b.planned_minutes, a.interruptions + b.interruptions, last,
    )


#: A session, by its id's 128-bit integer (``UUID.int``): ``UUID.__hash__`` is Python code,
#: and every event of the log looks its session up.
SessionKey = int


class ShadowState:
    """Every session's history so far. ``add`` is the hot path: no copy, no derive."""

    def __init__(self) -> None:
        self.sessions: dict[SessionKey, _Session] = {}
        #: Every user id an accepted event named (whose rollups this state may contribute to).
        self.users: set[str] = set()
        self.events = 0
        self.duplicates = 0
        #: Events refused because their id already named another fact of their session (the
        #: live projector dead-letters them as contradictions).
        self.conflicts = 0

    def add(self, event: AnyEvent, partition: int, offset: int) -> bool:
        """Remember one event; ``False`` for an event id the session already has: a duplicate,
        or a conflict (another fact under a known id:
        :func:`focus_sessions.projections.fold.conflict`)."""
        sid = event.data.session_id.int
        session = self.sessions.get(sid)
        if session is None:
            session = self.sessions[sid] = _Session()
        key = event.id.int  # an EventKey, as in projections.fold
        events = session.history.events
        known = events.get(key)
        if known is not None:
            if conflict(known, event) is None:
                self.duplicates += 1
            else:
                self.conflicts += 1
            return False
        events[key] = event
        session.where.append((partition, offset))
        self.users.add(event.data.user_id)
        self.events += 1
        return True

    def session_ids(self) -> list[SessionKey]:
        return list(self.sessions)

    def take(self, session_ids: Iterable[SessionKey]) -> list[Placed]:
        """Remove the given sessions and return their events (to be folded elsewhere)."""
        placed: list[Placed] = []
        for sid in session_ids:
            session = self.sessions.pop(sid, None)
            if session is not None:
                placed.extend((e, p, o) for e, (p, o)
                              in zip(session.history.events.values(), session.where, strict=True))
        return placed

    def derive_all(self) -> Iterator[tuple[_Session, SessionRow | None, dict[EventKey, Any]]]:
        for session in self.sessions.values():
            derived = derive(session.history)
            yield session, derived.row, derived.status


@dataclass(slots=True)
class Output:
    """What the shadow tables receive: records in table column order, and the rollups."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    rollups: Rollups = field(default_factory=Rollups)


def build(
    state: ShadowState, event_record: Any, session_record: Any,
    sink: Callable[[tuple[Any, ...]], Any] | None = None,
) -> Output:
    """Derive every session once and lay out the records for bulk loading.

    ``event_record``/``session_record`` are the repository's row layouts, passed in so the
    shadow's rows are exactly what the live projector writes. Event records go to ``sink``
    as they are made when given (a COPY in progress), else to ``Output.events``.
    """
    out = Output()
    sessions, rollups = out.sessions, out.rollups
    emit = sink or out.events.append
    for session, row, status in state.derive_all():
        for (key, event), (partition, offset) in zip(session.history.events.items(),
                                                     session.where, strict=True):
            emit(event_record(event, status[key], partition, offset))
        if row is not None:
            sessions.append(session_record(row))
            rollups.add_row(row)
    return out


def state_of(placed: Iterable[Placed]) -> ShadowState:
    """A fresh state holding ``placed`` (for sessions that spanned several workers)."""
    state = ShadowState()
    for event, partition, offset in placed:
        state.add(event, partition, offset)
    return state

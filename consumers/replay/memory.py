"""Replay's fold: the whole log into empty shadow tables, with every history kept in memory.

The live projector reads each touched session's history back from PostgreSQL per batch; a replay
into *empty* tables never needs to, so it keeps histories in memory and derives every row once at
the end, with :func:`focus_sessions.projections.fold.derive` — the same function the live
projector uses, so replay and live agree by construction (guarantee 5). The rollups are sums of
per-session contributions (every rollup of :mod:`focus_sessions.projections.readmodels`). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from focus_sessions.projections.fold import EventKey, History, SessionRow, conflict, derive
from focus_sessions.projections.readmodels import ROLLUPS, Rollup
from focus_sessions.projections.readmodels.base import Sums
from focus_sessions.projections.wire import KINDS, AnyEvent, kind_of


@dataclass(slots=True)
class HeldSession:
    history: History = field(default_factory=History)
    #: Where each event was first seen, ``(partition, offset)``, in the order of
    #: ``history.events`` (events are only ever added, and a dict keeps insertion order).
    where: list[tuple[int, int]] = field(default_factory=list)
    #: Kept in memory over a flush once already (a bulk worker carries an open session over
    #: one flush at most).
    carried: bool = False


@dataclass(slots=True)
class Rollups:
    """Every rollup's sums (:data:`focus_sessions.projections.readmodels.ROLLUPS`), by name:
    sums, so partial results from workers just add."""

    sums: dict[str, Sums] = field(default_factory=lambda: {r.name: {} for r in ROLLUPS})

    def add_row(self, row: SessionRow) -> None:
        sums = self.sums
        for rollup in ROLLUPS:
            rollup.add(sums[rollup.name], row)

    def merge(self, other: Rollups) -> None:
        for rollup in ROLLUPS:
            rollup.merge(self.sums[rollup.name], other.sums[rollup.name])

    def records(self, rollup: Rollup) -> Iterator[tuple[Any, ...]]:
        """Rows of the rollup's first table, in its column order."""
        return rollup.records(self.sums[rollup.name])


#: A session, by its id's 128-bit integer (``UUID.int``): ``UUID.__hash__`` is Python code,
#: and every event of the log looks its session up.
SessionKey = int


class ShadowState:
    """Every session's history so far. ``add`` is the hot path: no copy, no derive."""

    def __init__(self) -> None:
        self.sessions: dict[SessionKey, HeldSession] = {}
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
            session = self.sessions[sid] = HeldSession()
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
        self.events += 1
        return True

    def take_open(self) -> ShadowState:
        """Remove and return the open sessions — no start or no end yet — that were not carried
        before (counts stay here: they counted the events when they came)."""
        kept = ShadowState()
        for sid, session in list(self.sessions.items()):
            if session.carried:
                continue
            kinds = {KINDS.get(type(e)) or kind_of(e) for e in session.history.events.values()}
            if "started" not in kinds or "ended" not in kinds:
                session.carried = True
                kept.sessions[sid] = self.sessions.pop(sid)
        return kept

    def held(self) -> int:
        return sum(len(s.where) for s in self.sessions.values())

    def drain(self) -> Iterator[tuple[HeldSession, SessionRow | None, dict[EventKey, Any]]]:
        """Every session derived, each removed from the state as it is yielded (its memory is
        free for what the caller builds from it)."""
        sessions = self.sessions
        while sessions:
            _, session = sessions.popitem()
            derived = derive(session.history)
            yield session, derived.row, derived.status

    def derive_all(self) -> Iterator[tuple[HeldSession, SessionRow | None, dict[EventKey, Any]]]:
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

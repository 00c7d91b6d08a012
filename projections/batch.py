"""Turn one batch of located events into the writes that project it (still pure).

The consumer hands in the events of a batch and the prior histories of the sessions they touch;
:func:`plan` returns exactly what the repository must write in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from contracts.events import Event
from projections.fold import Derived, History, SessionRow, Status, derive, extend
from projections.rollups import UserDelta
from projections.weekly import WeekDelta, WeekKey
from projections.weekly import accumulate as add_weeks
from projections.weekly import delta as week_delta


@dataclass(frozen=True, slots=True)
class Located:
    """An event with where it came from in the log (and its bytes, for dead letters)."""

    event: Event
    partition: int
    offset: int
    raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    located: Located
    status: Status


@dataclass(frozen=True, slots=True)
class Contradiction:
    """An event that just became contradictory: it goes to the dead-letter topic."""

    event: Event
    reason: str
    located: Located | None  # None when the event was stored by an earlier batch


@dataclass(slots=True)
class Plan:
    new_events: list[NewEvent] = field(default_factory=list)
    status_changes: list[tuple[UUID, UUID, Status]] = field(default_factory=list)
    rows: list[SessionRow] = field(default_factory=list)
    deltas: dict[str, UserDelta] = field(default_factory=dict)
    weekly: dict[WeekKey, WeekDelta] = field(default_factory=dict)
    contradictions: list[Contradiction] = field(default_factory=list)
    histories: dict[UUID, History] = field(default_factory=dict)
    duplicates: int = 0


def plan(prior: Mapping[UUID, History], batch: Iterable[Located]) -> Plan:
    """Fold a batch into the prior histories; return the writes and the new histories."""
    result = Plan()
    by_session: dict[UUID, list[Event]] = {}
    located_by_id: dict[UUID, Located] = {}
    for item in batch:
        located_by_id.setdefault(item.event.id, item)  # a duplicate in the batch keeps the first
        by_session.setdefault(item.event.data.session_id, []).append(item.event)

    empty = History()
    for sid, events in by_session.items():
        before = prior.get(sid)
        new_history, known = extend(before or empty, events)
        result.duplicates += known
        old = derive(before) if before is not None else _NOTHING
        new = derive(new_history)
        result.histories[sid] = new_history
        _diff(sid, old, new, new_history, located_by_id, result)
    return result


def _diff(
    sid: UUID,
    old: Derived,
    new: Derived,
    history: History,
    located_by_id: Mapping[UUID, Located],
    out: Plan,
) -> None:
    before = old.status
    for event_id, status in new.status.items():
        was = before.get(event_id) if before else None
        if was is None:  # first seen in this batch
            out.new_events.append(NewEvent(located_by_id[event_id], status))
        elif status != was:
            out.status_changes.append((sid, event_id, status))
        if status is Status.CONTRADICTION and was is not Status.CONTRADICTION:
            located = located_by_id.get(event_id) if was is None else None
            event = located.event if located else _find(history, event_id)
            out.contradictions.append(Contradiction(event, new.reasons[event_id], located))
    if new.row != old.row:
        assert new.row is not None  # a session never loses its start
        out.rows.append(new.row)
        user = new.row.user_id
        if user not in out.deltas:
            out.deltas[user] = UserDelta()
        out.deltas[user].add(old.row, new.row)
        add_weeks(out.weekly, week_delta(old.row, new.row))


def _find(history: History, event_id: UUID) -> Event:
    return history.events[event_id]


_NOTHING = Derived(None, {}, {})

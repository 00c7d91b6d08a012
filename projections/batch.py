"""Turn one batch of located events into the writes that project it (still pure).

The consumer hands in the events of a batch and the prior histories of the sessions they touch;
:func:`plan` returns exactly what the repository must write in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from contracts.events import Event
from projections.fold import Derived, History, SessionRow, Status, apply, derive
from projections.rollups import UserDelta, delta


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
    contradictions: list[Contradiction] = field(default_factory=list)
    histories: dict[UUID, History] = field(default_factory=dict)
    duplicates: int = 0


def session_key(event: Event) -> UUID:
    return event.data.session_id


def plan(prior: Mapping[UUID, History], batch: Iterable[Located]) -> Plan:
    """Fold a batch into the prior histories; return the writes and the new histories."""
    result = Plan()
    touched: dict[UUID, History] = {}
    located_by_id: dict[UUID, Located] = {}
    for item in batch:
        sid = session_key(item.event)
        history = touched.get(sid) or prior.get(sid) or History()
        if item.event.id in history:
            result.duplicates += 1
            continue
        touched[sid] = apply(history, item.event)
        located_by_id[item.event.id] = item

    for sid, new_history in touched.items():
        old = derive(prior[sid]) if sid in prior else Derived(None, {}, {})
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
    for event in history.events():
        status = new.status[event.id]
        was = old.status.get(event.id)
        located = located_by_id.get(event.id)
        if located is not None:
            out.new_events.append(NewEvent(located, status))
        elif status != was:
            out.status_changes.append((sid, event.id, status))
        if status is Status.CONTRADICTION and was is not Status.CONTRADICTION:
            out.contradictions.append(Contradiction(event, new.reasons[event.id], located))
    if new.row != old.row:
        assert new.row is not None  # a session never loses its start
        out.rows.append(new.row)
        change = delta(old.row, new.row)
        user = new.row.user_id
        out.deltas[user] = out.deltas[user] + change if user in out.deltas else change

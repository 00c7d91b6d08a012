"""Turn one batch of located events into the writes that project it (still pure).

The consumer hands in the events of a batch and the prior histories of the sessions they touch;
:func:`plan` returns exactly what the repository must write in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from uuid import UUID

from focus_sessions.projections.fold import (
    Derived,
    EventKey,
    History,
    SessionRow,
    Status,
    conflict,
    derive,
)
from focus_sessions.projections.readmodels import ROLLUPS, user_totals
from focus_sessions.projections.readmodels.base import Sums
from focus_sessions.projections.wire import AnyEvent


class Located(NamedTuple):
    """An event with where it came from in the log (and its bytes, for dead letters).

    A NamedTuple: one is built per event on the projector's hot path."""

    event: AnyEvent
    partition: int
    offset: int
    raw: bytes | None = None


class NewEvent(NamedTuple):  # one per event: a tuple is the cheapest record to build
    located: Located
    status: Status


@dataclass(frozen=True, slots=True)
class Contradiction:
    """An event that just became contradictory: it goes to the dead-letter topic."""

    event: AnyEvent
    reason: str
    located: Located | None  # None when the event was stored by an earlier batch


@dataclass(slots=True)
class Plan:
    new_events: list[NewEvent] = field(default_factory=list)
    status_changes: list[tuple[UUID, UUID, Status]] = field(default_factory=list)
    #: Rows of sessions that had none before this batch (their start is new)...
    new_rows: list[SessionRow] = field(default_factory=list)
    #: ... and rows that replace an existing one.
    changed_rows: list[SessionRow] = field(default_factory=list)
    #: Each rollup's deltas (:data:`focus_sessions.projections.readmodels.ROLLUPS`), by name.
    rollups: dict[str, Sums] = field(default_factory=lambda: {r.name: {} for r in ROLLUPS})
    contradictions: list[Contradiction] = field(default_factory=list)
    histories: dict[UUID, History] = field(default_factory=dict)
    duplicates: int = 0

    @property
    def rows(self) -> list[SessionRow]:
        """Every row this batch writes, new or changed."""
        return self.new_rows + self.changed_rows

    @property
    def users(self) -> list[str]:
        """The users whose rows this batch changes (every row change moves their totals)."""
        return list(self.rollups[user_totals.MODEL.name])


def session_ids(batch: Iterable[Located]) -> list[UUID]:
    """The distinct sessions a batch touches (deduplicated by ``UUID.int``: see EventKey)."""
    return list({(sid := item.event.data.session_id).int: sid for item in batch}.values())


def plan(prior: Mapping[UUID, History], batch: Iterable[Located]) -> Plan:
    """Fold a batch into the prior histories; return the writes and the new histories.

    An event id the session already knows is settled by content: the same fact again is a
    duplicate (ignored); another fact under that id is a contradiction (dead-lettered, never
    stored). Event ids are settled per session: one id in two sessions is two events."""
    result = Plan()
    by_session: dict[int, list[Located]] = {}  # by UUID.int, as events are (see EventKey)
    for item in batch:
        by_session.setdefault(item.event.data.session_id.int, []).append(item)

    for items in by_session.values():
        sid = items[0].event.data.session_id
        before = prior.get(sid)
        events = dict(before.events) if before is not None else {}
        located_by_id: dict[EventKey, Located] = {}
        for item in items:
            event = item.event
            key = event.id.int
            known = events.get(key)
            if known is None:
                events[key] = event
                located_by_id[key] = item
            elif (why := conflict(known, event)) is None:
                result.duplicates += 1
            else:
                result.contradictions.append(Contradiction(event, why, item))
        new_history = History(events)
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
    located_by_id: Mapping[EventKey, Located],
    out: Plan,
) -> None:
    before = old.status
    for key, status in new.status.items():
        was = before.get(key) if before else None
        if was is None:  # first seen in this batch
            out.new_events.append(NewEvent(located_by_id[key], status))
        elif status != was:
            out.status_changes.append((sid, history.events[key].id, status))
        if status is Status.CONTRADICTION and was is not Status.CONTRADICTION:
            located = located_by_id.get(key) if was is None else None
            event = located.event if located else history.events[key]
            out.contradictions.append(Contradiction(event, new.reasons[key], located))
    if new.row != old.row:
        assert new.row is not None  # a session never loses its start
        (out.new_rows if old.row is None else out.changed_rows).append(new.row)
        sums = out.rollups
        for rollup in ROLLUPS:
            rollup.change(sums[rollup.name], old.row, new.row)


_NOTHING = Derived(None, {}, {})

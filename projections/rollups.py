"""Per-user rollups as sums of per-session contributions, so they update by deltas.

A rollup is ``sum(contribution(row) for row in the user's sessions)``; when a session's row
changes from ``old`` to ``new`` the rollup changes by ``contribution(new) - contribution(old)``.
That keeps every rollup equal to its recomputation from ``focus_sessions`` at every commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from projections.fold import SessionRow

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class UserDelta:
    sessions_started: int = 0
    sessions_ended: int = 0
    sessions_completed: int = 0
    focus_seconds: Decimal = _ZERO
    planned_minutes: int = 0
    interruptions: int = 0
    #: Newest start seen in the batch; ``last_session_at`` only grows ...
    last_session_at: datetime | None = None
    #: ... unless a session's start moved earlier (an earlier duplicate start arrived); then
    #: the maximum must be recomputed from the table.
    recompute_last: bool = False

    def __add__(self, other: UserDelta) -> UserDelta:
        return UserDelta(
            self.sessions_started + other.sessions_started,
            self.sessions_ended + other.sessions_ended,
            self.sessions_completed + other.sessions_completed,
            self.focus_seconds + other.focus_seconds,
            self.planned_minutes + other.planned_minutes,
            self.interruptions + other.interruptions,
            _latest(self.last_session_at, other.last_session_at),
            self.recompute_last or other.recompute_last,
        )


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def delta(old: SessionRow | None, new: SessionRow | None) -> UserDelta:
    """How one session's change moves its user's rollup."""
    before, after = _contribution(old), _contribution(new)
    moved_earlier = (
        old is not None and new is not None and new.started_at < old.started_at
    )
    return UserDelta(
        after.sessions_started - before.sessions_started,
        after.sessions_ended - before.sessions_ended,
        after.sessions_completed - before.sessions_completed,
        after.focus_seconds - before.focus_seconds,
        after.planned_minutes - before.planned_minutes,
        after.interruptions - before.interruptions,
        new.started_at if new is not None else None,
        moved_earlier,
    )


def _contribution(row: SessionRow | None) -> UserDelta:
    if row is None:
        return UserDelta()
    ended = row.ended_at is not None
    return UserDelta(
        sessions_started=1,
        sessions_ended=int(ended),
        sessions_completed=int(ended and row.completed),
        focus_seconds=row.focus_seconds or _ZERO,
        planned_minutes=row.duration_minutes,
        interruptions=row.interruptions,
    )

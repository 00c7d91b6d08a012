"""Per-user rollups as sums of per-session contributions, so they update by deltas.

A rollup is ``sum(contribution(row) for row in the user's sessions)``; when a session's row
changes from ``old`` to ``new`` the rollup changes by ``contribution(new) - contribution(old)``.
That keeps every rollup equal to its recomputation from ``focus_sessions`` at every commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from focus_sessions.projections.fold import SessionRow

_ZERO = Decimal(0)


@dataclass(slots=True)
class UserDelta:
    """How much one batch moves one user's rollup (an accumulator: built, then written)."""

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

    def add(self, old: SessionRow | None, new: SessionRow) -> None:
        """Account for one session whose row changed from ``old`` to ``new``."""
        self._count(new, 1)
        if old is not None:
            self._count(old, -1)
            if new.started_at < old.started_at:
                self.recompute_last = True
        if self.last_session_at is None or new.started_at > self.last_session_at:
            self.last_session_at = new.started_at

    def remove(self, row: SessionRow) -> None:
        """Account for a session that left this user (an earlier start by another user won
        it): its contribution goes, and ``last_session_at`` must be recomputed."""
        self._count(row, -1)
        self.recompute_last = True

    def _count(self, row: SessionRow, sign: int) -> None:
        self.sessions_started += sign
        if row.ended_at is not None:
            self.sessions_ended += sign
            if row.completed:
                self.sessions_completed += sign
            self.focus_seconds += sign * (row.focus_seconds or _ZERO)
        self.planned_minutes += sign * row.duration_minutes
        self.interruptions += sign * row.interruptions


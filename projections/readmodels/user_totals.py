"""Per-user totals (``focus_user_stats``): sums of per-session contributions, kept by deltas.

A user's row is ``sum(contribution(row) for row in the user's sessions)`` plus the newest start
(``last_session_at``); averages and rates are derived at read time. When a session's row changes
from ``old`` to ``new`` the totals change by ``contribution(new) - contribution(old)``, so they
equal their recomputation from ``focus_sessions`` at every commit (guarantee 3). A user whose
last session went to another user (an earlier start by another user won it) has no row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import sql

from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.readmodels.base import Rollup, Sums, Table
from focus_sessions.projections.readmodels.sessions import SESSIONS
from focus_sessions.projections.staging import stage

_ZERO = Decimal(0)

SUMS = (
    "sessions_started", "sessions_ended", "sessions_completed", "total_focus_seconds",
    "total_planned_minutes", "total_interruptions",
)
TABLE = Table(
    "focus_user_stats", ("user_id", *SUMS, "last_session_at"),
    ("varchar", "int8", "int8", "int8", "numeric", "int8", "int8", "timestamptz"),
    key=("user_id",),
)


@dataclass(slots=True)
class UserDelta:
    """How much one batch moves one user's totals (an accumulator: built, then written)."""

    sessions_started: int = 0
    sessions_ended: int = 0
    sessions_completed: int = 0
    focus_seconds: Decimal = _ZERO
    planned_minutes: int = 0
    interruptions: int = 0
    #: Newest start seen in the batch; ``last_session_at`` only grows ...
    last_session_at: datetime | None = None
    #: ... unless a session's start moved earlier (an earlier duplicate start arrived) or a
    #: session left the user; then the maximum must be recomputed from the table.
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

    def __add__(self, b: UserDelta) -> UserDelta:
        last = self.last_session_at
        if last is None or (b.last_session_at is not None and b.last_session_at > last):
            last = b.last_session_at
        return UserDelta(
            self.sessions_started + b.sessions_started, self.sessions_ended + b.sessions_ended,
            self.sessions_completed + b.sessions_completed,
            self.focus_seconds + b.focus_seconds, self.planned_minutes + b.planned_minutes,
            self.interruptions + b.interruptions, last, self.recompute_last or b.recompute_last)


def record(user: str, d: UserDelta) -> tuple[Any, ...]:
    """One user's sums in the table's column order."""
    return (user, d.sessions_started, d.sessions_ended, d.sessions_completed, d.focus_seconds,
            d.planned_minutes, d.interruptions, d.last_session_at)


class UserTotals(Rollup):
    name = "user_totals"
    tables = (TABLE,)
    greatest = ("last_session_at",)

    def change(self, sums: Sums, old: SessionRow | None, new: SessionRow | None) -> None:
        if new is None:
            if old is not None:
                _of(sums, old.user_id).remove(old)
        elif old is not None and old.user_id != new.user_id:
            # an earlier start by another user won the session: it leaves one user's totals
            # and joins the other's
            _of(sums, old.user_id).remove(old)
            _of(sums, new.user_id).add(None, new)
        else:
            _of(sums, new.user_id).add(old, new)

    def add(self, sums: Sums, row: SessionRow) -> None:
        _of(sums, row.user_id).add(None, row)

    def merge(self, into: Sums, other: Sums) -> None:
        for user, change in other.items():
            mine = into.get(user)
            into[user] = change if mine is None else mine + change

    def records(self, sums: Sums) -> Iterator[tuple[Any, ...]]:
        for user in sorted(sums):
            yield record(user, sums[user])

    async def apply(self, cur: Any, schema: str, sums: Sums) -> None:
        """Staged by binary COPY, then one upsert in user order (a stable lock order)."""
        await apply_user_deltas(cur, schema, sums)


async def apply_user_deltas(cur: Any, schema: str, deltas: Mapping[str, UserDelta]) -> None:
    if not deltas:
        return
    users = sorted(deltas)
    table = TABLE.at(schema)
    sums = sql.SQL(", ").join(
        sql.SQL("{c} = {t}.{c} + EXCLUDED.{c}").format(
            c=sql.Identifier(c), t=sql.Identifier(TABLE.name))
        for c in SUMS
    )
    await stage(cur, table, "focus_user_stats_batch", TABLE.columns,
                TABLE.types, (record(user, deltas[user]) for user in users))
    await cur.execute(
        sql.SQL(
            "INSERT INTO {target} AS focus_user_stats ({cols})"
            " SELECT {cols} FROM focus_user_stats_batch ORDER BY user_id"
            " ON CONFLICT (user_id) DO UPDATE SET {sums}, last_session_at ="
            " GREATEST(focus_user_stats.last_session_at, EXCLUDED.last_session_at)"
        ).format(target=table, cols=TABLE.column_list(), sums=sums)
    )
    gone = [u for u in users if deltas[u].sessions_started < 0]
    if gone:  # a user whose last session moved to another user has no totals, as on replay
        await cur.execute(
            sql.SQL("DELETE FROM {} WHERE user_id = ANY(%s) AND sessions_started = 0").format(
                table), (gone,))
    recompute = [u for u in users if deltas[u].recompute_last]
    if recompute:
        await cur.execute(
            sql.SQL(
                "UPDATE {stats} s SET last_session_at ="
                " (SELECT max(started_at) FROM {sessions} f WHERE f.user_id = s.user_id)"
                " WHERE s.user_id = ANY(%s)"
            ).format(stats=table, sessions=SESSIONS.at(schema)),
            (recompute,),
        )


def _of(sums: Sums, user: str) -> UserDelta:
    found: UserDelta | None = sums.get(user)
    if found is None:
        found = sums[user] = UserDelta()
    return found


#: The totals' definition in SQL, an aggregate over ``focus_sessions``: users whose stored row
#: differs from it (either side missing counts too), as (user, stored, recomputed). ``focus
#: verify`` recomputes in Python; tests and benchmarks use this as an independent oracle.
ROLLUP_MISMATCHES = sql.SQL("""
WITH recomputed AS (
    SELECT user_id,
           count(*) AS sessions_started,
           count(ended_at) AS sessions_ended,
           count(*) FILTER (WHERE ended_at IS NOT NULL AND completed) AS sessions_completed,
           coalesce(sum(focus_seconds) FILTER (WHERE ended_at IS NOT NULL), 0)
               AS total_focus_seconds,
           coalesce(sum(duration_minutes), 0) AS total_planned_minutes,
           coalesce(sum(interruptions), 0) AS total_interruptions,
           max(started_at) AS last_session_at
    FROM {sessions} GROUP BY user_id
)
SELECT coalesce(r.user_id, s.user_id),
       CASE WHEN s.user_id IS NULL THEN 'no row' ELSE
           format('started=%s ended=%s completed=%s focus_seconds=%s planned=%s'
                  ' interruptions=%s last=%s', s.sessions_started, s.sessions_ended,
                  s.sessions_completed, s.total_focus_seconds, s.total_planned_minutes,
                  s.total_interruptions, s.last_session_at) END,
       CASE WHEN r.user_id IS NULL THEN 'no sessions' ELSE
           format('started=%s ended=%s completed=%s focus_seconds=%s planned=%s'
                  ' interruptions=%s last=%s', r.sessions_started, r.sessions_ended,
                  r.sessions_completed, r.total_focus_seconds, r.total_planned_minutes,
                  r.total_interruptions, r.last_session_at) END
FROM recomputed r
FULL JOIN {stats} s USING (user_id)
WHERE (r.sessions_started, r.sessions_ended, r.sessions_completed, r.total_focus_seconds,
       r.total_planned_minutes, r.total_interruptions, r.last_session_at)
      IS DISTINCT FROM
      (s.sessions_started, s.sessions_ended, s.sessions_completed, s.total_focus_seconds,
       s.total_planned_minutes, s.total_interruptions, s.last_session_at)
ORDER BY 1
""")


def mismatches(schema: str) -> sql.Composed:
    """The check for the tables of ``schema``: one row per mismatching user."""
    return ROLLUP_MISMATCHES.format(sessions=SESSIONS.at(schema),
                                    stats=TABLE.at(schema))


MODEL = UserTotals()

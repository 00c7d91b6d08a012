"""Org-wide daily totals for analytics teams, per UTC day (``../shared/DESIGN.md``).

Each session is bucketed by the UTC day its start falls on. A day's totals are: active users
(distinct users with a session started that day), sessions started, ended and completed, focus
seconds of the ended ones, and interruptions of those sessions — always equal to the same
aggregate over ``focus_sessions`` (``focus verify`` checks it).

Two tables, one rollup:

- ``focus_daily_users``: the sums per ``(user_id, day)``, kept by deltas like the weekly rollup.
  A row exists exactly while the user has a session started that day, so it is also what makes
  "distinct users" a sum: a day's ``active_users`` moves by one when a row appears or goes.
- ``focus_daily_totals``: one row per day, kept in the same statement from the per-user rows'
  changes (live), or aggregated from them after a replay's bulk load. Days with no session have
  no row; the API answers them as zeros.

Every projector process updates the current day's total row, so batches of different processes
queue on that row for the end of their transactions (a row lock held for the commit only: the
upsert is the last write of a batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection, sql

from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.readmodels.base import Rollup, Sums, Table, add_into, replace_users
from focus_sessions.projections.staging import stage

_ZERO = Decimal(0)
SUMS = ("sessions_started", "sessions_ended", "sessions_completed", "focus_seconds",
        "interruptions")
SUM_TYPES = ("int8", "int8", "int8", "numeric", "int8")

USERS = Table("focus_daily_users", ("user_id", "day", *SUMS), ("varchar", "date", *SUM_TYPES),
              key=("user_id", "day"))
TOTALS = Table("focus_daily_totals", ("day", "active_users", *SUMS),
               ("date", "int8", *SUM_TYPES), key=("day",), per_user=False)

#: ``(user_id, day)``: the key of ``focus_daily_users``.
DayKey = tuple[str, date]


@dataclass(slots=True)
class DayDelta:
    """One user's sums for one day, or a change to them (a value, as ``WeekDelta``)."""

    sessions_started: int = 0
    sessions_ended: int = 0
    sessions_completed: int = 0
    focus_seconds: Decimal = _ZERO
    interruptions: int = 0

    def __add__(self, o: DayDelta) -> DayDelta:
        return DayDelta(self.sessions_started + o.sessions_started,
                        self.sessions_ended + o.sessions_ended,
                        self.sessions_completed + o.sessions_completed,
                        self.focus_seconds + o.focus_seconds,
                        self.interruptions + o.interruptions)

    def __neg__(self) -> DayDelta:
        return DayDelta(-self.sessions_started, -self.sessions_ended, -self.sessions_completed,
                        -self.focus_seconds, -self.interruptions)

    def __bool__(self) -> bool:
        return bool(self.sessions_started or self.sessions_ended or self.sessions_completed
                    or self.focus_seconds or self.interruptions)


def utc_day(row: SessionRow) -> date:
    started = row.started_at
    return (started if started.utcoffset() == _NO_OFFSET else started.astimezone(UTC)).date()


_NO_OFFSET = timedelta(0)


def contribution(row: SessionRow) -> tuple[DayKey, DayDelta]:
    """What one session adds to its user's UTC day (every session counts as started)."""
    ended = row.ended_at is not None
    return (row.user_id, utc_day(row)), DayDelta(
        1, int(ended), int(ended and bool(row.completed)),
        (row.focus_seconds or _ZERO) if ended else _ZERO, row.interruptions)


def totals(sums: Sums) -> dict[date, tuple[int, DayDelta]]:
    """``focus_daily_totals`` from per-user sums: ``(active users, sums)`` per day."""
    days: dict[date, tuple[int, DayDelta]] = {}
    for (_user, day), d in sums.items():
        active, total = days.get(day, (0, DayDelta()))
        days[day] = (active + (d.sessions_started > 0), total + d)
    return days


class Daily(Rollup):
    name = "daily"
    tables = (USERS, TOTALS)

    def change(self, sums: Sums, old: SessionRow | None, new: SessionRow | None) -> None:
        if new is not None:
            key, after = contribution(new)
            if old is not None:
                was, before = contribution(old)
                if was == key:  # the usual change: same user and day, new figures
                    after = after + -before
                else:
                    add_into(sums, {was: -before})
            total = sums[key] + after if key in sums else after
            if total:
                sums[key] = total
            else:
                sums.pop(key, None)
        elif old is not None:
            key, before = contribution(old)
            add_into(sums, {key: -before})

    def add(self, sums: Sums, row: SessionRow) -> None:
        key, add = contribution(row)
        sums[key] = sums[key] + add if key in sums else add

    def merge(self, into: Sums, other: Sums) -> None:
        add_into(into, other)

    def records(self, sums: Sums) -> Iterator[tuple[Any, ...]]:
        for key in sorted(sums):
            d = sums[key]
            yield (key[0], key[1], d.sessions_started, d.sessions_ended, d.sessions_completed,
                   d.focus_seconds, d.interruptions)

    def expected(self, rows: Iterable[SessionRow]) -> dict[str, list[tuple[Any, ...]]]:
        sums: Sums = {}
        for row in rows:
            self.add(sums, row)
        return {USERS.name: list(self.records(sums)),
                TOTALS.name: [(day, active, d.sessions_started, d.sessions_ended,
                               d.sessions_completed, d.focus_seconds, d.interruptions)
                              for day, (active, d) in sorted(totals(sums).items())]}

    async def apply(self, cur: Any, schema: str, sums: Sums) -> None:
        """One statement adds the per-user deltas and, from the rows they changed, the day
        totals (a user's row appearing or going moves ``active_users``); then rows left at
        zero are deleted, when a delta took a start back (nothing else can leave one at
        zero). Staged by binary COPY, written in key order (a stable lock order)."""
        if not sums:
            return
        await stage(cur, USERS.at(schema), "focus_daily_users_batch", USERS.columns,
                    USERS.types, self.records(sums))
        added = sql.SQL(", ").join(sql.SQL("{c} = u.{c} + EXCLUDED.{c}").format(
            c=sql.Identifier(c)) for c in SUMS)
        summed = sql.SQL(", ").join(sql.SQL("sum(b.{c}) AS {c}").format(c=sql.Identifier(c))
                                    for c in SUMS)
        totalled = sql.SQL(", ").join(sql.SQL("{c} = t.{c} + EXCLUDED.{c}").format(
            c=sql.Identifier(c)) for c in ("active_users", *SUMS))
        await cur.execute(sql.SQL(
            "WITH up AS ("
            " INSERT INTO {users} AS u ({cols}) SELECT {cols} FROM focus_daily_users_batch"
            " ORDER BY user_id, day"
            " ON CONFLICT (user_id, day) DO UPDATE SET {added}"
            " RETURNING u.day, u.user_id, u.sessions_started),"
            " moved AS (SELECT b.day,"
            " count(*) FILTER (WHERE up.sessions_started > 0"
            "                  AND up.sessions_started = b.sessions_started)"
            " - count(*) FILTER (WHERE up.sessions_started = 0 AND b.sessions_started < 0)"
            " AS active_users, {summed}"
            " FROM focus_daily_users_batch b JOIN up USING (user_id, day) GROUP BY b.day)"
            " INSERT INTO {totals} AS t ({total_cols}) SELECT {total_cols} FROM moved"
            " ORDER BY day ON CONFLICT (day) DO UPDATE SET {totalled}"
        ).format(users=USERS.at(schema), cols=USERS.column_list(), added=added, summed=summed,
                 totals=TOTALS.at(schema), total_cols=TOTALS.column_list(), totalled=totalled))
        if not any(d.sessions_started < 0 for d in sums.values()):
            return  # only a start taken back (a session moved or retracted) can empty a row
        await cur.execute(sql.SQL(
            "DELETE FROM {users} u USING focus_daily_users_batch b"
            " WHERE u.user_id = b.user_id AND u.day = b.day AND u.sessions_started = 0"
        ).format(users=USERS.at(schema)))
        await cur.execute(sql.SQL(
            "DELETE FROM {totals} t USING (SELECT DISTINCT day FROM focus_daily_users_batch) b"
            " WHERE t.day = b.day AND t.sessions_started = 0"
        ).format(totals=TOTALS.at(schema)))

    async def finish_bulk(self, cur: Any, schema: str) -> None:
        """The day totals aggregated from the per-user rows the bulk workers loaded."""
        await cur.execute(_REBUILD.format(
            totals=TOTALS.at(schema), users=USERS.at(schema), where=sql.SQL(""),
            total_cols=TOTALS.column_list(), summed=_SUMMED))

    async def swap_users(self, conn: AsyncConnection[Any], live: str, shadow: str,
                         users: Sequence[str]) -> None:
        """Replace the users' per-day rows, then rebuild the totals of every day those users
        had a session on, before or after, from the per-user rows."""
        cur = await conn.execute(sql.SQL(
            "SELECT day FROM {} WHERE user_id = ANY(%(users)s)"
            " UNION SELECT day FROM {} WHERE user_id = ANY(%(users)s)"
        ).format(USERS.at(live), USERS.at(shadow)), {"users": list(users)})
        days = [day for (day,) in await cur.fetchall()]
        await replace_users(conn, USERS, live, shadow, users)
        await conn.execute(sql.SQL("DELETE FROM {} WHERE day = ANY(%(days)s)").format(
            TOTALS.at(live)), {"days": days})
        await conn.execute(_REBUILD.format(
            totals=TOTALS.at(live), users=USERS.at(live),
            where=sql.SQL("WHERE day = ANY(%(days)s)"), total_cols=TOTALS.column_list(),
            summed=_SUMMED), {"days": days})


_SUMMED = sql.SQL(", ").join(sql.SQL("sum({c})").format(c=sql.Identifier(c)) for c in SUMS)
_REBUILD = sql.SQL(
    "INSERT INTO {totals} ({total_cols}) SELECT day, count(*), {summed} FROM {users} {where}"
    " GROUP BY day ORDER BY day")


MODEL = Daily()

"""Weekly focus per user, in the user's time zone: a rollup kept by deltas, like the totals.

A session counts in the week (Monday to Sunday, ISO) in which it *started*, in the time zone of
its start event (UTC when the start named none). Only ended sessions contribute, so a week row
exists exactly when the user ended at least one session that started in it; a row whose
``sessions_ended`` falls to zero (its only end turned out to contradict an earlier start) is
deleted rather than kept at zero. The functions are pure; :class:`Weekly` adds the SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

from psycopg import sql

from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.readmodels.base import Rollup, Sums, Table, add_into
from focus_sessions.projections.staging import stage

_ZERO = Decimal(0)

#: ``(user_id, week_start)``: the primary key of ``focus_user_weekly``.
WeekKey = tuple[str, date]

TABLE = Table(
    "focus_user_weekly",
    ("user_id", "week_start", "sessions_ended", "sessions_completed", "focus_seconds"),
    ("varchar", "date", "int8", "int8", "numeric"),
    key=("user_id", "week_start"),
)


@dataclass(slots=True)
class WeekDelta:
    """One week's sums, or a change to them. A value: the operators return new ones and nothing
    changes one in place. (Not ``frozen``: a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``, three times the cost, and one is built per ended session.)"""

    sessions_ended: int = 0
    sessions_completed: int = 0
    focus_seconds: Decimal = _ZERO

    def __add__(self, other: WeekDelta) -> WeekDelta:
        return WeekDelta(
            self.sessions_ended + other.sessions_ended,
            self.sessions_completed + other.sessions_completed,
            self.focus_seconds + other.focus_seconds,
        )

    def __neg__(self) -> WeekDelta:
        return WeekDelta(-self.sessions_ended, -self.sessions_completed, -self.focus_seconds)

    def __bool__(self) -> bool:
        return bool(self.sessions_ended or self.sessions_completed or self.focus_seconds)


#: Zones by the name a start event gave (``None``: UTC). Bounded by the zone database: an
#: event naming a zone it does not know is refused when decoded. A dict look-up, not an
#: ``lru_cache``: one runs per ended session, live and on replay, and the cache's call cost
#: a fifth of the whole function.
_ZONES: dict[str | None, ZoneInfo] = {None: ZoneInfo("UTC")}
#: ``_BACK[d]`` is ``d`` days: back from a weekday to its Monday, without building a timedelta.
_BACK = tuple(timedelta(days=d) for d in range(7))


def week_start(row: SessionRow) -> date:
    """Monday of the week the session started in, in the user's time zone (else UTC)."""
    zone = _ZONES.get(row.time_zone)
    if zone is None:
        zone = _ZONES[row.time_zone] = ZoneInfo(cast(str, row.time_zone))
    local = row.started_at.astimezone(zone).date()
    return local - _BACK[local.weekday()]


def contribution(row: SessionRow | None) -> tuple[WeekKey, WeekDelta] | None:
    """What one session adds to its user's week; ``None`` until it has ended."""
    if row is None or row.ended_at is None:
        return None
    return (row.user_id, week_start(row)), WeekDelta(
        1, int(row.completed), row.focus_seconds or _ZERO
    )


def delta(old: SessionRow | None, new: SessionRow | None) -> dict[WeekKey, WeekDelta]:
    """How one session's change from ``old`` to ``new`` moves the weekly rollup."""
    changes: dict[WeekKey, WeekDelta] = {}
    before, after = contribution(old), contribution(new)
    if before is not None:
        changes[before[0]] = -before[1]
    if after is not None:
        key, add = after
        changes[key] = changes[key] + add if key in changes else add
    return {key: change for key, change in changes.items() if change}


def accumulate(
    into: MutableMapping[WeekKey, WeekDelta], changes: Mapping[WeekKey, WeekDelta]
) -> None:
    """Merge ``changes`` into ``into`` (a batch's running total), dropping zero entries."""
    add_into(into, changes)  # type: ignore[arg-type]


def rollup(rows: Iterable[SessionRow]) -> dict[WeekKey, WeekDelta]:
    """The weekly rollup recomputed from scratch (replay, verify): one entry per non-zero week."""
    weeks: dict[WeekKey, WeekDelta] = {}
    for row in rows:
        found = contribution(row)
        if found is not None:
            key, add = found
            weeks[key] = weeks[key] + add if key in weeks else add
    return weeks


class Weekly(Rollup):
    name = "weekly"
    tables = (TABLE,)

    def change(self, sums: Sums, old: SessionRow | None, new: SessionRow | None) -> None:
        add_into(sums, delta(old, new))

    def add(self, sums: Sums, row: SessionRow) -> None:
        found = contribution(row)
        if found is not None:
            key, add = found
            sums[key] = sums[key] + add if key in sums else add

    def merge(self, into: Sums, other: Sums) -> None:
        add_into(into, other)

    def records(self, sums: Sums) -> Iterator[tuple[Any, ...]]:
        for key in sorted(sums):
            w = sums[key]
            yield (key[0], key[1], w.sessions_ended, w.sessions_completed, w.focus_seconds)

    async def apply(self, cur: Any, schema: str, sums: Sums) -> None:
        """Staged by binary COPY in key order (a stable lock order), then one upsert; weeks
        left with no ended session are deleted (only a negative delta can leave one)."""
        if not sums:
            return
        table = TABLE.at(schema)
        await stage(cur, table, "focus_user_weekly_batch", TABLE.columns, TABLE.types,
                    self.records(sums))
        await cur.execute(sql.SQL(
            "INSERT INTO {t} AS w ({cols}) SELECT {cols} FROM focus_user_weekly_batch"
            " ORDER BY user_id, week_start"
            " ON CONFLICT (user_id, week_start) DO UPDATE SET"
            " sessions_ended = w.sessions_ended + EXCLUDED.sessions_ended,"
            " sessions_completed = w.sessions_completed + EXCLUDED.sessions_completed,"
            " focus_seconds = w.focus_seconds + EXCLUDED.focus_seconds"
        ).format(t=table, cols=TABLE.column_list()))
        if not any(w.sessions_ended < 0 for w in sums.values()):
            return  # only an end taken back (a session moved or retracted) can empty a week
        await cur.execute(sql.SQL(
            "DELETE FROM {t} w USING focus_user_weekly_batch b"
            " WHERE w.user_id = b.user_id AND w.week_start = b.week_start"
            " AND w.sessions_ended = 0"
        ).format(t=table))


MODEL = Weekly()

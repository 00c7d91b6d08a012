"""Read queries over the projections, for the API: sessions, analytics, freshness.

Each read is one parameterised statement, so a response and the freshness it reports come from
one snapshot. Rows come back as plain dataclasses; the HTTP shapes live with the API.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql

from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.readmodels import POSITIONS, daily, sessions, user_totals, weekly

SESSION_FIELDS = (
    "session_id", "user_id", "step_id", "started_at", "ended_at", "duration_minutes",
    "completed", "interruptions", "created_at", "focus_seconds", "outcome", "focus_quality",
    "interruption_events", "reported_interruptions", "time_zone", "start_event_id",
    "end_event_id",
)
_POSITIONS = sql.SQL(
    "(SELECT array_agg(kafka_partition ORDER BY kafka_partition) AS parts,"
    " array_agg(next_offset ORDER BY kafka_partition) AS offsets,"
    " array_agg(last_event_time ORDER BY kafka_partition) AS times"
    " FROM {} WHERE topic = %(topic)s) AS p"
)


@dataclass(frozen=True, slots=True)
class Position:
    partition: int
    next_offset: int
    last_event_time: datetime | None


@dataclass(frozen=True, slots=True)
class Freshness:
    """How far the projection has got: per partition, and the newest event time overall."""

    projected_through: datetime | None
    positions: list[Position]


#: A ``focus_sessions`` row as read back: the very tuple the fold writes.
SessionRecord = SessionRow


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position: the last (started_at, session_id) of a page."""

    started_at: datetime
    session_id: UUID

    def encode(self) -> str:
        raw = f"{self.started_at.isoformat()}|{self.session_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Raise ``ValueError`` for anything this module did not produce."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            at, sid = raw.split("|")
            started_at = datetime.fromisoformat(at)
            session_id = UUID(sid)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError("not a cursor returned by this API") from exc
        if started_at.tzinfo is None:
            raise ValueError("not a cursor returned by this API")
        return cls(started_at, session_id)


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[SessionRecord]
    next_cursor: Cursor | None
    freshness: Freshness


@dataclass(frozen=True, slots=True)
class UserTotals:
    """A row of ``focus_user_stats`` (zeros for a user the projection has not seen)."""

    sessions_started: int
    sessions_ended: int
    sessions_completed: int
    total_focus_seconds: Decimal
    total_planned_minutes: int
    total_interruptions: int
    last_session_at: datetime | None


@dataclass(frozen=True, slots=True)
class DayBucket:
    day: date
    sessions_started: int
    sessions_ended: int
    sessions_completed: int
    focus_seconds: Decimal
    interruptions: int


@dataclass(frozen=True, slots=True)
class OrgDay:
    """A row of ``focus_daily_totals``: every user's sessions that started on the UTC day."""

    day: date
    active_users: int
    sessions_started: int
    sessions_ended: int
    sessions_completed: int
    focus_seconds: Decimal
    interruptions: int


@dataclass(frozen=True, slots=True)
class WeekBucket:
    """A row of ``focus_user_weekly``: ended sessions that started in the week."""

    week_start: date
    sessions_ended: int
    sessions_completed: int
    focus_seconds: Decimal


class ReadQueries:
    """The API's reads, against the tables of one schema, for one topic's positions."""

    def __init__(self, topic: str, schema: str = "public") -> None:
        self.topic = topic
        t = {"focus_sessions": sessions.SESSIONS.at(schema),
             "focus_user_stats": user_totals.TABLE.at(schema),
             "focus_user_weekly": weekly.TABLE.at(schema),
             "focus_daily_totals": daily.TOTALS.at(schema),
             "projector_positions": sql.Identifier(schema, POSITIONS)}
        cols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c))
                                  for c in SESSION_FIELDS)
        positions = _POSITIONS.format(t["projector_positions"])
        page = ("SELECT p.parts, p.offsets, p.times, {cols} FROM {pos} LEFT JOIN LATERAL"
                " (SELECT * FROM {sessions} WHERE user_id = %(user)s{after}"
                " ORDER BY started_at DESC, session_id DESC LIMIT %(limit)s) AS s ON true")
        after = " AND (started_at, session_id) < (%(at)s, %(sid)s)"
        self._page_first = _render(page, cols=cols, pos=positions,
                                   sessions=t["focus_sessions"], after=sql.SQL(""))
        self._page_after = _render(page, cols=cols, pos=positions,
                                   sessions=t["focus_sessions"], after=sql.SQL(after))
        self._one = _render(
            "SELECT p.parts, p.offsets, p.times, {cols} FROM {pos}"
            " LEFT JOIN {sessions} AS s ON s.session_id = %(sid)s",
            cols=cols, pos=positions, sessions=t["focus_sessions"])
        self._totals = _render(
            "SELECT p.parts, p.offsets, p.times, s.sessions_started, s.sessions_ended,"
            " s.sessions_completed, s.total_focus_seconds, s.total_planned_minutes,"
            " s.total_interruptions, s.last_session_at"
            " FROM {pos} LEFT JOIN {stats} AS s ON s.user_id = %(user)s",
            pos=positions, stats=t["focus_user_stats"])
        self._days = _render(
            "SELECT d::date, count(f.session_id), count(f.ended_at),"
            " count(*) FILTER (WHERE f.completed AND f.ended_at IS NOT NULL),"
            " coalesce(sum(f.focus_seconds), 0), coalesce(sum(f.interruptions), 0)"
            " FROM generate_series(%(lo)s::date, %(hi)s::date, interval '1 day') AS d"
            " LEFT JOIN {sessions} AS f ON f.user_id = %(user)s"
            " AND f.started_at >= d::date::timestamp AT TIME ZONE %(tz)s"
            " AND f.started_at < (d::date + 1)::timestamp AT TIME ZONE %(tz)s"
            " GROUP BY d ORDER BY d",
            sessions=t["focus_sessions"])
        self._weeks = _render(
            "SELECT week_start, sessions_ended, sessions_completed, focus_seconds FROM {weekly}"
            " WHERE user_id = %(user)s AND week_start BETWEEN %(lo)s AND %(hi)s"
            " ORDER BY week_start DESC",
            weekly=t["focus_user_weekly"])
        self._org_days = _render(
            "SELECT p.parts, p.offsets, p.times, d::date, coalesce(o.active_users, 0),"
            " coalesce(o.sessions_started, 0), coalesce(o.sessions_ended, 0),"
            " coalesce(o.sessions_completed, 0), coalesce(o.focus_seconds, 0),"
            " coalesce(o.interruptions, 0)"
            " FROM {pos} CROSS JOIN generate_series(%(lo)s::date, %(hi)s::date, interval '1 day')"
            " AS d LEFT JOIN {totals} AS o ON o.day = d::date ORDER BY d",
            pos=positions, totals=t["focus_daily_totals"])
        self._zone = _render(
            "SELECT time_zone FROM {sessions} WHERE user_id = %(user)s"
            " AND time_zone IS NOT NULL ORDER BY started_at DESC LIMIT 1",
            sessions=t["focus_sessions"])
        self._freshness = _render("SELECT p.parts, p.offsets, p.times FROM {pos}", pos=positions)
        self._position = _render(
            "SELECT next_offset FROM {positions}"
            " WHERE topic = %(topic)s AND kafka_partition = %(part)s",
            positions=t["projector_positions"])

    async def sessions(
        self, conn: AsyncConnection[Any], user_id: str, limit: int, after: Cursor | None
    ) -> SessionPage:
        """A user's sessions, newest first, ``limit`` of them after ``after``."""
        params: dict[str, Any] = {"topic": self.topic, "user": user_id, "limit": limit + 1}
        query = self._page_first
        if after is not None:
            query = self._page_after
            params.update(at=after.started_at, sid=after.session_id)
        rows = await (await conn.execute(query, params)).fetchall()
        found = [_session(r) for r in rows if r[3] is not None]
        more = len(found) > limit
        found = found[:limit]
        last = found[-1] if more else None
        cursor = Cursor(last.started_at, last.session_id) if last else None
        return SessionPage(found, cursor, _freshness(rows[0]))

    async def session(
        self, conn: AsyncConnection[Any], session_id: UUID
    ) -> tuple[SessionRecord | None, Freshness]:
        """One session (None if the projection does not know it) and the freshness."""
        cur = await conn.execute(self._one, {"topic": self.topic, "sid": session_id})
        row = await cur.fetchone()
        assert row is not None  # the positions aggregate always yields one row
        return (_session(row) if row[3] is not None else None), _freshness(row)

    async def totals(
        self, conn: AsyncConnection[Any], user_id: str
    ) -> tuple[UserTotals, Freshness]:
        """The user's rollup row (zeros if unseen) and the freshness."""
        cur = await conn.execute(self._totals, {"topic": self.topic, "user": user_id})
        row = await cur.fetchone()
        assert row is not None
        if row[3] is None:
            return UserTotals(0, 0, 0, Decimal(0), 0, 0, None), _freshness(row)
        return UserTotals(*row[3:]), _freshness(row)

    async def days(
        self, conn: AsyncConnection[Any], user_id: str, lo: date, hi: date, tz: str
    ) -> list[DayBucket]:
        """Daily buckets ``lo..hi`` (inclusive) by each session's local start date in ``tz``."""
        cur = await conn.execute(self._days, {"user": user_id, "lo": lo, "hi": hi, "tz": tz})
        return [DayBucket(*r) for r in await cur.fetchall()]

    async def weeks(
        self, conn: AsyncConnection[Any], user_id: str, lo: date, hi: date
    ) -> list[WeekBucket]:
        """The weekly rollup of weeks starting ``lo..hi``, newest first; a week in which no
        session ended has no row."""
        cur = await conn.execute(self._weeks, {"user": user_id, "lo": lo, "hi": hi})
        return [WeekBucket(*r) for r in await cur.fetchall()]

    async def org_days(
        self, conn: AsyncConnection[Any], lo: date, hi: date
    ) -> tuple[list[OrgDay], Freshness]:
        """Org-wide totals of every UTC day ``lo..hi`` (inclusive; zeros for a day without
        sessions), oldest first, and the freshness."""
        rows = await (await conn.execute(
            self._org_days, {"topic": self.topic, "lo": lo, "hi": hi})).fetchall()
        return [OrgDay(*r[3:]) for r in rows], _freshness(rows[0])

    async def latest_time_zone(self, conn: AsyncConnection[Any], user_id: str) -> str | None:
        """The time zone of the user's newest session that named one."""
        row = await (await conn.execute(self._zone, {"user": user_id})).fetchone()
        return str(row[0]) if row else None

    async def freshness(self, conn: AsyncConnection[Any]) -> Freshness:
        """How far the projection has got, alone."""
        row = await (await conn.execute(self._freshness, {"topic": self.topic})).fetchone()
        assert row is not None
        return _freshness(row)

    async def next_offset(self, conn: AsyncConnection[Any], partition: int) -> int:
        """The projector's next offset for ``partition`` (-1 before it has seen it)."""
        cur = await conn.execute(self._position, {"topic": self.topic, "part": partition})
        row = await cur.fetchone()
        return int(row[0]) if row else -1


def _render(template: str, **parts: sql.Composable) -> bytes:
    # rendered once: psycopg would otherwise compose the text again on every execute
    return sql.SQL(template).format(**parts).as_bytes()


def _session(row: Any) -> SessionRecord:
    return SessionRow(*row[3:])


def _freshness(row: Any) -> Freshness:
    parts, offsets, times = row[0] or [], row[1] or [], row[2] or []
    known = [t for t in times if t is not None]
    return Freshness(
        max(known) if known else None,
        [Position(p, o, t) for p, o, t in zip(parts, offsets, times, strict=True)],
    )

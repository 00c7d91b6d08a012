"""``focus verify``: check on a live database that the read models equal their definitions.

- every ``focus_sessions`` row, and every stored event status, equals
  :func:`focus_sessions.projections.fold.derive` of the session's stored events;
- every rollup's tables (:data:`focus_sessions.projections.readmodels.ROLLUPS`: per-user totals,
  weekly, daily) equal their recomputation from ``focus_sessions`` (guarantee 3), row for row;
- positions are sane: none negative, no stored event at or past its partition's position, and,
  when the broker's log end offsets are given, no partition beyond the topic or past its end.
Held events (waiting for their start) are reported with the age of the oldest, and event ids
stored in more than one session (a producer reusing ids: the projector settles ids per session,
so both count) with examples; neither is a mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql

from focus_sessions.projections.fold import History, SessionRow, derive
from focus_sessions.projections.readmodels import POSITIONS, ROLLUPS, Table
from focus_sessions.projections.readmodels.sessions import EVENTS, SESSIONS
from focus_sessions.projections.readmodels.user_totals import TABLE as USER_TOTALS
from focus_sessions.projections.repository import ProjectionRepository

CHUNK = 2000


@dataclass(slots=True)
class Problem:
    check: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str, keep: int) -> None:
        self.count += 1
        if len(self.examples) < keep:
            self.examples.append(example)


@dataclass(slots=True)
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    sessions: int = 0
    users: int = 0
    held: int = 0
    held_oldest_age: timedelta | None = None
    #: Event ids stored in more than one session, and a few of them with their sessions.
    reused_ids: int = 0
    reused_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.count for p in self.problems)

    def problem(self, check: str) -> Problem:
        found = next((p for p in self.problems if p.check == check), None)
        if found is None:
            found = Problem(check)
            self.problems.append(found)
        return found


async def verify(
    conn: AsyncConnection[Any], *, schema: str = "public", topic: str,
    log_ends: Mapping[int, int] | None = None, examples: int = 5,
) -> VerifyReport:
    """Run every check; ``report.ok`` is False on any mismatch."""
    report = VerifyReport()
    rows = await _sessions(conn, schema, report, examples)
    for rollup in ROLLUPS:
        for table, expected in rollup.expected(rows).items():
            await _compare(conn, schema, rollup.tables, table, expected, report, examples)
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(USER_TOTALS.at(schema)))
    report.users = (await cur.fetchone() or (0,))[0]
    await _positions(conn, schema, topic, log_ends, report, examples)
    cur = await conn.execute(sql.SQL(
        "SELECT count(*), now() - min(recorded_at) FROM {} WHERE status = 'held'"
    ).format(EVENTS.at(schema)))
    held = await cur.fetchone()
    assert held is not None
    report.held, report.held_oldest_age = held
    cur = await conn.execute(sql.SQL(
        "SELECT event_id, array_agg(session_id ORDER BY session_id) FROM {}"
        " GROUP BY event_id HAVING count(*) > 1 ORDER BY event_id"
    ).format(EVENTS.at(schema)))
    reused = await cur.fetchall()
    report.reused_ids = len(reused)
    report.reused_examples = [f"event {eid} in sessions {', '.join(map(str, sids))}"
                              for eid, sids in reused[:examples]]
    return report


async def _sessions(conn: AsyncConnection[Any], schema: str, report: VerifyReport,
                    keep: int) -> list[SessionRow]:
    rows_problem = report.problem("focus_sessions = derive(session_events)")
    status_problem = report.problem("session_events.status = derive(session_events)")
    repo = ProjectionRepository(schema)
    events, sessions = EVENTS.at(schema), SESSIONS.at(schema)
    cur = await conn.execute(sql.SQL(
        "SELECT session_id FROM {} UNION SELECT session_id FROM {} ORDER BY 1"
    ).format(events, sessions))
    ids: list[UUID] = [sid for (sid,) in await cur.fetchall()]
    all_rows: list[SessionRow] = []
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i:i + CHUNK]
        histories = await repo.load_histories(conn, chunk)
        cur = await conn.execute(sql.SQL("SELECT * FROM {} WHERE session_id = ANY(%s)")
                                 .format(sessions), (chunk,))
        stored = {r[0]: SessionRow(*r) for r in await cur.fetchall()}
        cur = await conn.execute(sql.SQL(
            "SELECT session_id, event_id, status FROM {} WHERE session_id = ANY(%s)"
        ).format(events), (chunk,))
        statuses: dict[UUID, dict[UUID, str]] = {}
        for sid, eid, status in await cur.fetchall():
            statuses.setdefault(sid, {})[eid] = status
        for sid in chunk:
            history = histories.get(sid, History())
            derived = derive(history)
            row = stored.get(sid)
            if row is not None:
                all_rows.append(row)
            if derived.row != row:
                rows_problem.add(_row_example(sid, row, derived.row), keep)
            expected = {history.events[k].id: s.value for k, s in derived.status.items()}
            if statuses.get(sid, {}) != expected:
                status_problem.add(f"session {sid}: stored {statuses.get(sid)}, derived "
                                   f"{expected}", keep)
    report.sessions = len(all_rows)
    return all_rows


def _row_example(sid: UUID, stored: SessionRow | None, derived: SessionRow | None) -> str:
    if stored is None or derived is None:
        return f"session {sid}: stored {'none' if stored is None else 'a row'}, derived " \
               f"{'none' if derived is None else 'a row'}"
    changed = [f"{c}: stored {a!r}, derived {b!r}" for c, a, b in
               zip(SessionRow._fields, stored, derived, strict=True) if a != b]
    return f"session {sid}: " + "; ".join(changed)


async def _compare(conn: AsyncConnection[Any], schema: str, tables: tuple[Table, ...], name: str,
                   expected: list[tuple[Any, ...]], report: VerifyReport, keep: int) -> None:
    """Stored rows of one rollup table against their recomputation, by key."""
    table = next(t for t in tables if t.name == name)
    problem = report.problem(f"{name} = recomputed from {SESSIONS.name}")
    cur = await conn.execute(sql.SQL("SELECT {} FROM {}").format(
        table.column_list(), table.at(schema)))
    width = len(table.key)
    stored = {r[:width]: r[width:] for r in await cur.fetchall()}
    wanted = {r[:width]: r[width:] for r in expected}
    for key in sorted(stored.keys() | wanted.keys()):
        if stored.get(key) != wanted.get(key):
            shown = repr(key[0]) if width == 1 else ", ".join(map(str, key))
            problem.add(f"{shown}: stored {_values(table, stored.get(key))}, recomputed "
                        f"{_values(table, wanted.get(key))}", keep)


def _values(table: Table, values: tuple[Any, ...] | None) -> str:
    if values is None:
        return "no row"
    return " ".join(f"{c}={v}" for c, v in zip(table.columns[len(table.key):], values,
                                               strict=True))


async def _positions(conn: AsyncConnection[Any], schema: str, topic: str,
                     log_ends: Mapping[int, int] | None, report: VerifyReport,
                     keep: int) -> None:
    problem = report.problem("projector_positions are consistent")
    cur = await conn.execute(sql.SQL(
        "SELECT p.kafka_partition, p.next_offset, (SELECT max(kafka_offset) FROM {e} e"
        " WHERE e.kafka_partition = p.kafka_partition) FROM {p} p WHERE topic = %s ORDER BY 1"
    ).format(e=EVENTS.at(schema), p=sql.Identifier(schema, POSITIONS)), (topic,))
    for partition, position, newest in await cur.fetchall():
        where = f"{topic}[{partition}] at {position}"
        if position < 0:
            problem.add(f"{where}: negative position", keep)
        if newest is not None and newest >= position:
            problem.add(f"{where}: an event from offset {newest} is stored already", keep)
        if log_ends is not None and partition not in log_ends:
            problem.add(f"{where}: the topic has no partition {partition}", keep)
        elif log_ends is not None and position > log_ends[partition]:
            problem.add(f"{where}: beyond the log end offset {log_ends[partition]}", keep)

"""``focus verify``: check on a live database that the read models equal their definitions.

- every ``focus_user_stats`` row equals its recomputation from ``focus_sessions`` (guarantee 3);
- every ``focus_sessions`` row, and every stored event status, equals
  :func:`focus_sessions.projections.fold.derive` of the session's stored events;
- ``focus_user_weekly`` equals :func:`focus_sessions.projections.weekly.rollup` of
``focus_sessions``;
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

from focus_sessions.projections import weekly
from focus_sessions.projections.fold import History, SessionRow, derive
from focus_sessions.projections.repository import ProjectionRepository
from focus_sessions.projections.verify_sql import rollup_check, table_exists

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
    await _rollups(conn, schema, report, examples)
    rows = await _sessions(conn, schema, report, examples)
    if await table_exists(conn, schema, "focus_user_weekly"):
        await _weekly(conn, schema, "focus_user_weekly", rows, report, examples)
    await _positions(conn, schema, topic, log_ends, report, examples)
    cur = await conn.execute(sql.SQL(
        "SELECT count(*), now() - min(recorded_at) FROM {} WHERE status = 'held'"
    ).format(sql.Identifier(schema, "session_events")))
    held = await cur.fetchone()
    assert held is not None
    report.held, report.held_oldest_age = held
    cur = await conn.execute(sql.SQL(
        "SELECT event_id, array_agg(session_id ORDER BY session_id) FROM {}"
        " GROUP BY event_id HAVING count(*) > 1 ORDER BY event_id"
    ).format(sql.Identifier(schema, "session_events")))
    reused = await cur.fetchall()
    report.reused_ids = len(reused)
    report.reused_examples = [f"event {eid} in sessions {', '.join(map(str, sids))}"
                              for eid, sids in reused[:examples]]
    return report


async def _rollups(conn: AsyncConnection[Any], schema: str, report: VerifyReport,
                   keep: int) -> None:
    problem = report.problem("focus_user_stats = recomputed from focus_sessions")
    cur = await conn.execute(rollup_check(schema))
    for user, stored, recomputed in await cur.fetchall():
        problem.add(f"user {user!r}: stored {stored}, recomputed {recomputed}", keep)
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(schema, "focus_user_stats")))
    report.users = (await cur.fetchone() or (0,))[0]


async def _sessions(conn: AsyncConnection[Any], schema: str, report: VerifyReport,
                    keep: int) -> list[SessionRow]:
    rows_problem = report.problem("focus_sessions = derive(session_events)")
    status_problem = report.problem("session_events.status = derive(session_events)")
    repo = ProjectionRepository(schema)
    events, sessions = sql.Identifier(schema, "session_events"), sql.Identifier(
        schema, "focus_sessions")
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


async def _weekly(conn: AsyncConnection[Any], schema: str, table: str, rows: list[SessionRow],
                  report: VerifyReport, keep: int) -> None:
    problem = report.problem(f"{table} = recomputed from focus_sessions")
    cur = await conn.execute(sql.SQL(
        "SELECT user_id, week_start, sessions_ended, sessions_completed, focus_seconds FROM {}"
    ).format(sql.Identifier(schema, table)))
    stored = {(u, w): weekly.WeekDelta(e, c, s) for u, w, e, c, s in await cur.fetchall()}
    expected = weekly.rollup(rows)
    for key in sorted(stored.keys() | expected.keys()):
        if stored.get(key) != expected.get(key):
            problem.add(f"{key[0]!r} week {key[1]}: stored {stored.get(key)}, recomputed "
                        f"{expected.get(key)}", keep)


async def _positions(conn: AsyncConnection[Any], schema: str, topic: str,
                     log_ends: Mapping[int, int] | None, report: VerifyReport,
                     keep: int) -> None:
    problem = report.problem("projector_positions are consistent")
    cur = await conn.execute(sql.SQL(
        "SELECT p.kafka_partition, p.next_offset, (SELECT max(kafka_offset) FROM {e} e"
        " WHERE e.kafka_partition = p.kafka_partition) FROM {p} p WHERE topic = %s ORDER BY 1"
    ).format(e=sql.Identifier(schema, "session_events"),
             p=sql.Identifier(schema, "projector_positions")), (topic,))
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

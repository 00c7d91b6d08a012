"""A replay's checkpoints: what it has done, kept in its shadow schema, so that a replay that was
killed continues where it was instead of starting over.

These tables live next to the shadow tables (never swapped: a swap moves only
:data:`focus_sessions.consumers.replay.shadow_sql.SWAPPED`; they go with the shadow schema):

- ``replay_run``: one row: the options a replay cannot change half-way (topic, ``--users``), the
  end offsets captured when it began, which partitions each worker reads, the index statements
  to rebuild after the load, its phase, and a *generation*, raised by every start. A worker's
  flush checks the generation in the same transaction (``FOR SHARE``), so a worker of a killed
  run that is still finishing a flush either commits before the new run reads the checkpoints
  or fails after (the new run's ``UPDATE`` waits for the share lock).
- ``replay_workers``: per worker, the offset up to which every record of its partitions is in
  the shadow tables, and running counts; written in the transaction that flushes its sessions.
- ``replay_staged_<rollup table>``: the rollups' partial sums each flush wrote (COPY: the sums
  are added up once, in SQL, when every worker is done);
- ``replay_carry``: per worker, the events of the open sessions it carried over its last
  flush (kept in memory, not yet written): a continued worker starts with them;
- ``replay_sessions``: one row per session part a flush wrote (the session id and the worker):
  a session with more than one row was cut by a flush or read by two workers; those are folded
  whole at the end (:mod:`.split`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, Connection, Cursor, sql
from psycopg.types.json import Jsonb

from focus_sessions.consumers.replay.memory import HeldSession, ShadowState
from focus_sessions.projections.readmodels import ROLLUPS, Rollup, Table
from focus_sessions.projections.readmodels.sessions import (
    EVENTS,
    SESSION_EVENT_COLUMNS,
    event_from_record,
    event_record,
)

RUN, WORKERS, SESSIONS, CARRY = (
    "replay_run", "replay_workers", "replay_sessions", "replay_carry")

#: Phases, in order. ``bulk``: workers read and flush; ``tables``: the rollups' staged sums
#: are added up, split sessions moved aside, the stripped indexes rebuilt (each step
#: idempotent); ``refold``: split sessions are folded whole and the positions set; ``loaded``:
#: the bulk phase is over (catch-up, diff, swap follow, each resumable on its own).
PHASES = ("bulk", "tables", "refold", "loaded")


class Superseded(RuntimeError):
    """A newer start of this replay took over (this process belongs to a killed run)."""


@dataclass(slots=True)
class Run:
    topic: str
    users: list[str] | None
    ends: dict[int, int]
    groups: list[list[int]]
    indexes: dict[str, list[list[str]]]
    phase: str
    generation: int
    #: What folding the split sessions found (:class:`.split.Refolded`'s fields).
    counts: dict[str, int] = field(default_factory=dict)
    started_at: datetime | None = None


@dataclass(slots=True)
class WorkerCheckpoint:
    group: int
    next_offsets: dict[int, int] = field(default_factory=dict)
    bytes: dict[int, int] = field(default_factory=dict)
    last_times: dict[int, datetime] = field(default_factory=dict)
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    flushes: int = 0
    flushed_bytes: int = 0


def _t(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def staged(rollup: Rollup) -> Table:
    """Where flushes stage a rollup's partial sums (its first table's shape, no key)."""
    return replace(rollup.tables[0], name=f"replay_staged_{rollup.tables[0].name}")


async def create(conn: AsyncConnection[Any], schema: str, run: Run) -> None:
    """The checkpoint tables of a new replay, with its run row and a zero row per worker."""
    await conn.execute(sql.SQL(
        "CREATE TABLE {run} (singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),"
        " topic text NOT NULL, users text[], ends jsonb NOT NULL, groups jsonb NOT NULL,"
        " indexes jsonb NOT NULL, phase text NOT NULL, generation int NOT NULL,"
        " counts jsonb NOT NULL DEFAULT '{{}}', started_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE {workers} (grp int PRIMARY KEY, next_offsets jsonb NOT NULL,"
        " bytes jsonb NOT NULL, last_times jsonb NOT NULL, events bigint NOT NULL,"
        " duplicates bigint NOT NULL, dead_letters bigint NOT NULL, flushes int NOT NULL,"
        " flushed_bytes bigint NOT NULL);"
        "CREATE TABLE {sessions} (session_id uuid NOT NULL, grp int2 NOT NULL)"
    ).format(run=_t(schema, RUN), workers=_t(schema, WORKERS), sessions=_t(schema, SESSIONS)))
    for rollup in ROLLUPS:
        await conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(
            staged(rollup).at(schema), rollup.tables[0].at(schema)))
    await conn.execute(sql.SQL("CREATE TABLE {} (grp int2 NOT NULL, seq int4 NOT NULL, LIKE {})")
                       .format(_t(schema, CARRY), EVENTS.at(schema)))
    await conn.execute(sql.SQL(
        "INSERT INTO {} (topic, users, ends, groups, indexes, phase, generation)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)").format(_t(schema, RUN)),
        (run.topic, run.users, Jsonb(run.ends), Jsonb(run.groups),
         Jsonb(run.indexes), run.phase, run.generation))
    for group in range(len(run.groups)):
        await save_worker(conn, schema, WorkerCheckpoint(group))


async def load(conn: AsyncConnection[Any], schema: str) -> Run | None:
    """The interrupted replay's run in ``schema``, or ``None`` when there is none."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                             (_t(schema, RUN).as_string(conn),))
    if not (await cur.fetchone() or [False])[0]:
        return None
    cur = await conn.execute(sql.SQL(
        "SELECT topic, users, ends, groups, indexes, phase, generation, counts, started_at"
        " FROM {}").format(_t(schema, RUN)))
    row = await cur.fetchone()
    if row is None:
        return None
    topic, users, ends, groups, indexes, phase, generation, counts, started_at = row
    return Run(topic, users, {int(p): e for p, e in ends.items()}, groups, indexes, phase,
               generation, counts, started_at)


async def take_over(conn: AsyncConnection[Any], schema: str) -> int:
    """Raise the generation (waits for flushes in flight of an earlier start); the new one."""
    cur = await conn.execute(sql.SQL(
        "UPDATE {} SET generation = generation + 1 RETURNING generation").format(
            _t(schema, RUN)))
    return int((await cur.fetchone() or [0])[0])


def check_generation(conn: Connection[Any], schema: str, generation: int) -> None:
    """In a flush's transaction: still the current start? (Holds the row until commit.)"""
    found = (conn.execute(sql.SQL("SELECT generation FROM {} FOR SHARE").format(
        _t(schema, RUN))).fetchone() or [None])[0]
    if found != generation:
        raise Superseded(f"replay generation {generation} was superseded by {found}")


async def set_phase(conn: AsyncConnection[Any], schema: str, phase: str,
                    counts: Mapping[str, int] | None = None) -> None:
    assert phase in PHASES
    await conn.execute(sql.SQL("UPDATE {} SET phase = %s, counts = counts || %s").format(
        _t(schema, RUN)), (phase, Jsonb(dict(counts or {}))))


def _workers_query(schema: str) -> sql.Composed:
    return sql.SQL(
        "SELECT grp, next_offsets, bytes, last_times, events, duplicates, dead_letters, flushes,"
        " flushed_bytes FROM {} ORDER BY grp").format(_t(schema, WORKERS))


def _checkpoints(rows: list[tuple[Any, ...]]) -> list[WorkerCheckpoint]:
    return [WorkerCheckpoint(
        g, _ints(offsets), _ints(sizes),
        {int(p): datetime.fromisoformat(t) for p, t in times.items()},
        events, duplicates, dead, flushes, flushed)
        for g, offsets, sizes, times, events, duplicates, dead, flushes, flushed in rows]


async def workers(conn: AsyncConnection[Any], schema: str) -> list[WorkerCheckpoint]:
    cur = await conn.execute(_workers_query(schema))
    return _checkpoints(await cur.fetchall())


def worker(conn: Connection[Any], schema: str, group: int) -> WorkerCheckpoint:
    """One worker's checkpoint (read by the worker, on its own connection)."""
    return next(c for c in _checkpoints(conn.execute(_workers_query(schema)).fetchall())
                if c.group == group)


async def save_worker(conn: AsyncConnection[Any], schema: str, c: WorkerCheckpoint) -> None:
    await conn.execute(*_save_worker(schema, c))


def save_worker_sync(conn: Connection[Any], schema: str, c: WorkerCheckpoint) -> None:
    """:func:`save_worker` on a worker's connection, in its flush's transaction."""
    conn.execute(*_save_worker(schema, c))


def _save_worker(schema: str, c: WorkerCheckpoint) -> tuple[sql.Composed, tuple[Any, ...]]:
    return (sql.SQL(
        "INSERT INTO {} (grp, next_offsets, bytes, last_times, events, duplicates, dead_letters,"
        " flushes, flushed_bytes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (grp) DO UPDATE SET next_offsets = EXCLUDED.next_offsets,"
        " bytes = EXCLUDED.bytes, last_times = EXCLUDED.last_times, events = EXCLUDED.events,"
        " duplicates = EXCLUDED.duplicates, dead_letters = EXCLUDED.dead_letters,"
        " flushes = EXCLUDED.flushes, flushed_bytes = EXCLUDED.flushed_bytes"
    ).format(_t(schema, WORKERS)),
        (c.group, Jsonb(c.next_offsets), Jsonb(c.bytes),
         Jsonb({p: t.isoformat() for p, t in c.last_times.items()}), c.events,
         c.duplicates, c.dead_letters, c.flushes, c.flushed_bytes))


#: ``replay_carry``'s COPY layout: the worker, the event's place in its session, its row.
_CARRIED = ("grp", "seq", *SESSION_EVENT_COLUMNS)


def replace_carry(cur: Cursor[Any], schema: str, group: int,
                  sessions: Iterable[HeldSession]) -> None:
    """In a flush's transaction: the worker's carried sessions are now these."""
    cur.execute(sql.SQL("DELETE FROM {} WHERE grp = %s").format(_t(schema, CARRY)), (group,))
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            _t(schema, CARRY), sql.SQL(", ").join(map(sql.Identifier, _CARRIED)))) as copy:
        copy.set_types(("int2", "int4", *EVENTS.types))
        for session in sessions:
            for seq, (event, (p, o)) in enumerate(zip(session.history.events.values(),
                                                      session.where, strict=True)):
                copy.write_row((group, seq, *event_record(event, "held", p, o)))


def load_carry(conn: Connection[Any], schema: str, group: int) -> ShadowState:
    """The sessions a worker carried over its last flush, as it held them (a continued run)."""
    state = ShadowState()
    rows = conn.execute(sql.SQL("SELECT {} FROM {} WHERE grp = %s ORDER BY session_id, seq")
                        .format(sql.SQL(", ").join(map(sql.Identifier, SESSION_EVENT_COLUMNS)),
                                _t(schema, CARRY)), (group,))
    for record in rows:
        r = dict(zip(SESSION_EVENT_COLUMNS, record, strict=True))
        state.add(event_from_record(r), r["kafka_partition"], r["kafka_offset"])
    for session in state.sessions.values():
        session.carried = True
    state.events = state.duplicates = state.conflicts = 0  # counted when they first came
    return state


def _ints(d: Mapping[str, Any]) -> dict[int, int]:
    return {int(k): int(v) for k, v in d.items()}


def run_matches(run: Run, topic: str, users: Sequence[str] | None) -> str | None:
    """Why an interrupted run cannot be continued with these options (``None``: it can)."""
    if run.topic != topic:
        return f"it replays topic {run.topic!r}, not {topic!r}"
    mine = sorted(users) if users is not None else None
    theirs = sorted(run.users) if run.users is not None else None
    if mine != theirs:
        return f"it was started with --users {','.join(theirs) if theirs else '(all users)'}"
    return None

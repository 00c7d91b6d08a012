"""Sessions written in parts: folded whole once every bulk worker is done.

A worker flushes what it holds when its memory share is full, so a session whose events fall on
both sides of a flush is written twice, each part derived alone; so is a session whose events
sit on partitions of two workers (events naming different users, or partitions added later).
``replay_sessions`` has a row per part, so these sessions are the ones with more than one row.
In a log whose sessions' events come close together they are few: the sessions open at each
flush.

1. :func:`set_aside` (one transaction) moves the split sessions' events and rows out of the
   shadow tables into ``replay_split_events`` / ``replay_split_rows``: the tables' keys can then
   be rebuilt (parts may hold the same event twice, or two rows of one session); meanwhile
   :func:`load_staged` adds up each rollup's staged partial sums (one transaction each);
2. the indexes are rebuilt, each table's as soon as it is loaded (:mod:`.replayer`);
3. :func:`refold` (one transaction) derives the rollups' other tables (``finish_bulk``), folds
   each such session from all its events — in log order
   within a partition, partitions in order — with the projector's ``derive``, writes its events
   and row, and moves every rollup by *whole row minus the parts' rows*, with the live
   projector's own upserts (which delete rows that fall to zero and recompute a user's newest
   start); it sets the shadow's positions in the same transaction.

Each step is one transaction and records the next phase in it, so a killed replay redoes at
most the step it was in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from focus_sessions.consumers.replay import checkpoint, shadow_sql
from focus_sessions.consumers.replay.memory import ShadowState, build
from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.readmodels import ROLLUPS, Rollup
from focus_sessions.projections.readmodels.base import Sums
from focus_sessions.projections.readmodels.sessions import (
    EVENTS,
    SESSION_EVENT_COLUMNS,
    SESSIONS,
    event_from_record,
    event_record,
    session_record,
)

SPLIT, SPLIT_EVENTS, SPLIT_ROWS = "replay_split", "replay_split_events", "replay_split_rows"
#: Sessions folded between two writes of the refold (bounds its memory).
CHUNK = 5_000


@dataclass(slots=True)
class Refolded:
    sessions: int = 0
    #: Events two parts both held (delivered again after a flush): stored once.
    duplicates: int = 0
    #: Events whose id two parts gave different facts: the later is a contradiction.
    conflicts: int = 0


def _t(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


async def load_staged(conn: AsyncConnection[Any], schema: str, rollup: Rollup) -> None:
    """Add up a rollup's staged sums into its table, in one transaction that drops the staged
    table: done once, skipped when continued after it."""
    table = checkpoint.staged(rollup)
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("SELECT to_regclass(%s)", (table.at(schema).as_string(conn),))
        if (await cur.fetchone() or [None])[0] is None:
            return
        await rollup.load_staged(cur, schema, table.at(schema))
        await cur.execute(sql.SQL("DROP TABLE {}").format(table.at(schema)))


async def set_aside(conn: AsyncConnection[Any], schema: str) -> int:
    """Move every split session's events and rows aside, in one transaction (skipped when
    continued after it); return how many sessions were split."""
    async with conn.transaction():
        cur = await conn.execute("SELECT to_regclass(%s)",
                                 (_t(schema, SPLIT).as_string(conn),))
        if (await cur.fetchone() or [None])[0] is None:
            await conn.execute(sql.SQL(
                "CREATE TABLE {split} AS SELECT session_id FROM {parts}"
                " GROUP BY session_id HAVING count(*) > 1;"
                "CREATE TABLE {events} (LIKE {live_events});"
                "CREATE TABLE {rows} (LIKE {live_rows})"
            ).format(split=_t(schema, SPLIT), parts=_t(schema, checkpoint.SESSIONS),
                     events=_t(schema, SPLIT_EVENTS), live_events=EVENTS.at(schema),
                     rows=_t(schema, SPLIT_ROWS), live_rows=SESSIONS.at(schema)))
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                _t(schema, SPLIT)))
            if (await cur.fetchone() or [0])[0]:
                for target, table in ((SPLIT_EVENTS, EVENTS), (SPLIT_ROWS, SESSIONS)):
                    await conn.execute(sql.SQL(
                        "WITH gone AS (DELETE FROM {table} t USING {split} x"
                        " WHERE t.session_id = x.session_id RETURNING t.*)"
                        " INSERT INTO {target} SELECT * FROM gone"
                    ).format(table=table.at(schema), split=_t(schema, SPLIT),
                             target=_t(schema, target)))
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_t(schema, SPLIT)))
        return int((await cur.fetchone() or [0])[0])


async def refold(
    conn: AsyncConnection[Any], schema: str, topic: str, ends: Mapping[int, int],
    last_times: Mapping[int, datetime],
) -> Refolded:
    """Derive the rollups' other tables, fold the set-aside sessions whole and set the
    positions (caller's transaction)."""
    async with conn.cursor() as cur:
        for rollup in ROLLUPS:
            await rollup.finish_bulk(cur, schema)
    done = Refolded()
    columns = sql.SQL(", ").join(map(sql.Identifier, SESSION_EVENT_COLUMNS))
    state, current = ShadowState(), None
    async with conn.cursor(name="replay_split") as reader:
        await reader.execute(sql.SQL(
            "SELECT {} FROM {} ORDER BY session_id, kafka_partition, kafka_offset"
        ).format(columns, _t(schema, SPLIT_EVENTS)))
        while batch := await reader.fetchmany(5000):
            for record in batch:
                r = dict(zip(SESSION_EVENT_COLUMNS, record, strict=True))
                if r["session_id"] != current and len(state.sessions) >= CHUNK:
                    await _write(conn, schema, state, done)
                    state = ShadowState()
                current = r["session_id"]
                state.add(event_from_record(r), r["kafka_partition"], r["kafka_offset"])
    await _write(conn, schema, state, done)
    await shadow_sql.set_positions(conn, schema, topic, ends, last_times)
    await conn.execute(sql.SQL("DROP TABLE {}, {}, {}").format(
        _t(schema, SPLIT), _t(schema, SPLIT_EVENTS), _t(schema, SPLIT_ROWS)))
    return done


async def _write(conn: AsyncConnection[Any], schema: str, state: ShadowState,
                 done: Refolded) -> None:
    if not state.sessions:
        return
    ids = [next(iter(s.history.events.values())).data.session_id
           for s in state.sessions.values()]
    cur = await conn.execute(sql.SQL("SELECT {} FROM {} WHERE session_id = ANY(%s)").format(
        SESSIONS.column_list(), _t(schema, SPLIT_ROWS)), (ids,))
    sums: dict[str, Sums] = {r.name: {} for r in ROLLUPS}
    for part in await cur.fetchall():
        old = SessionRow(*part)
        for rollup in ROLLUPS:
            rollup.change(sums[rollup.name], old, None)
    out = build(state, event_record, session_record)
    for rollup in ROLLUPS:
        rollup.merge(sums[rollup.name], out.rollups.sums[rollup.name])
    async with conn.cursor() as c:
        for table, rows in ((EVENTS, out.events), (SESSIONS, out.sessions)):
            async with c.copy(table.copy_into(schema)) as copy:
                copy.set_types(table.types)
                for row in rows:
                    await copy.write_row(row)
        for rollup in ROLLUPS:
            await rollup.apply(c, schema, sums[rollup.name])
    done.sessions += len(state.sessions)
    done.duplicates += state.duplicates
    done.conflicts += state.conflicts

"""SQL read/write of the read models for the projector: one batch, one transaction.

Positions are compare-and-set (``WHERE next_offset = expected``) and written *first*, so a
projector that lost its partitions in a rebalance (a zombie) blocks on the row lock and then
fails the check instead of applying a batch twice. All SQL is parameterised; table names are
composed with :mod:`psycopg.sql` identifiers, never string formatting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql

from focus_sessions.contracts.events import Event
from focus_sessions.projections import notify
from focus_sessions.projections.batch import Plan
from focus_sessions.projections.fold import History, SessionRow, extend
from focus_sessions.projections.readmodels import POSITIONS, ROLLUPS, UNSTORABLE
from focus_sessions.projections.readmodels.sessions import (
    EVENTS,
    SESSION_COLUMNS,
    SESSION_EVENT_COLUMNS,
    SESSION_EVENT_TYPES,
    SESSION_TYPES,
    SESSIONS,
    event_from_record,
    event_record,
    session_record,
)
from focus_sessions.projections.staging import stage


@dataclass(frozen=True, slots=True)
class Unstorable:
    """An event PostgreSQL refused (a data, constraint or encoding error) although it passed
    validation: recorded in ``unstorable_events`` with the batch, so a replay skips it too."""

    partition: int
    offset: int
    event_id: UUID
    session_id: UUID
    detail: str


class Fenced(RuntimeError):
    """Another projector moved a partition's position: this batch must not be applied."""


@dataclass(frozen=True, slots=True)
class Advance:
    """Move one partition from ``expected`` to ``next_offset`` (compare-and-set)."""

    partition: int
    expected: int
    next_offset: int
    last_event_time: datetime | None


class ProjectionRepository:
    """Reads histories and writes one planned batch, in the tables of one schema."""

    def __init__(self, schema: str = "public") -> None:
        self.schema = schema

    def _t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    async def ensure_positions(
        self, conn: AsyncConnection[Any], topic: str, partitions: Iterable[int]
    ) -> dict[int, int]:
        """Create missing position rows (offset 0) and return every partition's next offset.

        Readers are told to read the positions again (a flush notice): a partition can have
        moved while no projector owned it (a replay's swap hands over positions)."""
        parts = sorted(partitions)
        async with conn.cursor() as cur:
            await cur.execute(
                sql.SQL(
                    "INSERT INTO {} (topic, kafka_partition, next_offset)"
                    " SELECT %s, p, 0 FROM unnest(%s::int[]) AS p ON CONFLICT DO NOTHING"
                ).format(self._t(POSITIONS)),
                (topic, parts),
            )
            await cur.execute(
                sql.SQL(
                    "SELECT kafka_partition, next_offset FROM {}"
                    " WHERE topic = %s AND kafka_partition = ANY(%s)"
                ).format(self._t(POSITIONS)),
                (topic, parts),
            )
            stored = dict(await cur.fetchall())
            await notify.send(cur, notify.flush_notice(self.schema))
            return stored

    async def unstorable_positions(
        self, conn: AsyncConnection[Any], topic: str
    ) -> set[tuple[int, int]]:
        """``(partition, offset)`` of every event the live projector recorded as unstorable."""
        cur = await conn.execute(
            sql.SQL("SELECT kafka_partition, kafka_offset FROM {} WHERE topic = %s").format(
                self._t(UNSTORABLE)), (topic,))
        return {(p, o) for p, o in await cur.fetchall()}

    async def load_histories(
        self, conn: AsyncConnection[Any], session_ids: Sequence[UUID]
    ) -> dict[UUID, History]:
        """Every stored event of the given sessions, rebuilt into histories."""
        if not session_ids:
            return {}
        async with conn.cursor() as cur:
            await cur.execute(
                sql.SQL("SELECT {} FROM {} WHERE session_id = ANY(%b)").format(
                    sql.SQL(", ").join(map(sql.Identifier, SESSION_EVENT_COLUMNS)),
                    self._t(EVENTS.name),
                ),
                (list(session_ids),),
            )
            grouped: dict[UUID, list[Event]] = {}
            for record in await cur.fetchall():
                event = event_from_record(dict(zip(SESSION_EVENT_COLUMNS, record, strict=True)))
                grouped.setdefault(event.data.session_id, []).append(event)
        return {sid: extend(History(), events)[0] for sid, events in grouped.items()}

    async def write(
        self, conn: AsyncConnection[Any], topic: str, plan: Plan, advances: Sequence[Advance],
        *, insert_new: bool = True, unstorable: Sequence[Unstorable] = (),
    ) -> None:
        """Apply a planned batch and move the positions, inside the caller's transaction.

        Sessions the stored history shows no start for cannot have a row yet, so their rows
        are COPYed straight in (a third cheaper for PostgreSQL than the upsert). Should the
        table hold such a row anyway (edited by hand), that COPY fails with a unique
        violation; the caller then retries the batch with ``insert_new=False``, which upserts
        every row.
        """
        await self._advance(conn, topic, advances)
        async with conn.cursor() as cur:
            if plan.new_events:
                async with cur.copy(self._copy(EVENTS.name, SESSION_EVENT_COLUMNS)) as copy:
                    copy.set_types(SESSION_EVENT_TYPES)
                    for new in plan.new_events:
                        loc = new.located
                        await copy.write_row(
                            event_record(loc.event, new.status, loc.partition, loc.offset)
                        )
            if insert_new and plan.new_rows:
                async with cur.copy(self._copy(SESSIONS.name, SESSION_COLUMNS)) as copy:
                    copy.set_types(SESSION_TYPES)
                    for row in plan.new_rows:
                        await copy.write_row(row)
            upserts = plan.changed_rows if insert_new else plan.rows
            if plan.status_changes:
                await cur.executemany(
                    sql.SQL(
                        "UPDATE {} SET status = %s WHERE session_id = %s AND event_id = %s"
                    ).format(self._t(EVENTS.name)),
                    [(status.value, sid, eid) for sid, eid, status in plan.status_changes],
                )
            if upserts:
                await self._upsert_sessions(cur, upserts)
            for rollup in ROLLUPS:
                await rollup.apply(cur, self.schema, plan.rollups[rollup.name])
            if unstorable:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (topic, kafka_partition, kafka_offset, event_id,"
                        " session_id, detail) VALUES (%s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING"
                    ).format(self._t(UNSTORABLE)),
                    [(topic, u.partition, u.offset, u.event_id, u.session_id,
                      u.detail.replace("\x00", "")) for u in unstorable],
                )
            await notify.send(cur, notify.batch_notice(
                self.schema, topic,
                [notify.Moved(a.partition, a.next_offset, a.last_event_time) for a in advances],
                plan.users))

    def _copy(self, table: str, columns: Sequence[str]) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            self._t(table), sql.SQL(", ").join(map(sql.Identifier, columns)))

    async def _advance(
        self, conn: AsyncConnection[Any], topic: str, advances: Sequence[Advance]
    ) -> None:
        async with conn.cursor() as cur:
            for adv in sorted(advances, key=lambda a: a.partition):
                await cur.execute(
                    sql.SQL(
                        "UPDATE {} SET next_offset = %s,"
                        " last_event_time = GREATEST(last_event_time, %s),"
                        " updated_at = clock_timestamp()"
                        " WHERE topic = %s AND kafka_partition = %s AND next_offset = %s"
                    ).format(self._t(POSITIONS)),
                    (adv.next_offset, adv.last_event_time, topic, adv.partition, adv.expected),
                )
                if cur.rowcount != 1:
                    raise Fenced(
                        f"{topic}[{adv.partition}] is no longer at offset {adv.expected}: "
                        "another projector owns it now"
                    )

    async def _upsert_sessions(self, cur: Any, rows: Sequence[SessionRow]) -> None:
        cols = sql.SQL(", ").join(map(sql.Identifier, SESSION_COLUMNS))
        await stage(cur, self._t(SESSIONS.name), "focus_sessions_batch", SESSION_COLUMNS,
                    SESSION_TYPES, map(session_record, rows))
        updates = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in SESSION_COLUMNS[1:]
        )
        await cur.execute(
            sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM focus_sessions_batch"
                " ON CONFLICT (session_id) DO UPDATE SET {}"
            ).format(self._t(SESSIONS.name), cols, cols, updates)
        )


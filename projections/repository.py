"""SQL read/write of the read models for the projector: one batch, one transaction.

Positions are compare-and-set (``WHERE next_offset = expected``) and written *first*, so a
projector that lost its partitions in a rebalance (a zombie) blocks on the row lock and then
fails the check instead of applying a batch twice. All SQL is parameterised; table names are
composed with :mod:`psycopg.sql` identifiers, never string formatting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from psycopg import AsyncConnection, sql

from focus_sessions.contracts.events import (
    EndedEvent,
    Event,
    InterruptedEvent,
    SessionEndedV2,
    SessionInterruptedV1,
    SessionStartedV1,
    StartedEvent,
)
from focus_sessions.projections import notify
from focus_sessions.projections.batch import Plan
from focus_sessions.projections.fold import History, SessionRow, extend
from focus_sessions.projections.rollups import UserDelta
from focus_sessions.projections.staging import stage
from focus_sessions.projections.weekly_store import apply_weekly
from focus_sessions.projections.wire import (
    KINDS,
    AnyEvent,
    EndedData,
    InterruptedData,
    StartedData,
    kind_of,
)

SESSION_EVENT_COLUMNS = (
    "session_id", "event_id", "user_id", "kind", "status", "occurred_at", "recorded_at",
    "source", "step_id", "duration_minutes", "time_zone", "reason", "outcome",
    "reported_interruptions", "focus_quality", "kafka_partition", "kafka_offset",
)
SESSION_EVENT_TYPES = (
    "uuid", "uuid", "varchar", "text", "text", "timestamptz", "timestamptz", "text", "uuid",
    "int4", "text", "text", "text", "int4", "int2", "int4", "int8",
)
SESSION_COLUMNS: tuple[str, ...] = SessionRow._fields
SESSION_TYPES = (
    "uuid", "varchar", "uuid", "timestamptz", "timestamptz", "int4", "bool", "int4",
    "timestamptz", "numeric", "text", "int2", "int4", "int4", "text", "uuid", "uuid",
)
STATS_TYPES = ("varchar", "int8", "int8", "int8", "numeric", "int8", "int8", "timestamptz")
STATS_SUMS = (
    "sessions_started", "sessions_ended", "sessions_completed", "total_focus_seconds",
    "total_planned_minutes", "total_interruptions",
)
STATS_COLUMNS = ("user_id", *STATS_SUMS, "last_session_at")


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
                ).format(self._t("projector_positions")),
                (topic, parts),
            )
            await cur.execute(
                sql.SQL(
                    "SELECT kafka_partition, next_offset FROM {}"
                    " WHERE topic = %s AND kafka_partition = ANY(%s)"
                ).format(self._t("projector_positions")),
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
                self._t("unstorable_events")), (topic,))
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
                    self._t("session_events"),
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
                async with cur.copy(self._copy("session_events", SESSION_EVENT_COLUMNS)) as copy:
                    copy.set_types(SESSION_EVENT_TYPES)
                    for new in plan.new_events:
                        loc = new.located
                        await copy.write_row(
                            event_record(loc.event, new.status, loc.partition, loc.offset)
                        )
            if insert_new and plan.new_rows:
                async with cur.copy(self._copy("focus_sessions", SESSION_COLUMNS)) as copy:
                    copy.set_types(SESSION_TYPES)
                    for row in plan.new_rows:
                        await copy.write_row(row)
            upserts = plan.changed_rows if insert_new else plan.rows
            if plan.status_changes:
                await cur.executemany(
                    sql.SQL(
                        "UPDATE {} SET status = %s WHERE session_id = %s AND event_id = %s"
                    ).format(self._t("session_events")),
                    [(status.value, sid, eid) for sid, eid, status in plan.status_changes],
                )
            if upserts:
                await self._upsert_sessions(cur, upserts)
            if plan.deltas:
                await apply_user_deltas(cur, self.schema, plan.deltas)
            if plan.weekly:
                await apply_weekly(cur, self.schema, plan.weekly)
            if unstorable:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (topic, kafka_partition, kafka_offset, event_id,"
                        " session_id, detail) VALUES (%s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING"
                    ).format(self._t("unstorable_events")),
                    [(topic, u.partition, u.offset, u.event_id, u.session_id,
                      u.detail.replace("\x00", "")) for u in unstorable],
                )
            await notify.send(cur, notify.batch_notice(
                self.schema, topic,
                [notify.Moved(a.partition, a.next_offset, a.last_event_time) for a in advances],
                plan.deltas))

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
                    ).format(self._t("projector_positions")),
                    (adv.next_offset, adv.last_event_time, topic, adv.partition, adv.expected),
                )
                if cur.rowcount != 1:
                    raise Fenced(
                        f"{topic}[{adv.partition}] is no longer at offset {adv.expected}: "
                        "another projector owns it now"
                    )

    async def _upsert_sessions(self, cur: Any, rows: Sequence[SessionRow]) -> None:
        cols = sql.SQL(", ").join(map(sql.Identifier, SESSION_COLUMNS))
        await stage(cur, self._t("focus_sessions"), "focus_sessions_batch", SESSION_COLUMNS,
                    SESSION_TYPES, map(session_record, rows))
        updates = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in SESSION_COLUMNS[1:]
        )
        await cur.execute(
            sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM focus_sessions_batch"
                " ON CONFLICT (session_id) DO UPDATE SET {}"
            ).format(self._t("focus_sessions"), cols, cols, updates)
        )

async def apply_user_deltas(cur: Any, schema: str, deltas: Mapping[str, UserDelta]) -> None:
    """Add per-user deltas to ``schema.focus_user_stats`` (inside the caller's transaction).

    Staged by binary COPY, then one upsert in user order (a stable lock order)."""
    users = sorted(deltas)
    table = sql.Identifier(schema, "focus_user_stats")
    cols = sql.SQL(", ").join(map(sql.Identifier, STATS_COLUMNS))
    sums = sql.SQL(", ").join(
        sql.SQL("{c} = {t}.{c} + EXCLUDED.{c}").format(
            c=sql.Identifier(c), t=sql.Identifier("focus_user_stats")
        )
        for c in STATS_SUMS
    )
    await stage(cur, table, "focus_user_stats_batch", STATS_COLUMNS,
                STATS_TYPES, (stats_record(user, deltas[user]) for user in users))
    await cur.execute(
        sql.SQL(
            "INSERT INTO {target} AS focus_user_stats ({cols})"
            " SELECT {cols} FROM focus_user_stats_batch ORDER BY user_id"
            " ON CONFLICT (user_id) DO UPDATE SET {sums}, last_session_at ="
            " GREATEST(focus_user_stats.last_session_at, EXCLUDED.last_session_at)"
        ).format(target=table, cols=cols, sums=sums)
    )
    gone = [u for u in users if deltas[u].sessions_started < 0]
    if gone:  # a user whose last session moved to another user has no rollup, as on replay
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
            ).format(stats=table, sessions=sql.Identifier(schema, "focus_sessions")),
            (recompute,),
        )


def stats_record(user: str, d: UserDelta) -> tuple[Any, ...]:
    """One user's delta in ``STATS_COLUMNS`` order."""
    return (user, d.sessions_started, d.sessions_ended, d.sessions_completed, d.focus_seconds,
            d.planned_minutes, d.interruptions, d.last_session_at)


def session_record(row: SessionRow) -> tuple[Any, ...]:
    return row  # a SessionRow is already a tuple in SESSION_COLUMNS order


def event_record(event: AnyEvent, status: str, partition: int, offset: int) -> tuple[Any, ...]:
    """One ``session_events`` row: every field of the event's newest version (the envelope's
    constants and its subject are rebuilt, not stored), so that :func:`event_from_record`
    rebuilds it whole; ``tests/unit/test_one_contract.py`` fails when the contract gains a field
    that is not stored here (docs/producing.md, "Evolving event types").

    Each row is written out whole (no shared prefix unpacked into it): a replay makes one per
    event of the log, and building it in one go takes half the time."""
    d = event.data
    kind = KINDS.get(type(event)) or kind_of(event)
    if kind == "started":
        s = cast("StartedData | SessionStartedV1", d)
        return (s.session_id, event.id, s.user_id, "started", status, s.started_at, event.time,
                event.source, s.step_id, s.duration_minutes, s.time_zone, None, None, None, None,
                partition, offset)
    if kind == "interrupted":
        i = cast("InterruptedData | SessionInterruptedV1", d)
        return (i.session_id, event.id, i.user_id, "interrupted", status, i.interrupted_at,
                event.time, event.source, None, None, None, i.reason, None, None, None,
                partition, offset)
    e = cast("EndedData | SessionEndedV2", d)
    return (e.session_id, event.id, e.user_id, "ended", status, e.ended_at, event.time,
            event.source, None, None, None, None, e.outcome, e.reported_interruptions,
            e.focus_quality, partition, offset)


def event_from_record(r: Mapping[str, Any]) -> Event:
    """Rebuild a stored event (already validated when first accepted: no re-validation)."""
    sid: UUID = r["session_id"]
    envelope = {"id": r["event_id"], "source": r["source"], "time": r["recorded_at"],
                "subject": str(sid), "specversion": "1.0",
                "datacontenttype": "application/json"}
    kind = r["kind"]
    if kind == "started":
        return StartedEvent.model_construct(**envelope, data=SessionStartedV1.model_construct(
            session_id=sid, user_id=r["user_id"], step_id=r["step_id"],
            duration_minutes=r["duration_minutes"], started_at=r["occurred_at"],
            time_zone=r["time_zone"]))
    if kind == "interrupted":
        return InterruptedEvent.model_construct(**envelope,
            data=SessionInterruptedV1.model_construct(
                session_id=sid, user_id=r["user_id"], interrupted_at=r["occurred_at"],
                reason=r["reason"]))
    return EndedEvent.model_construct(**envelope, data=SessionEndedV2.model_construct(
        session_id=sid, user_id=r["user_id"], ended_at=r["occurred_at"], outcome=r["outcome"],
        reported_interruptions=r["reported_interruptions"], focus_quality=r["focus_quality"]))

"""The sessions read model: ``focus_sessions`` (one row per session whose start is known) and
``session_events`` (every accepted event of a session, with its status).

This module owns their names, columns and types, and the mapping between an event and its
``session_events`` row in both directions; :mod:`focus_sessions.projections.repository` writes
them live (one batch, one transaction), :mod:`focus_sessions.consumers.replay` bulk-loads them,
and ``focus verify`` checks every row against :func:`focus_sessions.projections.fold.derive` of
the session's stored events. The rollups (:mod:`.user_totals`, :mod:`.weekly`, :mod:`.daily`)
are sums over ``focus_sessions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from uuid import UUID

from focus_sessions.contracts.events import (
    EndedEvent,
    Event,
    InterruptedEvent,
    SessionEndedV2,
    SessionInterruptedV1,
    SessionStartedV1,
    StartedEvent,
)
from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.readmodels.base import Table
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

EVENTS = Table("session_events", SESSION_EVENT_COLUMNS, SESSION_EVENT_TYPES,
               key=("session_id", "event_id"))
SESSIONS = Table("focus_sessions", SESSION_COLUMNS, SESSION_TYPES, key=("session_id",))


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

"""Builders for valid events: what a producing service calls instead of writing JSON by hand."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

from focus_sessions.contracts.events import (
    DEFAULT_PLANNED_MINUTES,
    EndedEvent,
    EndedEventV1,
    InterruptedEvent,
    SessionEndedV1,
    SessionEndedV2,
    SessionInterruptedV1,
    SessionStartedV1,
    StartedEvent,
)

DEFAULT_SOURCE = "urn:focus-sessions:publisher"


def started(
    user_id: str,
    started_at: datetime,
    *,
    session_id: UUID | None = None,
    step_id: UUID | None = None,
    duration_minutes: int = DEFAULT_PLANNED_MINUTES,
    time_zone: str | None = None,
    event_id: UUID | None = None,
    source: str = DEFAULT_SOURCE,
    time: datetime | None = None,
) -> StartedEvent:
    sid = session_id or uuid4()
    return StartedEvent(
        id=event_id or uuid4(), source=source, time=time or started_at, subject=str(sid),
        data=SessionStartedV1(
            session_id=sid, user_id=user_id, step_id=step_id,
            duration_minutes=duration_minutes, started_at=started_at, time_zone=time_zone,
        ),
    )


def interrupted(
    user_id: str,
    session_id: UUID,
    interrupted_at: datetime,
    *,
    reason: str | None = None,
    event_id: UUID | None = None,
    source: str = DEFAULT_SOURCE,
    time: datetime | None = None,
) -> InterruptedEvent:
    return InterruptedEvent(
        id=event_id or uuid4(), source=source, time=time or interrupted_at,
        subject=str(session_id),
        data=SessionInterruptedV1(
            session_id=session_id, user_id=user_id, interrupted_at=interrupted_at, reason=reason
        ),
    )


def ended(
    user_id: str,
    session_id: UUID,
    ended_at: datetime,
    *,
    completed: bool = True,
    reported_interruptions: int | None = None,
    focus_quality: int | None = None,
    outcome: str | None = None,
    event_id: UUID | None = None,
    source: str = DEFAULT_SOURCE,
    time: datetime | None = None,
) -> EndedEvent:
    """The newest ``ended`` (v2)."""
    return EndedEvent(
        id=event_id or uuid4(), source=source, time=time or ended_at, subject=str(session_id),
        data=SessionEndedV2(
            session_id=session_id, user_id=user_id, ended_at=ended_at,
            outcome=outcome or ("completed" if completed else "abandoned"),
            reported_interruptions=reported_interruptions, focus_quality=focus_quality,
        ),
    )


def ended_v1(
    user_id: str,
    session_id: UUID,
    ended_at: datetime,
    *,
    completed: bool = True,
    interruptions: int | None = None,
    event_id: UUID | None = None,
    source: str = DEFAULT_SOURCE,
    time: datetime | None = None,
) -> EndedEventV1:
    """The original ``ended`` (v1), still accepted and upcast on the way in."""
    return EndedEventV1(
        id=event_id or uuid4(), source=source, time=time or ended_at, subject=str(session_id),
        data=SessionEndedV1(
            session_id=session_id, user_id=user_id, ended_at=ended_at, completed=completed,
            interruptions=interruptions,
        ),
    )

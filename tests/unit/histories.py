"""Small builders for session histories used by the unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from focus_sessions.contracts.events import Event
from focus_sessions.producers import events as ev

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def pomodoro(
    user: str = "ada",
    *,
    session_id: UUID | None = None,
    interruptions_at: tuple[float, ...] = (5,),
    end_at: float | None = 25,
    completed: bool = True,
    reported: int | None = None,
) -> list[Event]:
    """A session's events in natural order: start at T0, interruptions, end."""
    sid = session_id or uuid4()
    events: list[Event] = [ev.started(user, T0, session_id=sid, time_zone="Europe/Paris")]
    events += [ev.interrupted(user, sid, minutes(m), reason="phone") for m in interruptions_at]
    if end_at is not None:
        events.append(
            ev.ended(
                user, sid, minutes(end_at), completed=completed, reported_interruptions=reported
            )
        )
    return events

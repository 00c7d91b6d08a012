"""The HTTP shapes of the API: the original spec's ``FocusSession`` plus what the projection adds.

Built from the read rows with ``model_construct`` (the database already holds validated data)
and serialised by pydantic-core straight to bytes.

Every fractional figure (minutes, rates, averages) goes through :func:`figure`: computed from
the exact stored sums and rounded once, to 4 decimal places, half up — what PostgreSQL's
``round(numeric, 4)`` gives over the same tables (docs/api.md, "Figures and rounding").
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from focus_sessions.projections.queries import (
    DayBucket,
    Freshness,
    OrgDay,
    SessionRecord,
    UserTotals,
    WeekBucket,
)

#: The rule of :func:`figure`, quoted in the Field descriptions (and in docs/api.md).
ROUNDED = "Rounded once to 4 decimal places (half up) from the exact stored values."


class PartitionPosition(BaseModel):
    partition: int
    next_offset: int = Field(description="Offset of the next event the projector will apply.")
    last_event_time: datetime | None = Field(description="Newest event time applied so far.")


class FreshnessOut(BaseModel):
    """How far the projection has got when this response was read."""

    projected_through: datetime | None = Field(
        description="Newest event time applied on any partition (null before the first event)."
    )
    positions: list[PartitionPosition]


class FocusSession(BaseModel):
    """The original spec's ``FocusSession``, plus the projection's extras."""

    session_id: UUID
    user_id: str
    step_id: UUID | None
    started_at: datetime
    ended_at: datetime | None
    duration_minutes: int = Field(description="Planned length in minutes.")
    completed: bool
    interruptions: int = Field(description="max(interruption events, count the timer reported)")
    focus_minutes: float | None = Field(
        description=f"Actual elapsed minutes; null until ended. {ROUNDED}")
    outcome: str | None = Field(description="completed, abandoned or cancelled; null if open.")
    focus_quality: int | None
    time_zone: str | None


class SessionOut(FocusSession):
    freshness: FreshnessOut


class SessionPageOut(BaseModel):
    sessions: list[FocusSession] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")
    freshness: FreshnessOut


class DayOut(BaseModel):
    day: date
    sessions_started: int
    sessions_ended: int
    sessions_completed: int
    focus_minutes: float = Field(description=f"Sum over the day's ended sessions. {ROUNDED}")
    interruptions: int


class DailyOut(BaseModel):
    time_zone: str = Field(description="Zone the days are cut in: `tz`, the user's, or UTC.")
    from_: date = Field(alias="from")
    to: date
    days: list[DayOut]


class AnalyticsOut(BaseModel):
    """All-time figures from the rollup; ``daily`` only when ``from``/``to`` was asked for."""

    user_id: str
    sessions_started: int
    sessions_ended: int
    sessions_completed: int
    completion_rate: float | None = Field(
        description=f"completed / ended; null if none ended. {ROUNDED}")
    avg_duration_minutes: float | None = Field(
        description=f"focus minutes / ended sessions; null if none ended. {ROUNDED}")
    total_focus_minutes: float = Field(description=f"Sum over ended sessions. {ROUNDED}")
    interruptions_total: int
    interruptions_per_session: float | None = Field(
        description=f"total / sessions started; null if none started. {ROUNDED}")
    last_session_at: datetime | None
    daily: DailyOut | None = None
    freshness: FreshnessOut


class OrgDayOut(BaseModel):
    day: date = Field(description="A UTC day; sessions count on the day they started.")
    active_users: int = Field(description="Distinct users with a session started that day.")
    sessions_started: int
    sessions_ended: int = Field(description="Of the day's sessions, those ended so far.")
    sessions_completed: int
    focus_minutes: float = Field(description=f"Sum over the day's ended sessions. {ROUNDED}")
    interruptions: int = Field(description="Of the day's sessions.")


class OrgDailyOut(BaseModel):
    """Org-wide daily totals, from the ``focus_daily_totals`` read model (migration 0004,
    backfilled by replay, checked by ``focus verify``)."""

    from_: date = Field(alias="from")
    to: date
    days: list[OrgDayOut] = Field(description="Every day of the range, oldest first; a day "
                                              "without sessions is all zeros.")
    freshness: FreshnessOut


class WeekOut(BaseModel):
    week_start: date = Field(description="Monday of the week, in the user's time zone.")
    sessions_ended: int
    sessions_completed: int
    focus_minutes: float = Field(description=f"Sum over the week's ended sessions. {ROUNDED}")
    completion_rate: float | None = Field(
        description=f"completed / ended; null if none ended. {ROUNDED}")
    avg_duration_minutes: float | None = Field(
        description=f"focus minutes / ended sessions; null if none ended. {ROUNDED}")


class WeeklyOut(BaseModel):
    """Weekly focus, from the ``focus_user_weekly`` rollup (added by migration 0002 and
    backfilled by replay). Weeks without an ended session are omitted."""

    user_id: str
    weeks: list[WeekOut] = Field(description="Newest first.")
    freshness: FreshnessOut


class AcceptedOut(BaseModel):
    """The event is in the log but not yet projected: read ``location`` later."""

    status: Literal["accepted"] = "accepted"
    session_id: UUID
    location: str
    partition: int
    offset: int


class WriteUnavailableOut(BaseModel):
    """A write that could not be completed (``503``, with ``Retry-After``)."""

    detail: str = Field(description="What failed, and what to do.")
    published: Literal["no", "unknown"] | None = Field(
        None, description="no: the event was not published; unknown: it may have been (Kafka "
                          "did not acknowledge in time): retry with the same Idempotency-Key.")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unavailable"]
    broker: Literal["connected", "not connected"]
    analytics_cache: Literal["online", "offline", "off"] = Field(
        description="online: serving; offline: its LISTEN connection is down, every read goes "
                    "to PostgreSQL; off: FOCUS_API_CACHE_ENTRIES=0.")


_PLACES = Decimal("0.0001")


def figure(numerator: Decimal | int, denominator: int = 1) -> float:
    """``numerator / denominator``, rounded once to 4 decimal places, half up (:data:`ROUNDED`).

    Decimal arithmetic on the stored ``NUMERIC`` sums, so a figure never depends on binary
    floats or on another figure already rounded: the same sums give the same answer in every
    route, and ``round(numerator / denominator, 4)`` in PostgreSQL gives it too."""
    return float((Decimal(numerator) / denominator).quantize(_PLACES, ROUND_HALF_UP))


def _minutes(seconds: Decimal | int, sessions: int = 1) -> float:
    return figure(seconds, 60 * sessions)


def freshness(f: Freshness) -> FreshnessOut:
    return FreshnessOut.model_construct(
        projected_through=f.projected_through,
        positions=[PartitionPosition.model_construct(
            partition=p.partition, next_offset=p.next_offset, last_event_time=p.last_event_time)
            for p in f.positions],
    )


def session(r: SessionRecord) -> FocusSession:
    return FocusSession.model_construct(
        session_id=r.session_id, user_id=r.user_id, step_id=r.step_id,
        started_at=r.started_at, ended_at=r.ended_at, duration_minutes=r.duration_minutes,
        completed=r.completed, interruptions=r.interruptions,
        focus_minutes=None if r.focus_seconds is None else _minutes(r.focus_seconds),
        outcome=r.outcome, focus_quality=r.focus_quality, time_zone=r.time_zone,
    )


def session_out(r: SessionRecord, f: Freshness) -> SessionOut:
    base = session(r)
    return SessionOut.model_construct(**dict(base), freshness=freshness(f))


def analytics(user_id: str, t: UserTotals, f: Freshness,
              daily: DailyOut | None = None) -> AnalyticsOut:
    ended, started = t.sessions_ended, t.sessions_started
    total = _minutes(t.total_focus_seconds)
    return AnalyticsOut.model_construct(
        user_id=user_id, sessions_started=started, sessions_ended=ended,
        sessions_completed=t.sessions_completed,
        completion_rate=figure(t.sessions_completed, ended) if ended else None,
        avg_duration_minutes=_minutes(t.total_focus_seconds, ended) if ended else None,
        total_focus_minutes=total, interruptions_total=t.total_interruptions,
        interruptions_per_session=figure(t.total_interruptions, started) if started else None,
        last_session_at=t.last_session_at, daily=daily, freshness=freshness(f),
    )


def org_daily(lo: date, hi: date, days: list[OrgDay], f: Freshness) -> OrgDailyOut:
    return OrgDailyOut.model_construct(
        from_=lo, to=hi, freshness=freshness(f),
        days=[OrgDayOut.model_construct(
            day=d.day, active_users=d.active_users, sessions_started=d.sessions_started,
            sessions_ended=d.sessions_ended, sessions_completed=d.sessions_completed,
            focus_minutes=_minutes(d.focus_seconds), interruptions=d.interruptions)
            for d in days])


def week(w: WeekBucket) -> WeekOut:
    ended = w.sessions_ended
    return WeekOut(
        week_start=w.week_start, sessions_ended=ended, sessions_completed=w.sessions_completed,
        focus_minutes=_minutes(w.focus_seconds),
        completion_rate=figure(w.sessions_completed, ended) if ended else None,
        avg_duration_minutes=_minutes(w.focus_seconds, ended) if ended else None,
    )


def daily(tz: str, lo: date, hi: date, days: list[DayBucket]) -> DailyOut:
    return DailyOut.model_construct(
        time_zone=tz, from_=lo, to=hi,
        days=[DayOut.model_construct(
            day=d.day, sessions_started=d.sessions_started, sessions_ended=d.sessions_ended,
            sessions_completed=d.sessions_completed, focus_minutes=_minutes(d.focus_seconds),
            interruptions=d.interruptions) for d in days],
    )

"""Read routes: a user's sessions, one session, a user's analytics, org-wide daily totals.
Projections only."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from psycopg import AsyncConnection

from focus_sessions.api import models
from focus_sessions.api.auth import (
    ANALYTICS,
    SECURED,
    SELF,
    Principal,
    authenticate,
    forbid_unless,
    require_any,
)
from focus_sessions.api.deps import Services, json_response
from focus_sessions.contracts.events import TimeZone, UserId
from focus_sessions.projections.queries import Cursor

router = APIRouter(tags=["read"])
MAX_DAYS = 366
DEFAULT_DAYS = 30

UserPath = Annotated[UserId, Path(description="The user's id (1-255 of A-Z a-z 0-9 ._:@+-|=~).")]
_AUTH: dict[int | str, dict[str, Any]] = {401: {"description": "Missing, invalid or expired token"},
         403: {"description": "Token lacks the scope, or the data is another user's"}}


def invalid(where: str, name: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the field."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (where, name), "msg": message, "input": value}]
    )


def _services(request: Request) -> Services:
    # the read routes are the hot path: no dependency tree, so no per-request solving of it
    found: Services = request.app.state.services
    return found


def check_read(caller: Principal, user_id: str) -> None:
    require_any(caller, SELF, ANALYTICS)
    forbid_unless(caller.may_read(user_id), "a sessions:self token reads only its own user")


@router.get("/users/{user_id}/sessions", response_model=models.SessionPageOut, responses=_AUTH,
            openapi_extra=SECURED)
async def list_sessions(
    user_id: UserPath, request: Request,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 10,
    cursor: Annotated[str | None, Query(max_length=200,
                                        description="`next_cursor` of the previous page.")] = None,
) -> Response:
    """A user's recent sessions, newest first (by start time), one page at a time.

    Needs `sessions:self` (own user) or `analytics:read`."""
    caller, svc = authenticate(request), _services(request)
    check_read(caller, user_id)
    try:
        after = Cursor.decode(cursor) if cursor is not None else None
    except ValueError as exc:
        raise invalid("query", "cursor", str(exc), cursor) from None
    page = await svc.db.run(lambda conn: svc.queries.sessions(conn, user_id, limit, after))
    return json_response(models.SessionPageOut.model_construct(
        sessions=[models.session(s) for s in page.sessions],
        next_cursor=page.next_cursor.encode() if page.next_cursor else None,
        freshness=models.freshness(page.freshness),
    ))


@router.get("/sessions/{session_id}", response_model=models.SessionOut,
            responses={**_AUTH, 404: {"description": "The projection has no such session, or "
                                      "it is another user's (to a `sessions:self` token)"}},
            openapi_extra=SECURED)
async def get_session(session_id: UUID, request: Request) -> Response:
    """One session by id, as projected. `404` until its start event is projected.

    Needs `sessions:self` (own session) or `analytics:read`. Another user's session is `404`
    to a `sessions:self` token, exactly as a missing one: an id's existence is not told."""
    caller, svc = authenticate(request), _services(request)
    require_any(caller, SELF, ANALYTICS)
    found, fresh = await svc.db.run(lambda conn: svc.queries.session(conn, session_id))
    if found is None or not caller.may_read(found.user_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no session {session_id} is projected")
    return json_response(models.session_out(found, fresh))


@router.get("/users/{user_id}/analytics", response_model=models.AnalyticsOut, responses=_AUTH,
            openapi_extra=SECURED)
async def user_analytics(
    user_id: UserPath, request: Request,
    from_: Annotated[date | None, Query(alias="from", description="First day (local).")] = None,
    to: Annotated[date | None, Query(description="Last day (local, inclusive).")] = None,
    tz: Annotated[TimeZone | None, Query(description="IANA zone for the days.")] = None,
) -> Response:
    """Focus statistics: average duration, completion rate, total focus time, counts,
    interruptions and last session time, all-time, from the per-user rollup.

    With `from`, `to` or `tz`, also daily buckets (each session counted on its local start day;
    zone: `tz`, else the user's latest session's zone, else UTC; default range: the 30 days to
    today; at most 366 days). Needs `sessions:self` (own user) or `analytics:read`."""
    caller, svc = authenticate(request), _services(request)
    check_read(caller, user_id)
    plain = not (from_ or to or tz)
    ticket = svc.cache.ticket(user_id) if plain else None  # before the read: see AnalyticsCache

    async def read(conn: AsyncConnection[Any]) -> models.AnalyticsOut:
        totals, fresh = await svc.queries.totals(conn, user_id)
        daily = None
        if not plain:
            zone = tz or await svc.queries.latest_time_zone(conn, user_id) or "UTC"
            lo, hi = _range(from_, to, zone)
            try:
                days = await svc.queries.days(conn, user_id, lo, hi, zone)
            except psycopg.errors.InvalidParameterValue:
                if tz:
                    raise invalid("query", "tz", "time zone unknown to the database", tz) from None
                zone, days = "UTC", await svc.queries.days(conn, user_id, lo, hi, "UTC")
            daily = models.daily(zone, lo, hi, days)
        return models.analytics(user_id, totals, fresh, daily)

    out = await svc.db.run(read)
    svc.cache.store(ticket, user_id, out)
    return json_response(out)


@router.get("/users/{user_id}/weekly", response_model=models.WeeklyOut, responses=_AUTH,
            openapi_extra=SECURED)
async def user_weekly(
    user_id: UserPath, request: Request,
    weeks: Annotated[int, Query(ge=1, le=260, description="How many weeks back.")] = 12,
) -> Response:
    """Weekly focus minutes, completion and average duration per week (Monday-based, in the
    time zone of each session's start), newest first, for the last `weeks` weeks. Needs
    `sessions:self` (own user) or `analytics:read`."""
    caller, svc = authenticate(request), _services(request)
    check_read(caller, user_id)
    hi = datetime.now(ZoneInfo("UTC")).date() + timedelta(days=7)  # zones east of UTC
    lo = hi - timedelta(weeks=weeks)

    async def read(conn: AsyncConnection[Any]) -> models.WeeklyOut:
        found = await svc.queries.weeks(conn, user_id, lo, hi)
        _, fresh = await svc.queries.totals(conn, user_id)
        return models.WeeklyOut(user_id=user_id, weeks=[models.week(w) for w in found],
                                freshness=models.freshness(fresh))

    return json_response(await svc.db.run(read))


@router.get("/analytics/daily", response_model=models.OrgDailyOut, responses=_AUTH,
            openapi_extra=SECURED)
async def org_daily(
    request: Request,
    from_: Annotated[date | None, Query(alias="from", description="First UTC day.")] = None,
    to: Annotated[date | None, Query(description="Last UTC day (inclusive).")] = None,
) -> Response:
    """Org-wide totals per UTC day, for analytics teams: active users (distinct users with a
    session started that day), sessions started, ended and completed, focus minutes and
    interruptions of the sessions started that day. Default range: the 30 days to today (UTC);
    at most 366 days. Needs `analytics:read`."""
    caller, svc = authenticate(request), _services(request)
    require_any(caller, ANALYTICS)
    lo, hi = _range(from_, to, "UTC")
    days, fresh = await svc.db.run(lambda conn: svc.queries.org_days(conn, lo, hi))
    return json_response(models.org_daily(lo, hi, days, fresh))


def _range(lo: date | None, hi: date | None, zone: str) -> tuple[date, date]:
    try:
        span = timedelta(days=DEFAULT_DAYS - 1)
        hi = hi or (lo + span if lo else datetime.now(ZoneInfo(zone)).date())
        lo = lo or hi - span
    except OverflowError:
        raise invalid("query", "from", "date range out of bounds") from None
    if lo > hi:
        raise invalid("query", "from", f"'from' ({lo}) is after 'to' ({hi})", str(lo))
    if (hi - lo).days >= MAX_DAYS:
        raise invalid("query", "to", f"at most {MAX_DAYS} days per request", str(hi))
    return lo, hi

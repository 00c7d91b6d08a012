"""Write routes: start, interrupt and end a session by publishing events (never SQL writes).

Each validates, publishes one event with ``acks=all``, then waits (``FOCUS_API_WAIT_MS``) until
the projector has applied it and answers with the projected session; when the wait runs out, or
PostgreSQL fails after the event was acknowledged, it answers ``202`` with ``Location`` (the
event is in the log). A write for an existing session needs its start projected first (``404``
otherwise): only the projection knows whose session it is, and to a ``sessions:self`` token
another user's session is ``404`` too, so an id's existence is not told.

Time bound (docs/api.md): a read of the session (``FOCUS_API_DB_TIMEOUT_MS``), the publish
(``FOCUS_API_PUBLISH_TIMEOUT_MS``), then the wait plus one read (``FOCUS_API_WAIT_MS`` +
``FOCUS_API_DB_TIMEOUT_MS``).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Response, status

from focus_sessions.api import models
from focus_sessions.api.auth import SELF, WRITE, Caller, Principal, forbid_unless, require_any
from focus_sessions.api.deps import DATABASE_ERRORS, Services, Svc, json_response
from focus_sessions.api.reads import invalid
from focus_sessions.contracts.events import MAX_SESSION
from focus_sessions.producers.http import (
    FocusSessionCreate,
    FocusSessionUpdate,
    IdempotencyKey,
    InterruptionCreate,
    Published,
    end_event,
    end_event_id,
    interruption_event,
    start_event,
)
from focus_sessions.projections.queries import SessionRecord

log = logging.getLogger(__name__)
router = APIRouter(tags=["write"])
_LONGEST = f"{MAX_SESSION.total_seconds() / 3600:g} h"
KeyHeader = Annotated[IdempotencyKey | None, Header(
    description="Retry-safe key: the same key (per user, per session) never writes twice.")]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": models.AcceptedOut, "description": "Published, not yet projected"},
    401: {"description": "Missing, invalid or expired token"},
    403: {"description": "Token lacks the scope, or the user is another one"},
    503: {"model": models.WriteUnavailableOut, "description":
          "PostgreSQL failed before publishing (`published`: `no`), Kafka could not be reached "
          "(`no`), or Kafka did not acknowledge the event in time (`unknown`: it may have been "
          "published; retry with the same `Idempotency-Key`)"},
}
_SESSION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_RESPONSES,
    403: {"description": "Token lacks the scope"},
    404: {"description": "No such session is projected, or it is another user's (to a "
                         "`sessions:self` token)"},
    409: {"description": "The session has already ended"},
}


def _now() -> datetime:
    return datetime.now(UTC)


@router.post("/sessions", status_code=201, response_model=models.SessionOut,
             responses=_RESPONSES)
async def start_session(body: FocusSessionCreate, caller: Caller, svc: Svc,
                        idempotency_key: KeyHeader = None) -> Response:
    """Start a focus session (publishes `focus.session.started.v1`).

    Needs `sessions:write`, or `sessions:self` for the token's own user. With an
    `Idempotency-Key`, a retry returns the same session instead of starting another."""
    require_any(caller, SELF, WRITE)
    forbid_unless(caller.may_write(body.user_id), "a sessions:self token writes only its own user")
    event = start_event(body, _now(), svc.source, idempotency_key)
    sid = event.data.session_id
    if idempotency_key:
        found, fresh = await svc.db.run(lambda conn: svc.queries.session(conn, sid))
        if found is not None:
            return json_response(models.session_out(found, fresh), 201,
                                 {"Location": f"/sessions/{sid}", "Idempotent-Replayed": "true"})
    return await _settle(svc, sid, await svc.publish(event), 201)


@router.put("/sessions/{session_id}", response_model=models.SessionOut,
            responses=_SESSION_RESPONSES)
async def end_session(session_id: UUID, body: FocusSessionUpdate, caller: Caller, svc: Svc,
                      idempotency_key: KeyHeader = None) -> Response:
    """End a focus session (publishes `focus.session.ended.v2`).

    `ended_at` defaults to now; it may not precede the start, nor lie more than 24 h (the
    longest session) after it: a session started longer ago needs an explicit `ended_at`
    (`422` naming `ended_at`). `completed` defaults to whether the planned duration was
    reached. An ended session cannot be ended again (`409`), except by a retry with the same
    `Idempotency-Key`."""
    found = await _writable(svc, caller, session_id)
    if found.ended_at is not None:
        if idempotency_key and found.end_event_id == end_event_id(session_id, idempotency_key):
            return await _settle(svc, session_id, None, 200)
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"session {session_id} already ended at {found.ended_at.isoformat()}")
    now = _now()
    if body.ended_at is not None and body.ended_at < found.started_at:
        raise invalid("body", "ended_at", "ended_at is before the session's started_at "
                      f"({found.started_at.isoformat()})", body.ended_at.isoformat())
    _within_longest(found, "ended_at", body.ended_at, now)
    event = end_event(body, found.user_id, session_id, found.started_at,
                      found.duration_minutes, max(now, found.started_at), svc.source,
                      idempotency_key)
    return await _settle(svc, session_id, await svc.publish(event), 200)


@router.post("/sessions/{session_id}/interruptions", status_code=201,
             response_model=models.SessionOut, responses=_SESSION_RESPONSES)
async def interrupt_session(session_id: UUID, body: InterruptionCreate, caller: Caller,
                            svc: Svc, idempotency_key: KeyHeader = None) -> Response:
    """Record an interruption of a running session (publishes `focus.session.interrupted.v1`).

    `interrupted_at` defaults to now and must fall within the session: not before its start,
    nor more than 24 h (the longest session) after it (`422` otherwise; a session started
    longer ago needs an explicit `interrupted_at`)."""
    found = await _writable(svc, caller, session_id)
    if found.ended_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"session {session_id} already ended at {found.ended_at.isoformat()}")
    now = _now()
    at = body.interrupted_at or max(now, found.started_at)
    if at < found.started_at:
        raise invalid("body", "interrupted_at", "interrupted_at is before the session's "
                      f"started_at ({found.started_at.isoformat()})", at.isoformat())
    _within_longest(found, "interrupted_at", body.interrupted_at, now)
    body = body.model_copy(update={"interrupted_at": at})
    event = interruption_event(body, found.user_id, session_id, now, svc.source,
                               idempotency_key)
    return await _settle(svc, session_id, await svc.publish(event), 201)


async def _writable(svc: Services, caller: Principal, session_id: UUID) -> SessionRecord:
    require_any(caller, SELF, WRITE)
    found, _ = await svc.db.run(lambda conn: svc.queries.session(conn, session_id))
    if found is None or not caller.may_write(found.user_id):
        # another user's session reads as a missing one: a user token learns nothing
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"no session {session_id} is projected (a session is writable once "
                            "its start is readable at GET /sessions/{id})")
    return found


def _within_longest(found: SessionRecord, name: str, given: datetime | None,
                    now: datetime) -> None:
    """422 naming ``name`` unless the time lies within the longest session after the start
    (``focus_sessions.contracts.events.MAX_SESSION``, as the projector checks it)."""
    latest = found.started_at + MAX_SESSION
    start = found.started_at.isoformat()
    if given is not None and given > latest:
        raise invalid("body", name, f"{name} is more than {_LONGEST} after the session's "
                      f"started_at ({start}); a session lasts at most {_LONGEST}",
                      given.isoformat())
    if given is None and now > latest:
        raise invalid("body", name, f"{name} is required: the session started at {start}, "
                      f"more than {_LONGEST} (the longest a session lasts) ago; give an "
                      f"{name} within {_LONGEST} of the start")


async def _settle(svc: Services, sid: UUID, published: Published | None,
                  code: int) -> Response:
    location = {"Location": f"/sessions/{sid}"}
    # the wait plus one read: the last poll and the read share one database bound
    deadline = time.monotonic() + svc.wait_seconds + svc.db.timeout
    try:
        if published is None or await svc.projected(published, deadline):
            found, fresh = await svc.db.run(lambda conn: svc.queries.session(conn, sid),
                                            deadline - time.monotonic())
            if found is not None:
                # read-your-writes: this process must not serve the user's analytics from
                # before this write, even if the projector's notice is still on its way
                svc.cache.forget(found.user_id)
                return json_response(models.session_out(found, fresh), code, location)
    except DATABASE_ERRORS as exc:
        if published is None:
            raise
        # the event is in the log and will be projected: that is a 202, not a 503
        log.warning("event published at partition %d offset %d; PostgreSQL failed while "
                    "waiting for its projection (%s: %s)", published.partition,
                    published.offset, type(exc).__name__, exc)
    if published is None:  # it was there a moment ago: only a rebuild in progress removes it
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no session {sid} is projected")
    return json_response(models.AcceptedOut(
        session_id=sid, location=location["Location"], partition=published.partition,
        offset=published.offset), 202, location)

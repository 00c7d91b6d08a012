"""How failures are answered: 422 that always renders and never echoes much, 503 that says
what happened to a write's event.

FastAPI's own 422 echoes each error's ``input`` whole (a 50 MB array came back whole) and
cannot render NaN, Infinity or a lone surrogate, which ``json.loads`` accepts in a body (a 500).
Here ``input`` is a JSON-safe excerpt of at most about :data:`EXCERPT_CHARS` characters and at
most :data:`MAX_ERRORS` errors are listed; the shape stays FastAPI's
(``{"detail": [{"type", "loc", "msg", "input"}, ...]}``). Pydantic itself refuses non-finite
numbers and lone surrogates in every field of the bodies, naming the field.
"""

from __future__ import annotations

import json
import logging
import math
import reprlib
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from focus_sessions.api.deps import DATABASE_ERRORS, DatabaseTimeout, PublishFailed

log = logging.getLogger(__name__)

EXCERPT_CHARS = 100
MAX_ERRORS = 20
_MSG_CHARS = 300
_MAX_DEPTH = 4
RETRY_AFTER = {"Retry-After": "5"}

#: What pydantic's message leaves out, for inputs that JSON parsing lets through.
_HINTS = {"string_unicode": " (it holds a lone UTF-16 surrogate, such as \\ud800, which is "
                            "not a character)"}

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = EXCERPT_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(PublishFailed, publish_failed)
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, database_down)


async def invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    detail: list[dict[str, Any]] = [_error(e) for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"type": "too_many_errors", "loc": [], "input": None,
                       "msg": f"{len(errors) - MAX_ERRORS} more errors not listed"})
    return JSONResponse({"detail": detail}, 422)


def _error(error: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _text(str(error.get("type", "value_error")), EXCERPT_CHARS),
        "loc": [p if isinstance(p, int) else _text(str(p), EXCERPT_CHARS)
                for p in error.get("loc", ())],
        "msg": _text(str(error.get("msg", "")) + _HINTS.get(error.get("type"), ""), _MSG_CHARS),
        "input": excerpt(error.get("input")),
    }
    ctx = error.get("ctx")
    if isinstance(ctx, dict):
        out["ctx"] = {_text(str(k), EXCERPT_CHARS):
                      _text(str(v), EXCERPT_CHARS) if isinstance(v, BaseException) else excerpt(v)
                      for k, v in list(ctx.items())[:8]}
    return out


def excerpt(value: Any) -> Any:
    """A JSON-safe stand-in for ``value`` of about :data:`EXCERPT_CHARS` characters at most:
    small values as they are (surrogates escaped, non-finite numbers as strings), larger ones
    as the start of their ``repr``. Costs the same for a value of any size."""
    if not isinstance(value, dict | list | tuple):
        return _scalar(value)
    try:
        return _copy(value, [EXCERPT_CHARS], 0)
    except _TooLong:
        return _text(_REPR.repr(value), EXCERPT_CHARS)


class _TooLong(Exception):
    pass


def _copy(value: Any, budget: list[int], depth: int) -> Any:
    if isinstance(value, dict | list | tuple):
        if depth >= _MAX_DEPTH:
            raise _TooLong
        budget[0] -= 2
        if isinstance(value, dict):
            return {_copy(str(k), budget, depth + 1): _copy(v, budget, depth + 1)
                    for k, v in value.items()}
        return [_copy(v, budget, depth + 1) for v in value]
    scalar = _scalar(value)
    budget[0] -= len(scalar) + 2 if isinstance(scalar, str) else len(json.dumps(scalar))
    if budget[0] < 0:
        raise _TooLong
    return scalar


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else _text(_REPR.repr(value), EXCERPT_CHARS)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, str):
        return _text(value, EXCERPT_CHARS)
    return _text(_REPR.repr(value), EXCERPT_CHARS)


def _text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters (marked with …), lone surrogates as ``\\udxxx``."""
    cut = value if len(value) <= limit else value[:limit] + "…"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


async def database_down(request: Request, exc: Exception) -> Response:
    log.warning("request failed, database unavailable: %s: %s", type(exc).__name__, exc)
    why = str(exc) if isinstance(exc, DatabaseTimeout) else type(exc).__name__
    body: dict[str, str] = {"detail": f"PostgreSQL is unavailable ({why}); retry shortly"}
    if request.method not in ("GET", "HEAD"):
        # writes read PostgreSQL only before publishing; a failure after it answers 202
        body = {"detail": body["detail"] + ". The event was not published", "published": "no"}
    return JSONResponse(body, 503, RETRY_AFTER)


async def publish_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PublishFailed)
    log.warning("write failed, %s (maybe published: %s)", exc.what, exc.maybe_published)
    keyed = bool(request.headers.get("idempotency-key"))
    if not exc.maybe_published:
        detail = f"{exc.what}. The event was not published; retry later"
        if keyed:
            detail += " (with the same Idempotency-Key, a retry cannot write twice)"
        return JSONResponse({"detail": detail, "published": "no"}, 503, RETRY_AFTER)
    detail = (f"{exc.what}. The event may have been published: Kafka may have received it "
              "before the failure, and then it will be projected. Retry with the same "
              "Idempotency-Key header: a retry then cannot record it twice")
    if not keyed:
        detail += (". This request had no Idempotency-Key, so a retry may record the event "
                   "a second time (a start: a second session); send one with every write")
    return JSONResponse({"detail": detail, "published": "unknown"}, 503, RETRY_AFTER)

"""Refuse request bodies over ``FOCUS_API_MAX_BODY_BYTES`` before anything parses them (ASGI).

The outermost layer of the app, in front of authentication: a request that declares a larger
``Content-Length`` is answered ``413`` at once and its body is never read; a body without a
length (chunked) is counted as it streams through ``receive`` and answered ``413`` as soon as it
passes the limit, so at most the limit (plus one chunk) is ever held. The server discards what
the client still sends (uvicorn drains a finished request's body without keeping it), so the
client sees the ``413`` rather than a reset connection.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_HEADERS = [(b"content-type", b"application/json")]


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once a streamed body passes the limit."""


class BodyLimit:
    """The middleware; ``max_bytes`` is the setting's value."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        detail = (f"request body larger than {max_bytes} bytes (FOCUS_API_MAX_BODY_BYTES); "
                  "the bodies of this API are a few hundred bytes")
        self._body = json.dumps({"detail": detail}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope["headers"])
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        limit, seen = self.max_bytes, 0
        started = refused = False

        async def counted_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if not started:
                        refused = True
                        await self._refuse(send)
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 is out; whatever the app answers to the error is dropped
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": [
            *_HEADERS, (b"content-length", str(len(self._body)).encode())]})
        await send({"type": "http.response.body", "body": self._body})


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # servers refuse these; if one gets here, count the bytes
                return None
    return None

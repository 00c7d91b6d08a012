"""Answer cached analytics reads before FastAPI routes them (plain ASGI middleware).

Only ``GET /users/{user_id}/analytics`` without a query string, for a user the cache holds, by a
caller whose token may read that user, is answered here, with the bytes the route itself built
(:class:`focus_sessions.api.cache.AnalyticsCache`). Everything else (a miss, a missing, bad or
expired
token, another user's token, a query string, any other route) goes on to FastAPI unchanged,
which validates, authenticates and answers as it always does. So this layer can only turn a
request FastAPI would answer ``200`` into the same ``200``, sooner: a request costs about a
third of a request routed through FastAPI (its routing, validation and dependency handling).
"""

from __future__ import annotations

from typing import Any

import jwt
from starlette.types import ASGIApp, Receive, Scope, Send

from focus_sessions.api.auth import TokenVerifier, bearer_credentials
from focus_sessions.api.cache import AnalyticsCache

_PREFIX, _SUFFIX = "/users/", "/analytics"
_CONTENT_TYPE = (b"content-type", b"application/json")


class CachedAnalytics:
    """The middleware. ``cache`` and ``verifier`` are the app's own."""

    def __init__(self, app: ASGIApp, cache: AnalyticsCache, verifier: TokenVerifier) -> None:
        self.app = app
        self.cache = cache
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._hit(scope) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(len(body)).encode()), _CONTENT_TYPE]})
        await send({"type": "http.response.body", "body": body})

    def _hit(self, scope: Scope) -> bytes | None:
        path: str = scope["path"]
        if (scope["method"] != "GET" or scope["query_string"] or scope.get("root_path")
                or not path.startswith(_PREFIX) or not path.endswith(_SUFFIX)):
            return None
        user_id = path[len(_PREFIX):-len(_SUFFIX)]
        if not user_id or "/" in user_id:
            return None
        body = self.cache.get(user_id)  # held only for ids the route validated
        if body is None or not self._may_read(scope["headers"], user_id):
            return None
        self.cache.hits += 1
        return body

    def _may_read(self, headers: Any, user_id: str) -> bool:
        for name, value in headers:
            if name == b"authorization":  # the first one, as Starlette's headers.get
                token = bearer_credentials(value.decode("latin-1"))
                if token is None:
                    return False
                try:
                    return self.verifier.verify(token).may_read(user_id)
                except jwt.InvalidTokenError:  # FastAPI's path says why, with a 401
                    return False
        return False

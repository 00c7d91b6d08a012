"""Bearer-token access control: HS256 JWTs (PyJWT) carrying OAuth-style scopes.

Scopes (space-separated in the ``scope`` claim):

* ``sessions:self`` — a user's token; ``sub`` is the user id. Reads and writes that user only.
* ``sessions:write`` — a service token; writes (start, interrupt, end) for any user.
* ``analytics:read`` — an analytics token; reads every user's sessions and analytics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

SELF = "sessions:self"
WRITE = "sessions:write"
ANALYTICS = "analytics:read"
SCOPES = {
    SELF: "a user's own sessions and analytics, read and write (`sub` = user id)",
    WRITE: "write sessions of any user (timer services)",
    ANALYTICS: "read every user's sessions and analytics (analytics teams)",
}
_CACHE_LIMIT = 4096

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="JWT",
    description="HS256 JWT with `sub`, `aud`, `exp` and a space-separated `scope` of: "
    + "; ".join(f"`{name}` — {meaning}" for name, meaning in SCOPES.items()),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and what they may do."""

    subject: str
    scopes: frozenset[str]

    def may_read(self, user_id: str) -> bool:
        return ANALYTICS in self.scopes or (SELF in self.scopes and self.subject == user_id)

    def may_write(self, user_id: str) -> bool:
        return WRITE in self.scopes or (SELF in self.scopes and self.subject == user_id)


class TokenVerifier:
    """Verifies tokens; remembers verified ones until they expire (a dict, bounded)."""

    def __init__(self, secret: str, audience: str) -> None:
        self._secret = secret
        self._audience = audience
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        """The token's principal; :class:`jwt.InvalidTokenError` says why it is refused."""
        hit = self._verified.get(token)
        if hit is not None and hit[1] > time.time():
            return hit[0]
        claims = jwt.decode(
            token, self._secret, algorithms=["HS256"], audience=self._audience,
            options={"require": ["exp", "sub", "aud"]},
        )
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise jwt.InvalidTokenError("the scope claim must be a space-separated string")
        principal = Principal(str(claims["sub"]), frozenset(scope.split()))
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]))
        return principal


def mint_token(
    secret: str,
    subject: str,
    scopes: Iterable[str],
    *,
    audience: str = "focus-sessions",
    ttl_seconds: int = 30 * 24 * 3600,
) -> str:
    """A signed token for ``subject`` with ``scopes`` (what ``focus dev`` and ``focus token``
    print). Unknown scope names are refused so that a typo does not mint a useless token."""
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; known: {sorted(SCOPES)}")
    now = int(time.time())
    claims = {"sub": subject, "aud": audience, "iat": now, "exp": now + ttl_seconds,
              "scope": " ".join(wanted)}
    return jwt.encode(claims, secret, algorithm="HS256")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def bearer_credentials(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    scheme, _, credentials = header.partition(" ")
    return credentials if scheme.lower() == "bearer" and credentials else None


def authenticate(request: Request) -> Principal:
    """The verified caller of ``request``, or 401. Hot read routes call this directly (no
    dependency tree to solve) and declare :data:`SECURED` for the OpenAPI document."""
    credentials = bearer_credentials(request.headers.get("authorization", ""))
    if credentials is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <jwt>'")
    verifier: TokenVerifier = request.app.state.verifier
    try:
        return verifier.verify(credentials)
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise _unauthorized(f"invalid token: {exc}") from None


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """FastAPI dependency: the verified caller, or 401 (and the scheme in OpenAPI)."""
    return authenticate(request)


Caller = Annotated[Principal, Depends(principal)]
#: ``openapi_extra`` of a route that calls :func:`authenticate` itself.
SECURED: dict[str, Any] = {"security": [{"bearer": []}]}


def forbid_unless(allowed: bool, detail: str) -> None:
    """403 with ``detail`` unless ``allowed``."""
    if not allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail)


def require_any(caller: Principal, *scopes: str) -> None:
    """403 unless the caller has at least one of ``scopes``."""
    forbid_unless(bool(caller.scopes.intersection(scopes)),
                  f"token lacks scope: needs one of {', '.join(scopes)}")

"""Settings of the API process, validated at start-up with messages a person can act on."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator

from focus_sessions.settings import CommonSettings

#: Used only in the explicit development mode when ``FOCUS_JWT_SECRET`` is unset, so that
#: ``focus dev`` and the API it starts agree on a secret without any set-up.
DEV_JWT_SECRET = "focus-dev-only-insecure-secret-do-not-deploy"  # noqa: S105 - dev mode only
MIN_SECRET_LENGTH = 32
_PLACEHOLDERS = {"changeme", "change-me", "change_me", "secret", "password", "jwt-secret",
                 "your-secret", "your-secret-here", "todo", DEV_JWT_SECRET}


class ApiSettings(CommonSettings):
    """Environment of ``focus api``. Every field is an environment variable of the same name."""

    focus_jwt_secret: SecretStr | None = Field(
        None, description="HS256 key that signs and verifies bearer tokens (32+ characters)."
    )
    focus_jwt_audience: str = Field(
        "focus-sessions", min_length=1, description="`aud` every token must carry."
    )
    focus_dev_mode: bool = Field(
        False, description="Development mode: allows a missing or weak JWT secret."
    )
    focus_api_host: str = Field("127.0.0.1", description="Interface `focus api` listens on.")
    focus_api_port: int = Field(8000, ge=1, le=65535, description="Port `focus api` listens on.")
    focus_api_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    focus_api_wait_ms: int = Field(
        2000, ge=0, le=60_000,
        description="How long a write waits to see its event projected before answering 202.",
    )
    focus_api_publish_timeout_ms: int = Field(
        5000, ge=100, le=120_000,
        description="How long a write may take to publish (acks=all) before answering 503.",
    )
    focus_api_db_timeout_ms: int = Field(
        2000, ge=100, le=60_000,
        description="Longest one PostgreSQL use may take (pool wait plus statement) before 503.",
    )
    focus_api_max_body_bytes: int = Field(
        65_536, ge=1024, le=16 * 1024 * 1024,
        description="Largest request body accepted; a larger one is refused with 413 unread.",
    )
    focus_api_pool_min: int = Field(1, ge=0, le=100, description="PostgreSQL pool: idle floor.")
    focus_api_pool_max: int = Field(8, ge=1, le=500, description="PostgreSQL pool: ceiling.")
    focus_api_cache_entries: int = Field(
        100_000, ge=0, le=10_000_000,
        description="Users whose all-time analytics the API keeps in memory (0: no cache).",
    )
    focus_api_cache_ttl_s: float = Field(
        60.0, gt=0, le=86_400,
        description="Longest an analytics cache entry lives (bounds writes that send no notice).",
    )
    focus_api_source: str = Field(
        "urn:focus-sessions:api", min_length=1, max_length=255,
        description="CloudEvents `source` of the events the write endpoints publish.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.focus_api_pool_min > self.focus_api_pool_max:
            raise ValueError(
                f"FOCUS_API_POOL_MIN ({self.focus_api_pool_min}) is larger than "
                f"FOCUS_API_POOL_MAX ({self.focus_api_pool_max}); lower one or raise the other."
            )
        if self.focus_dev_mode:
            return self
        secret = self.focus_jwt_secret.get_secret_value() if self.focus_jwt_secret else ""
        hint = ("Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                " — or set FOCUS_DEV_MODE=1 on a development machine.")
        if not secret:
            raise ValueError(f"FOCUS_JWT_SECRET is not set; the API cannot verify tokens. {hint}")
        if secret.strip().lower() in _PLACEHOLDERS:
            raise ValueError(f"FOCUS_JWT_SECRET is a placeholder ({secret!r}). {hint}")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"FOCUS_JWT_SECRET has {len(secret)} characters; at least {MIN_SECRET_LENGTH} "
                f"are required for HS256. {hint}"
            )
        return self

    @property
    def jwt_secret(self) -> str:
        """The secret in force: the configured one, or the development secret in dev mode."""
        if self.focus_jwt_secret is not None and self.focus_jwt_secret.get_secret_value():
            return self.focus_jwt_secret.get_secret_value()
        return DEV_JWT_SECRET

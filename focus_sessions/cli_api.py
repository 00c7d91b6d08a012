"""CLI commands for the api area (registered by focus_sessions.cli): ``focus api``, ``focus
token``."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from focus_sessions.api.auth import SCOPES
from focus_sessions.api.settings import ApiSettings


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``focus`` CLI."""
    app.command("api")(api)
    app.command("token")(token)


def _settings() -> ApiSettings:
    from focus_sessions.settings import from_environment

    return from_environment(ApiSettings)


def api() -> None:
    """Serve the HTTP API (uvicorn) on FOCUS_API_HOST:FOCUS_API_PORT."""
    import uvicorn

    from focus_sessions.servers import resolved

    settings = resolved(_settings())
    # worker processes rebuild the settings from the environment: hand them the resolved servers
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers or ""
    os.environ["DATABASE_URL"] = settings.database_url or ""
    uvicorn.run("focus_sessions.api.app:from_environment", factory=True,
                host=settings.focus_api_host, port=settings.focus_api_port,
                workers=settings.focus_api_workers, log_level="info", access_log=False)


def token(
    subject: Annotated[str, typer.Argument(help="`sub`: the user id, or a service's name.")],
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", "-s", help=f"Repeatable; one of {', '.join(SCOPES)}.")] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 30,
) -> None:
    """Print a bearer token signed with FOCUS_JWT_SECRET (the dev secret in FOCUS_DEV_MODE)."""
    from focus_sessions.api.auth import SELF, mint_token

    settings = _settings()
    try:
        typer.echo(mint_token(settings.jwt_secret, subject, scope or [SELF],
                              audience=settings.focus_jwt_audience, ttl_seconds=days * 86_400))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

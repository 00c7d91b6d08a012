"""The ``focus`` command line: one entry point for every process and operator task."""

from __future__ import annotations

import asyncio
import logging

import typer

from focus.settings import ProjectorSettings

app = typer.Typer(help="Focus Sessions: Pomodoro events projected into analytics.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
def migrate() -> None:
    """Apply pending SQL migrations (safe to run from several processes at once)."""
    from focus.migrate import migrate as run
    from focus.servers import database_url

    applied = run(database_url(ProjectorSettings()))
    typer.echo(f"applied {len(applied)} migration(s): "
               + (", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none pending"))


@app.command()
def project() -> None:
    """Run a projector (several may run: they share the topic's partitions)."""
    from focus.servers import resolved

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = resolved(ProjectorSettings())
    asyncio.run(_project(settings))


async def _project(settings: ProjectorSettings) -> None:
    from focus.bootstrap import build_projector, run_projector, stop_on_signals
    from focus.topics import ensure_topics, wait_for_broker

    stopping = stop_on_signals()
    assert settings.kafka_bootstrap_servers is not None
    await wait_for_broker(settings.kafka_bootstrap_servers)
    # Before subscribing: a broker that auto-creates topics would otherwise make the events
    # topic with its own partition count, and per-user order depends on that count.
    await ensure_topics(settings.kafka_bootstrap_servers, {
        settings.focus_events_topic: settings.focus_topic_partitions,
        settings.focus_dlq_topic: 1,
    })
    await run_projector(build_projector(settings), stopping)


@app.command()
def dev(
    api_port: int = typer.Option(8000, envvar="FOCUS_API_PORT", help="Port of the HTTP API."),
) -> None:
    """Run everything locally: broker, PostgreSQL, projector and API (Ctrl-C stops all).

    Without KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL the broker and PostgreSQL are embedded
    (pip packages, no Docker); with them, those servers are used instead.
    """
    from focus.dev import run
    from focus.settings import CommonSettings

    logging.basicConfig(level=logging.WARNING)
    run(CommonSettings(), api_port)


def _register_areas() -> None:
    from focus import cli_api, cli_produce, cli_replay

    cli_api.register(app)
    cli_produce.register(app)
    cli_replay.register(app)


_register_areas()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

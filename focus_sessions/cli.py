"""The ``focus`` command line: one entry point for every process and operator task."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

from focus_sessions.settings import ProjectorSettings, from_environment

# The areas' commands, by the module whose ``register(app)`` adds them. A command imports only
# its own area: `focus project` loads no FastAPI, uvicorn or API code (tests/unit/test_cli.py).
AREAS = {
    "api": "focus_sessions.cli_api", "token": "focus_sessions.cli_api",
    "emit": "focus_sessions.cli_produce", "simulate": "focus_sessions.cli_produce",
    "schema": "focus_sessions.cli_produce",
    "replay": "focus_sessions.cli_replay", "verify": "focus_sessions.cli_replay",
    "dlq": "focus_sessions.cli_dlq",
    "status": "focus_sessions.cli_status",
}
_HELP_ONLY = "focus_sessions.cli.help_only"
# A click command as typer builds it (recent typer vendors its own click, older ones use click)
Command = Any


class _AreaCommands(MutableMapping[str, Command]):
    """The commands by name; an area's module is imported when one of its commands is looked
    up (``focus --help`` looks up all of them)."""

    def __init__(self, commands: MutableMapping[str, Command]) -> None:
        self._loaded = dict(commands)
        self._order = [*commands, *(name for name in AREAS if name not in commands)]

    def _load(self, module: str) -> None:
        area = typer.Typer()
        importlib.import_module(module).register(area)
        self._loaded.update(typer.main.get_group(area).commands)

    def __getitem__(self, name: str) -> Command:
        if name not in self._loaded and name in AREAS:
            self._load(AREAS[name])
        return self._loaded[name]

    def __setitem__(self, name: str, command: Command) -> None:
        if name not in self._order:
            self._order.append(name)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._order.remove(name)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)


class _FocusGroup(TyperGroup):
    def __init__(self, *, commands: MutableMapping[str, Command], **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _AreaCommands(commands)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[_HELP_ONLY] = "--help" in args  # the callback does nothing for a help page
        return super().parse_args(ctx, args)


app = typer.Typer(help="Focus Sessions: Pomodoro events projected into analytics.",
                  cls=_FocusGroup, no_args_is_help=True, pretty_exceptions_enable=False)


#: Commands whose broker line this module prints (``emit``, ``simulate`` and ``dlq`` print
#: their own: the first two also take ``--bootstrap-servers``).
SAYS_BROKER = frozenset({"project", "api", "replay", "verify", "status"})


@app.callback()
def _every_command(ctx: typer.Context) -> None:
    # Runs before any command. A running `focus dev` supplies what the environment lacks
    # (its token secret: focus_sessions.servers.dev_environment), so `focus token` signs with
    # the secret its API verifies with; then the command's broker line.
    command = ctx.invoked_subcommand
    if command in (None, "dev") or ctx.meta.get(_HELP_ONLY):
        return
    from pydantic import ValidationError

    from focus_sessions.servers import ServersNotConfigured, broker, broker_line, dev_environment
    from focus_sessions.settings import CommonSettings

    try:
        settings = CommonSettings()
    except ValidationError:
        return  # the command itself names the invalid setting
    os.environ.update(dev_environment(settings, os.environ))
    if command in SAYS_BROKER:
        with contextlib.suppress(ServersNotConfigured):  # the command says what to set
            typer.echo(broker_line(*broker(settings)), err=True)


@app.command()
def migrate() -> None:
    """Apply pending SQL migrations (safe to run from several processes at once)."""
    from focus_sessions.migrate import migrate as run
    from focus_sessions.servers import database_url

    applied = run(database_url(from_environment(ProjectorSettings)))
    typer.echo(f"applied {len(applied)} migration(s): "
               + (", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none pending"))


@app.command()
def project(
    processes: int | None = typer.Option(
        None, "--processes", min=1, max=64, show_default=False,
        help="Projector worker processes on this machine, one per core "
             "(env FOCUS_PROJECTOR_PROCESSES; default 1: no supervisor)."),
) -> None:
    """Run a projector (several may run: they share the topic's partitions).

    With more than one process this one supervises that many projectors on this machine.
    """
    from focus_sessions.servers import resolved
    from focus_sessions.workers import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = resolved(from_environment(ProjectorSettings) if processes is None else
                        from_environment(ProjectorSettings, focus_projector_processes=processes))
    if settings.focus_projector_processes == 1:
        asyncio.run(_project(settings))
        return
    if sys.platform != "linux":
        raise typer.BadParameter("more than one process needs Linux (PR_SET_PDEATHSIG); run "
                                 "several `focus project` instead", param_hint="--processes")
    raise typer.Exit(_supervise(settings))


async def _project(settings: ProjectorSettings) -> None:
    from focus_sessions.bootstrap import build_projector, run_projector, stop_on_signals

    stopping = stop_on_signals()
    await _prepare(settings)
    await run_projector(build_projector(settings), stopping)


def _supervise(settings: ProjectorSettings) -> int:
    """Start-up checks once, then the workers (:mod:`focus_sessions.workers`); the exit status."""
    from focus_sessions.workers import StopRequest, supervise, worker_commands, worker_environment

    stop = StopRequest().on_signals()  # a stop meanwhile reaches the workers once they start
    asyncio.run(_prepare(settings))  # its threads end with it: the supervisor then has none
    return supervise(worker_commands(settings.focus_projector_processes, os.getpid()),
                     worker_environment(settings), stop)


async def _prepare(settings: ProjectorSettings) -> None:
    from focus_sessions.topics import ensure_topics, wait_for_broker

    assert settings.kafka_bootstrap_servers is not None
    await wait_for_broker(settings.kafka_bootstrap_servers)
    # Before subscribing: a broker that auto-creates topics would otherwise make the events
    # topic with its own partition count, and per-user order depends on that count.
    await ensure_topics(settings.kafka_bootstrap_servers, {
        settings.focus_events_topic: settings.focus_topic_partitions,
        settings.focus_dlq_topic: 1,
    })


@app.command()
def dev(
    api_port: int = typer.Option(8000, envvar="FOCUS_API_PORT", help="Port of the HTTP API."),
    broker: str = typer.Option(
        "tansu", help="Embedded broker: tansu (memory only, nothing to install) or apache "
        "(Apache Kafka; needs Java 17+ and Maven once; its log and the read models survive "
        "a restart)."),
    kafka_port: int | None = typer.Option(
        None, min=1, max=65535, show_default=False,
        help="Port of the embedded broker (default: 9092 when free, else any free port)."),
) -> None:
    """Run everything locally: broker, PostgreSQL, projector and API (Ctrl-C stops all).

    Without KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL the broker and PostgreSQL are embedded
    (pip packages, no Docker); with them, those servers are used instead. A projector, API,
    PostgreSQL or Apache Kafka that dies is restarted.
    """
    from focus_sessions.dev import BROKERS, run
    from focus_sessions.embedded import EmbeddedServerError, require_packages
    from focus_sessions.settings import CommonSettings

    if broker not in BROKERS:
        raise typer.BadParameter(f"one of {', '.join(BROKERS)}", param_hint="--broker")
    settings = from_environment(CommonSettings)
    if broker != "tansu" and settings.kafka_bootstrap_servers:
        typer.echo(f"error: --broker {broker} starts an embedded broker, but "
                   f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers} names one of "
                   "your own; unset one of them.", err=True)
        raise typer.Exit(2)
    from focus_sessions.servers import running_dev_stack

    running = running_dev_stack(settings)
    if running is not None:  # a second one would recreate the first one's database
        typer.echo(f"error: `focus dev` (pid {running.pid}) already runs under "
                   f"{settings.focus_data_dir}/; stop it, or set FOCUS_DATA_DIR to another "
                   "folder.", err=True)
        raise typer.Exit(2)
    try:
        require_packages(kafka=broker == "tansu" and not settings.kafka_bootstrap_servers,
                         postgres=not settings.database_url)
    except EmbeddedServerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("focus_sessions.dev").setLevel(logging.INFO)  # restarts are news
    try:
        status = run(settings, api_port, broker, kafka_port)
    except EmbeddedServerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(status)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

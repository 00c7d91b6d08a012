"""CLI commands for the producing area: ``focus emit``, ``focus simulate``, ``focus schema``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn
from uuid import UUID

import typer
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from focus_sessions.contracts.events import CloudEvent
from focus_sessions.settings import CommonSettings, from_environment

if TYPE_CHECKING:
    from focus_sessions.producing import Target

emit_app = typer.Typer(help="Publish one event built from options; print its receipt as JSON.",
                       no_args_is_help=True)

Bootstrap = Annotated[str | None, typer.Option(
    help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS, else the broker of a "
         "running `focus dev`).")]
Topic = Annotated[str | None, typer.Option(
    help="Events topic (default: $FOCUS_EVENTS_TOPIC, else focus.session.events).")]
CreateTopic = Annotated[bool, typer.Option(
    help="Create the topic when missing (FOCUS_TOPIC_PARTITIONS partitions).")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the broker.", min=0.1)]
DryRun = Annotated[bool, typer.Option(help="Print the event JSON instead of publishing it.")]
Source = Annotated[str, typer.Option(help="CloudEvents source of the event.")]
UserOpt = Annotated[str, typer.Option("--user-id", "-u", help="The user (also the Kafka key).")]
SessionOpt = Annotated[UUID, typer.Option("--session-id", "-s", help="The session's UUID.")]
At = Annotated[str | None, typer.Option(
    help="When it happened, RFC 3339 with an offset, e.g. 2025-03-03T09:00:00Z (default: now).")]
EventId = Annotated[UUID | None, typer.Option(help="Event id (reuse it to retry safely).")]
CLI_SOURCE = "urn:focus-sessions:cli"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return TypeAdapter(AwareDatetime).validate_python(value)
    except ValidationError as error:
        _fail(f"--{name}: {error.errors(include_url=False)[0]['msg']} ({value!r}); "
              "use RFC 3339 with an offset, e.g. 2025-03-03T09:00:00Z", 2)


@contextmanager
def _validated() -> Iterator[None]:
    from focus_sessions.producing import describe_validation

    try:
        yield
    except ValidationError as error:
        _fail("invalid event:\n" + describe_validation(error), 2)


def _send(event: CloudEvent, bootstrap: str | None, topic: str | None, create_topic: bool,
          timeout: float, dry_run: bool) -> None:
    from focus_sessions.producers.publisher import PublisherError
    from focus_sessions.producing import ProduceError, emit
    from focus_sessions.topics import TopicProvisioningError

    if dry_run:
        typer.echo(event.model_dump_json())
        return
    where = target_broker(bootstrap, topic, create_topic, timeout)
    try:
        receipt = asyncio.run(emit(where, event))
    except (ProduceError, PublisherError, TopicProvisioningError) as error:
        _fail(str(error))
    typer.echo(json.dumps({**receipt.as_json(), "bootstrap_servers": where.bootstrap_servers}))


def target_broker(bootstrap: str | None, topic: str | None, create_topic: bool,
                  timeout: float) -> Target:
    """Where ``emit`` and ``simulate`` publish, found as every command finds its broker
    (:func:`focus_sessions.servers.broker`), and said in one line on stderr."""
    from focus_sessions.producing import target
    from focus_sessions.servers import ServersNotConfigured, broker, broker_line

    settings = from_environment(CommonSettings)
    try:
        chosen, origin = broker(settings, bootstrap)
    except ServersNotConfigured as error:
        _fail(str(error))
    typer.echo(broker_line(chosen, origin), err=True)
    return target(settings, chosen, origin, topic, create_topic, timeout)


@emit_app.command("started")
def emit_started(
    user_id: UserOpt, session_id: Annotated[UUID | None, typer.Option(
        "--session-id", "-s", help="The session's UUID (default: a new one).")] = None,
    at: At = None, duration_minutes: Annotated[int, typer.Option(
        help="Planned minutes (5-90).")] = 25,
    step_id: Annotated[UUID | None, typer.Option(help="Micro step the session serves.")] = None,
    time_zone: Annotated[str | None, typer.Option(help="IANA zone, e.g. Europe/Berlin.")] = None,
    event_id: EventId = None, source: Source = CLI_SOURCE, bootstrap_servers: Bootstrap = None,
    topic: Topic = None, create_topic: CreateTopic = True, timeout: Timeout = 10.0,
    dry_run: DryRun = False,
) -> None:
    """focus.session.started.v1: a session began."""
    from focus_sessions.producers import events

    with _validated():
        event = events.started(user_id, _when(at, "at") or _now(), session_id=session_id,
                               step_id=step_id, duration_minutes=duration_minutes,
                               time_zone=time_zone, event_id=event_id, source=source)
    _send(event, bootstrap_servers, topic, create_topic, timeout, dry_run)


@emit_app.command("interrupted")
def emit_interrupted(
    user_id: UserOpt, session_id: SessionOpt, at: At = None,
    reason: Annotated[str | None, typer.Option(help="Short text, e.g. 'phone call'.")] = None,
    event_id: EventId = None, source: Source = CLI_SOURCE, bootstrap_servers: Bootstrap = None,
    topic: Topic = None, create_topic: CreateTopic = True, timeout: Timeout = 10.0,
    dry_run: DryRun = False,
) -> None:
    """focus.session.interrupted.v1: the user was interrupted."""
    from focus_sessions.producers import events

    with _validated():
        event = events.interrupted(user_id, session_id, _when(at, "at") or _now(), reason=reason,
                                   event_id=event_id, source=source)
    _send(event, bootstrap_servers, topic, create_topic, timeout, dry_run)


@emit_app.command("ended")
def emit_ended(
    user_id: UserOpt, session_id: SessionOpt, at: At = None,
    completed: Annotated[bool, typer.Option(
        "--completed/--abandoned", help="Did the user finish it?")] = True,
    outcome: Annotated[str | None, typer.Option(
        help="completed | abandoned | cancelled (v2; wins over --completed).")] = None,
    interruptions: Annotated[int | None, typer.Option(
        help="Interruptions the timer counted itself.")] = None,
    focus_quality: Annotated[int | None, typer.Option(help="User's rating 1-5 (v2).")] = None,
    v1: Annotated[bool, typer.Option("--v1", help="Send focus.session.ended.v1.")] = False,
    event_id: EventId = None, source: Source = CLI_SOURCE, bootstrap_servers: Bootstrap = None,
    topic: Topic = None, create_topic: CreateTopic = True, timeout: Timeout = 10.0,
    dry_run: DryRun = False,
) -> None:
    """focus.session.ended.v2 (or .v1 with --v1): the session is over."""
    from focus_sessions.producers import events

    ended_at = _when(at, "at") or _now()
    if v1 and (outcome is not None or focus_quality is not None):
        _fail("--outcome and --focus-quality exist only in ended.v2; drop --v1", 2)
    event: CloudEvent
    with _validated():
        if v1:
            event = events.ended_v1(user_id, session_id, ended_at, completed=completed,
                                    interruptions=interruptions, event_id=event_id, source=source)
        else:
            event = events.ended(user_id, session_id, ended_at, completed=completed,
                                 outcome=outcome, reported_interruptions=interruptions,
                                 focus_quality=focus_quality, event_id=event_id, source=source)
    _send(event, bootstrap_servers, topic, create_topic, timeout, dry_run)


def _now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)


def schema(
    out: Annotated[Path, typer.Option(help="Folder to write the files into.")] = Path("schema"),
    server: Annotated[str, typer.Option(help="Server host documented in AsyncAPI.")] = (
        "kafka:9092"),
) -> None:
    """Write the contract: a JSON Schema per event type and asyncapi.json (AsyncAPI 3.0)."""
    from focus_sessions.contracts.asyncapi import asyncapi_document
    from focus_sessions.contracts.schema import write_event_schemas, write_json

    settings = from_environment(CommonSettings)
    paths = write_event_schemas(out)
    paths.append(write_json(out / "asyncapi.json", asyncapi_document(
        events_topic=settings.focus_events_topic, dlq_topic=settings.focus_dlq_topic,
        partitions=settings.focus_topic_partitions, server=server, version=_version())))
    for path in paths:
        typer.echo(str(path))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("focus-sessions")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def register(app: typer.Typer) -> None:
    """Add ``emit``, ``simulate`` and ``schema`` to the ``focus`` CLI."""
    from focus_sessions.cli_simulate import simulate

    app.add_typer(emit_app, name="emit")
    app.command()(simulate)
    app.command()(schema)

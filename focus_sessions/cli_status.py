"""CLI command ``focus status`` (registered by focus_sessions.cli): parses options and prints;
:mod:`focus_sessions.status` reads the sources."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from focus_sessions.settings import ProjectorSettings, from_environment
from focus_sessions.status import Report, gather

#: The last reading for the next one: (monotonic time, positions, lag).
Previous = tuple[float, dict[int, int], int]
_STYLE = {"ok": "green", "warn": "yellow", "stall": "red", "stop": "bold red"}


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``focus`` CLI."""
    app.command("status")(status)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document, for scripts.")
                       ] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between readings.")] = 2.0,
    metrics_url: Annotated[str | None, typer.Option(
        help="The projector's endpoint for dead letters and its own verdict (default "
             "http://127.0.0.1:FOCUS_PROJECTOR_METRICS_PORT; 'none' to skip).")] = None,
) -> None:
    """Lag per partition, throughput, group members, held events, dead letters, freshness and
    a verdict (ok, warn, stall, stop). Exit status 1 on stall or stop."""
    from focus_sessions.servers import ServersNotConfigured, resolved

    try:
        settings = resolved(from_environment(ProjectorSettings))
    except ServersNotConfigured as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    url = metrics_url or (f"http://127.0.0.1:{settings.focus_projector_metrics_port}"
                          if settings.focus_projector_metrics_port else "none")

    async def read(previous: Previous | None) -> Report:
        return await gather(
            bootstrap=settings.kafka_bootstrap_servers or "",
            database_url=settings.database_url or "", topic=settings.focus_events_topic,
            group=settings.focus_consumer_group,
            window=settings.focus_projector_health_window_s,
            metrics_url=None if url == "none" else url, interval=min(interval, 1.0),
            previous=previous)

    if not watch:
        report = asyncio.run(read(None))
        if as_json:
            typer.echo(report.to_json())
        else:
            Console().print(render(report))
        raise typer.Exit(1 if report.verdict in ("stall", "stop") else 0)
    asyncio.run(_watch(read, interval, as_json))


async def _watch(read: Callable[[Previous | None], Awaitable[Report]], interval: float,
                 as_json: bool) -> None:
    previous: Previous | None = None
    with contextlib.ExitStack() as stack:
        live = None if as_json else stack.enter_context(Live(Text("reading…"),
                                                             auto_refresh=False))
        while True:
            report = await read(previous)
            previous = (time.monotonic(), {p.partition: p.position for p in report.partitions},
                        report.lag)
            if live is None:
                typer.echo(report.to_json())
            else:
                live.update(render(report), refresh=True)
            await asyncio.sleep(interval)


def render(report: Report) -> Group:
    """The one screen."""
    head = Text.assemble(
        ("verdict ", "bold"), (report.verdict.upper(), _STYLE[report.verdict]),
        f"   topic {report.topic}   group {report.group}   lag {report.lag:,}"
        f"   {report.events_per_s:,.0f} events/s   freshness {report.freshness or '-'}")
    table = Table("partition", "log end", "position", "lag", "idle s", "last event", "verdict")
    for p in report.partitions:
        table.add_row(str(p.partition), f"{p.log_end:,}", f"{p.position:,}", f"{p.lag:,}",
                      "-" if p.idle_s is None else f"{p.idle_s:,.0f}", p.last_event_time or "-",
                      Text(p.verdict, style=_STYLE[p.verdict]))
    age = report.held_oldest_age_s
    lines = [
        f"held events {report.held_events:,}"
        + ("" if age is None else f" (oldest {age:,.0f} s old)"),
        "dead letters " + ("unknown" if report.dead_letters is None else ", ".join(
            f"{reason} {count:,.0f}" for reason, count in sorted(report.dead_letters.items()))
            or "none"),
        "group members " + ("unknown" if report.members is None else
                            f"{len(report.members)}: " + ", ".join(report.members)),
    ]
    if report.projector_health is not None:
        lines.append(f"projector /healthz: {report.projector_health.get('status')}")
    lines += [f"note: {note}" for note in report.notes]
    return Group(head, table, *(Text(line) for line in lines))

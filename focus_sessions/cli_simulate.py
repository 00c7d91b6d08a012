"""``focus simulate``: publish a seeded, realistic load (see
:mod:`focus_sessions.producers.simulate`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from focus_sessions.cli_produce import Bootstrap, CreateTopic, Timeout, Topic, target_broker
from focus_sessions.producers.simulate import Profile, Simulation


@contextmanager
def _progress(simulation: Simulation, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    columns = (TextColumn("[bold]sessions"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[events]:,} events"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("simulate", total=simulation.sessions, events=0)

        def advance(events: int) -> None:
            bar.update(task, completed=simulation.sessions_done,
                       events=bar.tasks[0].fields["events"] + events)

        yield advance


def simulate(
    users: Annotated[int, typer.Option(min=1, help="Simulated users.")] = 100,
    sessions: Annotated[int, typer.Option(min=0, help="Sessions in total (~4 events each).")] = (
        1000),
    seed: Annotated[int, typer.Option(help="Same seed, same bytes (event ids included).")] = 1,
    rate: Annotated[float, typer.Option(
        min=0, help="Events per second to aim for; 0 = as fast as the broker takes them.")] = 0,
    ended_v1_share: Annotated[float, typer.Option(
        min=0, max=1, help="Share of ends sent as ended.v1 instead of ended.v2.")] = 0.0,
    abandon_share: Annotated[float, typer.Option(
        min=0.01, max=0.9, help="Mean share of sessions users abandon.")] = 0.2,
    out: Annotated[Path | None, typer.Option(
        help="Write 'key<TAB>value' lines here instead of publishing ('-': stdout); "
             "the format `kcat -P -K$'\\t'` reads.")] = None,
    dry_run: Annotated[bool, typer.Option(
        help="Only generate (measures generation speed); publish nothing.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    bootstrap_servers: Bootstrap = None, topic: Topic = None,
    create_topic: CreateTopic = True, timeout: Timeout = 10.0,
) -> None:
    """Publish a realistic, reproducible load of focus-session events.

    Pomodoro lengths (25 min mostly, some 15/50), per-user interruption rates, ~20% abandoned
    sessions, users in several time zones. Prints a JSON summary with the sustained rate.
    """
    from focus_sessions import producing
    from focus_sessions.topics import TopicProvisioningError

    profile = Profile(ended_v1_share=ended_v1_share, abandon_share=abandon_share)
    simulation = Simulation(users, sessions, seed, profile)
    publishing = out is None and not dry_run
    # before the progress bar takes the terminal: the broker line, or why there is none
    where = target_broker(bootstrap_servers, topic, create_topic, timeout) if publishing else None
    with ExitStack() as stack:
        advance = stack.enter_context(_progress(simulation, progress and str(out) != "-"))
        if where is None:
            sink = None
            if out is not None:
                stream = (typer.get_binary_stream("stdout") if str(out) == "-"
                          else stack.enter_context(out.open("wb")))

                def sink(key: bytes, value: bytes) -> None:
                    stream.write(key + b"\t" + value + b"\n")

            report = producing.generate_only(simulation, sink, advance)
            mode = "generated"
        else:
            try:
                report = asyncio.run(producing.simulate(
                    where, simulation, rate=rate or None, progress=advance))
            except (producing.ProduceError, TopicProvisioningError) as error:
                typer.secho(str(error), err=True, fg=typer.colors.RED)
                raise typer.Exit(1) from None
            mode = f"published to {where.topic} on {where.bootstrap_servers}"
    summary = {"mode": mode, "users": users, "seed": seed, **report.as_json()}
    typer.echo(json.dumps(summary), err=str(out) == "-")

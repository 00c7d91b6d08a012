"""CLI commands for the replay area (registered by focus_sessions.cli): ``replay`` and
``verify``. They parse options and print; :mod:`focus_sessions.bootstrap` builds the replayer
and runs the checks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from focus_sessions.settings import ProjectorSettings, from_environment, parse_size

if TYPE_CHECKING:
    from focus_sessions.consumers.replay.bulk import Progress as BulkProgress
    from focus_sessions.consumers.replay.replayer import ReplayReport

console = Console(stderr=True)


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} ev/s" if task.speed else "", style="progress.data.speed")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:,.0f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


class _Count(MofNCompleteColumn):
    """Events done of the total; nothing on the memory line (which has no total)."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.total is not None else Text("")


class _Bytes(ProgressColumn):
    def render(self, task: Task) -> Text:
        if "bytes" not in task.fields:
            return Text("")
        return Text(_size(task.fields["bytes"]), style="progress.filesize")


class RichProgress:
    """Bulk progress: one bar for the whole log and one per partition (events, bytes, events/s,
    ETA), and a line for memory (in use and peak, all replay processes), events held and what
    the workers flushed early."""

    def __init__(self) -> None:
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), _Count(),
                             _Bytes(), _Rate(), TimeRemainingColumn(), console=console,
                             transient=False)
        self.total: TaskID | None = None
        self.memory: TaskID | None = None
        self.parts: dict[int, TaskID] = {}
        self.start: dict[int, int] = {}
        self.start_bytes: dict[int, int] = {}

    def phase(self, text: str) -> None:
        self.bars.stop()
        console.print(f"[bold]{text}[/bold]")

    def bulk_resumed(self, offsets: Mapping[int, int], sizes: Mapping[int, int]) -> None:
        """A continued replay: where its checkpoints are (the rate counts only new work)."""
        self.start, self.start_bytes = dict(offsets), dict(sizes)

    def bulk_started(self, ends: Mapping[int, int]) -> None:
        self.bars.start()
        start, sizes = self.start, self.start_bytes
        self.total = self.bars.add_task("all partitions", total=sum(ends.values()),
                                        completed=sum(start.values()),
                                        bytes=sum(sizes.values()))
        for p, end in sorted(ends.items()):
            self.parts[p] = self.bars.add_task(f"  partition {p}", total=end,
                                               completed=start.get(p, 0), bytes=sizes.get(p, 0))
        self.memory = self.bars.add_task("memory: workers starting", total=None, visible=True)

    def bulk_status(self, progress: BulkProgress, memory: int, peak: int) -> None:
        """Bytes per partition, and the memory line."""
        for p, size in progress.bytes.items():
            self.bars.update(self.parts[p], bytes=size)
        if self.total is not None:
            self.bars.update(self.total, bytes=sum(progress.bytes.values()))
        if self.memory is not None:
            self.bars.update(self.memory, description=(
                f"memory {_size(memory)} (peak {_size(peak)}), {progress.held:,} events held, "
                f"{progress.flushes:,} flushes, {_size(progress.flushed_bytes)} of the log "
                "flushed before its end"))

    def bulk_advanced(self, offsets: Mapping[int, int]) -> None:
        for p, offset in offsets.items():
            self.bars.update(self.parts[p], completed=offset)
        if self.total is not None:
            self.bars.update(self.total, completed=sum(offsets.values()))


def replay(
    dry_run: Annotated[bool, typer.Option(help="Stop after the diff; change nothing live.")]
    = False,
    users: Annotated[str | None, typer.Option(help="Rebuild only these users (a,b,c).")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, show_default=False, help="Bulk decode processes (default: one per CPU, plus one)."
    )] = None,
    shadow_schema: Annotated[str, typer.Option(help="Schema for the shadow tables.")]
    = "focus_shadow",
    keep_retired: Annotated[bool, typer.Option(help="Keep the replaced tables in a "
                                               "focus_retired_<time> schema.")] = False,
    restart: Annotated[bool, typer.Option(help="Start from zero, discarding the checkpoints "
                                          "of an interrupted replay.")] = False,
    memory: Annotated[str | None, typer.Option(
        show_default=False, help="Memory budget of all replay processes together, e.g. 1GiB "
        "(default: FOCUS_REPLAY_MEMORY, 1GiB).")] = None,
) -> None:
    """Rebuild the read models from the log into shadow tables, show the diff, swap them in."""
    from focus_sessions.bootstrap import build_replayer
    from focus_sessions.servers import resolved

    settings = resolved(from_environment(ProjectorSettings))
    try:
        budget = parse_size(memory) if memory is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory") from exc
    chosen = frozenset(u.strip() for u in users.split(",") if u.strip()) if users else None
    progress = RichProgress()
    replayer = build_replayer(settings, progress, users=chosen, workers=workers,
                              shadow=shadow_schema, keep_retired=keep_retired, restart=restart,
                              memory=budget)
    try:
        report = asyncio.run(replayer.run(dry_run=dry_run))
    except BaseException:
        progress.bars.stop()
        console.print(f"[yellow]the replay stopped; its checkpoints are in schema "
                      f"{shadow_schema}: run the same command to continue it, or add "
                      "--restart to start over[/yellow]")
        raise
    progress.bars.stop()
    continued = " (continued from its checkpoints)" if report.resumed else ""
    console.print(f"replayed {report.events:,} events ({report.duplicates:,} duplicates, "
                  f"{report.dead_letters:,} dead letters){continued}; this run read "
                  f"{report.read:,} records in {report.bulk_seconds:.1f} s: "
                  f"{report.events_per_second:,.0f} events/s; {report.flushes:,} flushes, "
                  f"{report.split_sessions:,} sessions folded from parts; peak memory "
                  f"{report.peak_memory / (1 << 20):,.0f} MiB; caught up {report.caught_up:,}")
    if report.diff is not None:
        _print_diff(report)
    if report.swapped:
        kept = f"; old tables kept in {report.retired_schema}" if report.retired_schema else ""
        console.print(f"[green]swapped[/green] at positions {report.positions}{kept}")
    elif dry_run:
        console.print("dry run: live tables unchanged")


def _print_diff(report: ReplayReport) -> None:
    assert report.diff is not None
    if report.live_lag:
        console.print(f"[yellow]live lags the shadow by {report.live_lag} events per "
                      "partition; differences there may be lag[/yellow]")
    table = Table("table", "live rows", "shadow rows", "only live", "only shadow", "differing")
    for t in report.diff.tables:
        table.add_row(t.table, *(f"{n:,}" for n in (t.live_rows, t.shadow_rows, t.only_live,
                                                       t.only_shadow, t.differing)))
    console.print(table)
    for t in report.diff.tables:
        for example in t.examples:
            console.print(f"  {t.table} {example}", markup=False)
    console.print("[green]no differences[/green]" if report.diff.clean else
                  "[yellow]the swap replaces these rows with the replayed ones[/yellow]")


def verify(
    examples: Annotated[int, typer.Option(min=0, help="Examples printed per check.")] = 5,
) -> None:
    """Check that every read model equals its definition; exit 1 on any mismatch."""
    from focus_sessions.bootstrap import verify_read_models
    from focus_sessions.servers import resolved

    settings = resolved(from_environment(ProjectorSettings))
    report, broker_error = asyncio.run(verify_read_models(settings, examples))
    if broker_error:
        console.print(f"[yellow]broker {settings.kafka_bootstrap_servers} not reachable "
                      f"({broker_error}): log end checks skipped[/yellow]")
    for problem in report.problems:
        mark = "[green]ok[/green]" if not problem.count else f"[red]{problem.count} mismatch"
        console.print(f"{mark}  {problem.check}")
        for example in problem.examples:
            console.print(f"      {example}", markup=False)
    age = f", oldest {report.held_oldest_age}" if report.held else ""
    console.print(f"{report.sessions:,} sessions, {report.users:,} users; held events: "
                  f"{report.held:,}{age}")
    if report.reused_ids:
        console.print(f"[yellow]{report.reused_ids:,} event ids name events of more than one "
                      "session (a producer reusing ids; each counts in its session)[/yellow]")
        for example in report.reused_examples:
            console.print(f"      {example}", markup=False)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``focus`` CLI."""
    app.command()(replay)
    app.command()(verify)

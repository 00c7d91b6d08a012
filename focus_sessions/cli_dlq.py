"""CLI commands for the dead-letter area (registered by focus_sessions.cli): ``focus dlq list``,
``show`` and ``redrive``. They parse options and print; the work is in
:mod:`focus_sessions.consumers.redrive` (workflow: ``docs/dlq.md``)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from focus_sessions.settings import CommonSettings, from_environment

if TYPE_CHECKING:
    from focus_sessions.consumers.dlq_letters import Letter, LetterFilter
    from focus_sessions.consumers.redrive_ledger import History
    from focus_sessions.consumers.redrive_plan import RedrivePlan

dlq_app = typer.Typer(help="Dead letters: list and show them, redrive them once fixed.",
                      no_args_is_help=True)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

Reason = Annotated[list[str] | None, typer.Option(
    "--reason", "-r", help="Only these reasons (repeat, or a,b), e.g. unknown-type.")]
User = Annotated[list[str] | None, typer.Option("--user", "-u", help="Only this user's letters.")]
Session = Annotated[list[str] | None, typer.Option("--session", "-s",
                                                  help="Only this session's letters.")]
Since = Annotated[str | None, typer.Option(
    help="Dead-lettered at or after: ISO 8601 (no zone: UTC) or an age (30m, 2h, 7d).")]
Until = Annotated[str | None, typer.Option(help="Dead-lettered before (as --since).")]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(code)


def _settings(*, database: bool) -> CommonSettings:
    """Settings with the broker (and the database) found as every command finds them
    (:mod:`focus_sessions.servers`); says on stderr which broker."""
    from focus_sessions.servers import ServersNotConfigured, broker, broker_line, resolved

    settings = from_environment(CommonSettings)
    try:
        chosen, origin = broker(settings)
        if database:
            settings = resolved(settings)
    except ServersNotConfigured as error:
        _fail(str(error), 2)
    err.print(broker_line(chosen, origin), markup=False)
    return settings.model_copy(update={"kafka_bootstrap_servers": chosen})


def _filter(reason: list[str] | None, user: list[str] | None, session: list[str] | None,
            since: str | None, until: str | None, places: Iterable[str] = ()) -> LetterFilter:
    from focus_sessions.consumers.dlq_letters import letter_filter

    try:
        return letter_filter(reasons=reason or (), users=user or (), sessions=session or (),
                             places=places, since=since, until=until, now=datetime.now(UTC))
    except ValueError as error:
        _fail(str(error), 2)


def _letters(settings: CommonSettings, wanted: LetterFilter) -> list[Letter]:
    from focus_sessions.consumers.redrive import read_letters

    async def collect() -> list[Letter]:
        assert settings.kafka_bootstrap_servers is not None
        return [x async for x in read_letters(settings.kafka_bootstrap_servers,
                                              settings.focus_dlq_topic, wanted)]

    try:
        return asyncio.run(collect())
    except Exception as error:  # the broker or topic: say which, no traceback
        _fail(f"reading {settings.focus_dlq_topic} from {settings.kafka_bootstrap_servers} "
              f"failed: {type(error).__name__}: {error}")


def _histogram(counts: Counter[str]) -> Table:
    table = Table("reason", "letters")
    table.columns[1].justify = "right"
    for reason, n in counts.most_common():
        table.add_row(escape(reason), f"{n:,}")
    table.add_row("[bold]total[/bold]", f"[bold]{sum(counts.values()):,}[/bold]")
    return table


_EPOCH = datetime.fromtimestamp(0, UTC)
#: Widths of the columns of ``focus dlq list`` before the detail, which gets the rest of the line
#: (the event type is in ``--json`` and ``show``; an unknown type's detail names it).
_WIDTHS = (7, 20, 15, 12, 9)


def _row(cells: tuple[str, ...]) -> str:
    """One line of the letter list: fixed columns, then the detail (cut at the screen's edge)."""
    fixed = "".join(c[:w - 1].ljust(w) for c, w in zip(cells, _WIDTHS, strict=False))
    return fixed + " ".join(cells[-1].split())


def _when(letter: Letter) -> str:
    at = letter.dead_lettered_at
    return f"{at:%Y-%m-%d %H:%M:%S}" if at else "?"


@dlq_app.command("list")
def list_letters(reason: Reason = None, user: User = None, session: Session = None,
                 since: Since = None, until: Until = None,
                 limit: Annotated[int, typer.Option(min=0, help="Letters listed (the counts "
                                                    "cover all).")] = 50,
                 as_json: Annotated[bool, typer.Option("--json", help="One JSON object per "
                                                       "letter, no table.")] = False) -> None:
    """List dead letters, newest last, with their counts by reason."""
    settings = _settings(database=False)
    letters = _letters(settings, _filter(reason, user, session, since, until))
    letters.sort(key=lambda x: (x.dead_lettered_at or _EPOCH, x.partition, x.offset))
    if as_json:
        for letter in letters[-limit:] if limit else letters:
            typer.echo(json.dumps(_summary(letter)))
        return
    shown = letters[-limit:] if limit else []
    if shown:
        out.print(_row(("letter", "dead-lettered (UTC)", "reason", "user", "session",
                        "detail")), style="bold", markup=False, no_wrap=True, overflow="ellipsis")
    for letter in shown:
        out.print(_row((f"{letter.partition}:{letter.offset}", _when(letter), letter.reason,
                        letter.user_id or "-", (letter.session_id or "-")[:8], letter.detail)),
                  markup=False, no_wrap=True, overflow="ellipsis")
    out.print(f"{settings.focus_dlq_topic}: {len(letters):,} letter(s)")
    out.print(_histogram(Counter(x.reason for x in letters)))


def _summary(letter: Letter) -> dict[str, object]:
    return {"letter": f"{letter.partition}:{letter.offset}",
            "dead_lettered_at": letter.dead_lettered_at.isoformat()
            if letter.dead_lettered_at else None,
            "reason": letter.reason, "detail": letter.detail, "origin": letter.origin,
            "user_id": letter.user_id, "session_id": letter.session_id,
            "event_id": letter.event_id, "type": letter.event_type,
            "size": letter.original_size, "omitted": sorted(letter.omitted)}


@dlq_app.command()
def show(letters: Annotated[list[str] | None, typer.Argument(
            help="Letters as PARTITION:OFFSET (as `focus dlq list` names them).")] = None,
         reason: Reason = None, user: User = None, session: Session = None,
         since: Since = None, until: Until = None,
         limit: Annotated[int, typer.Option(min=1, help="Most letters shown.")] = 10) -> None:
    """Show letters in full: every header, the original bytes, what redrives did with them."""
    settings = _settings(database=False)
    found = _letters(settings, _filter(reason, user, session, since, until, letters or ()))
    history = _history(settings, [x.place for x in found[:limit]])
    for letter in found[:limit]:
        out.rule(f"letter {letter.partition}:{letter.offset}  {escape(letter.reason)}")
        for name, value in letter.headers:
            out.print(f"{name}: {escape(value.decode(errors='replace'))}")
        if letter.place in history:
            h = history[letter.place]
            out.print(f"[bold]redriven[/bold] by run {h.run_id} ({h.state}, count "
                      f"{h.redrive_count}) to partition {h.events_partition} offset "
                      f"{h.events_offset} at {h.updated_at:%Y-%m-%d %H:%M:%S}")
        try:
            out.print_json(letter.value.decode())
        except (ValueError, UnicodeDecodeError):
            out.print(repr(letter.value[:2000]), markup=False)
    if len(found) > limit:
        err.print(f"{len(found) - limit:,} more letter(s) match; raise --limit to see them")
    elif not found:
        err.print("no letter matches")


def _history(settings: CommonSettings, places: list[tuple[int, int]]
             ) -> dict[tuple[int, int], History]:
    """The ledger's rows for ``places`` when a database is at hand (best effort)."""
    from focus_sessions.consumers.redrive_ledger import Ledger
    from focus_sessions.servers import ServersNotConfigured, resolved

    try:
        url = resolved(settings, ("database_url",)).database_url
    except ServersNotConfigured:
        return {}
    assert url is not None

    async def read() -> dict[tuple[int, int], History]:
        ledger = await Ledger.open(url, settings.focus_dlq_topic)
        try:
            return dict(await ledger.history(places))
        finally:
            await ledger.close()

    try:
        return asyncio.run(read())
    except Exception as error:  # no ledger yet (not migrated), or no database
        err.print(f"[yellow]redrive ledger not read: {escape(str(error))}[/yellow]")
        return {}


class _Bar:
    """The redrive's progress bar (stderr)."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("redriving"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=err)
        self.task = self.bar.add_task("redrive", total=0)

    def started(self, total: int) -> None:
        self.bar.update(self.task, total=total)
        self.bar.start()

    def advanced(self, sent: int) -> None:
        self.bar.update(self.task, completed=sent)


@dlq_app.command()
def redrive(
    reason: Reason = None, user: User = None, session: Session = None, since: Since = None,
    until: Until = None,
    dry_run: Annotated[bool, typer.Option(help="Print what would be sent, by reason; send "
                                          "nothing.")] = False,
    max_letters: Annotated[int | None, typer.Option("--max", min=1, show_default=False,
                                                    help="Send at most this many.")] = None,
    rate: Annotated[float | None, typer.Option(min=0.1, show_default=False,
                                               help="At most this many events per second.")]
    = None,
    max_redrives: Annotated[int, typer.Option(min=1, help="Loop guard: letters whose bytes "
                                              "went back this many times stay.")] = 3,
) -> None:
    """Publish letters back to the events topic, each at most once; resumable after a crash.

    Each goes keyed by its user with its original bytes, so it keeps its id and counts once.
    """
    import psycopg
    from aiokafka.errors import KafkaError
    from psycopg.errors import UndefinedTable

    from focus_sessions.bootstrap import producer
    from focus_sessions.consumers.redrive import Limits, RedriveOptions, Redriver
    from focus_sessions.consumers.redrive_ledger import RedriveBusy
    from focus_sessions.consumers.replay.follow import TopicUnavailable

    settings = _settings(database=True)
    assert settings.kafka_bootstrap_servers is not None
    assert settings.database_url is not None
    options = RedriveOptions(settings.kafka_bootstrap_servers, settings.database_url,
                             settings.focus_events_topic, settings.focus_dlq_topic)
    bar = _Bar()
    redriver = Redriver(options, lambda: producer(options.bootstrap), bar)
    limits = Limits(max_letters=max_letters, rate=rate, max_redrives=max_redrives)
    try:
        report = asyncio.run(redriver.run(_filter(reason, user, session, since, until), limits,
                                          dry_run=dry_run))
    except RedriveBusy as busy:
        _fail(str(busy), 3)
    except UndefinedTable:
        _fail(f"no redrive ledger in {_hide_password(options.url)}: run `focus migrate` first")
    except (psycopg.OperationalError, KafkaError, TopicUnavailable, OSError) as error:
        _fail(f"redrive stopped: {type(error).__name__}: {error}. Broker "
              f"{options.bootstrap}, database {_hide_password(options.url)}; letters the "
              "ledger has as sent stay sent: run it again to go on")
    finally:
        bar.bar.stop()
    out.print(f"{settings.focus_dlq_topic}: {report.plan.matched:,} letter(s) match")
    out.print(_histogram(report.plan.reasons))
    _print_plan(report.plan)
    if dry_run:
        out.print(f"dry run: {len(report.plan.sends):,} letter(s) would go to "
                  f"{settings.focus_events_topic}; nothing sent")
    elif report.run_id is None:
        out.print("nothing to send")
    else:
        out.print(f"run {report.run_id}: sent {report.sent:,} letter(s) to "
                  f"{settings.focus_events_topic} in {report.seconds:.1f} s; "
                  "`focus verify` checks the read models once the projector has caught up")


def _hide_password(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(url)
    except Exception:
        return "(the configured DATABASE_URL)"
    if parts.get("password"):
        parts["password"] = "***"  # noqa: S105 - masking, not a secret
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


def _print_plan(plan: RedrivePlan) -> None:
    again = sum(1 for s in plan.sends if s.again)
    note = f" ({again:,} left uncertain by a run that crashed)" if again else ""
    out.print(f"to send: {len(plan.sends):,}{note}")
    for why, n in plan.skip_counts().items():
        out.print(f"skipped: {n:,} {why}")


def register(app: typer.Typer) -> None:
    """Add ``dlq`` (list, show, redrive) to the ``focus`` CLI."""
    app.add_typer(dlq_app, name="dlq")

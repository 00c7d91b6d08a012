"""``focus replay``: rebuild the read models from the log into shadow tables, diff, swap.

1. **Bulk**: worker processes read every partition from offset 0 to the end offsets captured at
   start (``--users``: to the live positions) into a fresh shadow schema (:mod:`.pool`).
2. **Catch-up**: the shadow follows the live positions with the live projector's own code path
   (:func:`focus_sessions.projections.batch.plan` + :class:`ProjectionRepository` on the shadow
   schema).
3. **Diff**: in one REPEATABLE READ snapshot, the shadow is brought to exactly the live
   positions and compared table by table (:mod:`focus_sessions.consumers.replay.compare`).
4. **Swap**: one transaction locks the live tables, catches the shadow up to the live positions,
   and moves the shadow tables in (``--users``: replaces only those users' rows). Positions move
   with the tables: the live projector continues from the shadow's positions, or is fenced by its
   compare-and-set and re-reads them; no event is skipped or applied twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection

from focus_sessions.consumers.replay import checkpoint, rss, shadow_sql, split
from focus_sessions.consumers.replay.bulk import MIN_HELD, BulkSpec, Progress
from focus_sessions.consumers.replay.compare import ReplayDiff, diff
from focus_sessions.consumers.replay.follow import Follower, ReplayOptions, ReplayProgress, Silent
from focus_sessions.consumers.replay.pool import Pool, deal, warm_up
from focus_sessions.projections import notify
from focus_sessions.projections.readmodels import POSITIONS, ROLLUPS, TABLES, Rollup
from focus_sessions.projections.readmodels.sessions import EVENTS, SESSIONS

#: Advisory lock class held for a replay's whole run (with the shadow schema's name hash).
REPLAY_LOCK = 0x5265706C  # "Repl"
#: Memory kept out of the workers' shares for the coordinator's own work (the diff, the
#: folding of split sessions, progress), on top of what it and the fork server hold at start.
COORDINATOR_RESERVE = 64 << 20
#: A worker share below this cannot hold its process (~60 MiB) and a useful number of events.
WORKER_FLOOR = 96 << 20


#: ``migrate(url, schema)``: creates every read-model table in a schema
#: (focus_sessions.migrate.migrate, passed in by the composition root: consumers do not import
#: the CLI package).
Migrate = Callable[[str, str], object]


class ReplayError(RuntimeError):
    """The replay cannot go on; the message says why and what to do."""


@dataclass(slots=True)
class ReplayReport:
    events: int = 0
    #: Records this run read (a continued run reads only what its checkpoints did not cover).
    read: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    bulk_seconds: float = 0.0
    caught_up: int = 0
    diff: ReplayDiff | None = None
    swapped: bool = False
    retired_schema: str | None = None
    live_lag: dict[int, int] = field(default_factory=dict)
    #: Transactions the swap needed: > 1 when live tables were busy and it backed off.
    swap_attempts: int = 0
    positions: dict[int, int] = field(default_factory=dict)
    #: Peak resident memory of every replay process together (coordinator, fork server,
    #: workers), bytes, sampled while the replay ran.
    peak_memory: int = 0
    #: Times a worker's memory share filled and it flushed its sessions to PostgreSQL early.
    flushes: int = 0
    #: Sessions that more than one flush (or worker) saw a part of, folded whole at the end.
    split_sessions: int = 0
    #: This run continued an interrupted one (from its checkpoints) instead of starting over.
    resumed: bool = False
    #: Seconds of this run's bulk steps: ``read`` (workers reading and flushing), ``tables``
    #: (sums added up, split sessions set aside, indexes built), ``refold``.
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        """Records read by this run per second of its bulk phase."""
        return self.read / self.bulk_seconds if self.bulk_seconds else 0.0


class Replayer:
    """One replay of ``options.topic`` into ``options.shadow``, then into ``options.live``."""

    def __init__(
        self, options: ReplayOptions, migrate: Migrate, progress: ReplayProgress | None = None
    ) -> None:
        if options.shadow == options.live:
            raise ReplayError("the shadow schema must differ from the live schema")
        self.options = options
        self.migrate = migrate
        self.progress = progress or Silent()
        self.follow = Follower(options, self.progress)
        self.report = ReplayReport()
        self.pool = Pool()
        self.watch = rss.Watch(self._pids)

    async def run(self, *, dry_run: bool = False) -> ReplayReport:
        """Bulk, catch-up, diff, then (unless ``dry_run``) swap.

        A run that fails or is killed leaves its shadow schema and checkpoints: the same command
        continues it (``restart`` in the options starts over). A finished run drops the shadow.
        """
        async with await self._connect() as guard:
            cur = await guard.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                      (REPLAY_LOCK, self.options.shadow))
            if not (await cur.fetchone() or [False])[0]:
                raise ReplayError(f"another replay is using schema {self.options.shadow!r}; "
                                  "wait for it, or pass another --shadow-schema")
            await self.follow.start()
            try:
                with rss.Watch(self._pids) as self.watch:
                    await self.bulk()
                    await self.catch_up()
                    self.report.diff = await self.diff()
                    if dry_run:
                        await self._drop(self.options.shadow)
                    else:
                        await self.swap()
            finally:
                await self.follow.stop()
                self.report.peak_memory = self.watch.peak
        return self.report

    def _pids(self) -> list[int | None]:
        return [*rss.helpers(), *self.pool.pids()]

    async def _connect(self) -> AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.options.url, autocommit=True)

    async def bulk(self) -> None:
        """Every partition read to the end offsets of the run into the shadow tables: a new run,
        or the interrupted one continued from its checkpoints."""
        o = self.options
        async with await self._connect() as conn:
            if POSITIONS not in await shadow_sql.tables(conn, o.live):
                raise ReplayError(f"schema {o.live!r} has no read-model tables: run "
                                  "`focus migrate` first")
            run = None if o.restart else await checkpoint.load(conn, o.shadow)
        warm_up()  # the workers' process server imports while the shadow schema is made
        if run is not None:
            why = checkpoint.run_matches(run, o.topic, o.users)
            if why:
                raise ReplayError(
                    f"schema {o.shadow!r} holds an interrupted replay that these options cannot "
                    f"continue ({why}): run its command again to continue it, or pass "
                    "--restart to start over")
            now = await self.follow.log_ends()  # also what catch-up reads from
            shorter = {p: (end, now.get(p, 0)) for p, end in run.ends.items()
                       if now.get(p, 0) < end}
            if shorter:
                raise ReplayError(
                    f"{o.topic} is shorter than when this replay began (partition: (then, now) "
                    f"{shorter}): was it recreated? Pass --restart to replay it from zero")
            async with await self._connect() as conn:
                run.generation = await checkpoint.take_over(conn, o.shadow)
            self.report.resumed = True
            self.progress.phase(f"continuing the interrupted replay (phase {run.phase})")
        else:
            run = await self._begin()
        async with await self._connect() as conn:
            before = await checkpoint.workers(conn, o.shadow)
        resumed = getattr(self.progress, "bulk_resumed", None)
        if resumed is not None:  # bars start where the checkpoints are, not at 0
            resumed({p: n for w in before for p, n in w.next_offsets.items()},
                    {p: n for w in before for p, n in w.bytes.items()})
        self.progress.bulk_started(run.ends)
        started = time.perf_counter()
        steps, step = self.report.steps, time.perf_counter()

        def took(name: str) -> None:
            nonlocal step
            steps[name] = time.perf_counter() - step
            step = time.perf_counter()

        if run.phase == "bulk":
            await self._read(run)
            run.phase = await self._advance("tables")
            took("read")
        if run.phase == "tables":
            await self._finish_tables(run)
            run.phase = await self._advance("refold")
            took("tables")
        async with await self._connect() as conn:
            after = await checkpoint.workers(conn, o.shadow)
        if run.phase == "refold":
            last_times: dict[int, datetime] = {}
            for w in after:
                last_times.update(w.last_times)
            async with await self._connect() as conn, conn.transaction():
                folded = await split.refold(conn, o.shadow, o.topic, run.ends, last_times)
                run.counts = {"split_sessions": folded.sessions,
                              "split_duplicates": folded.duplicates,
                              "split_conflicts": folded.conflicts}
                await checkpoint.set_phase(conn, o.shadow, "loaded", run.counts)
            run.phase = "loaded"
            took("refold")
        r, c = self.report, run.counts
        r.bulk_seconds = time.perf_counter() - started
        r.read = (sum(sum(w.next_offsets.values()) for w in after)
                  - sum(sum(w.next_offsets.values()) for w in before))
        dropped = c.get("split_duplicates", 0) + c.get("split_conflicts", 0)
        r.events = sum(w.events for w in after) - dropped
        r.duplicates = sum(w.duplicates for w in after) + c.get("split_duplicates", 0)
        r.dead_letters = sum(w.dead_letters for w in after) + c.get("split_conflicts", 0)
        r.flushes = sum(w.flushes for w in after)
        r.split_sessions = c.get("split_sessions", 0)
        r.positions = dict(run.ends)

    async def _begin(self) -> checkpoint.Run:
        """A fresh shadow schema with the live table definitions, indexes stripped, and the
        checkpoint tables of a new run."""
        o = self.options
        await self._drop(o.shadow)
        await asyncio.to_thread(self.migrate, o.url, o.shadow)
        async with await self._connect() as conn:
            indexes = await shadow_sql.strip_indexes(conn, o.shadow)
        ends = await self.follow.log_ends()
        if o.users is not None:  # never ahead of live: the live projector keeps these users
            async with await self._connect() as conn:
                live = await shadow_sql.positions(conn, o.live, o.topic)
            ends = {p: min(end, live.get(p, 0)) for p, end in ends.items()}
        run = checkpoint.Run(o.topic, sorted(o.users) if o.users is not None else None, ends,
                             [list(g) for g in deal(sorted(ends), o.workers)], indexes, "bulk", 1)
        async with await self._connect() as conn, conn.transaction():
            await checkpoint.create(conn, o.shadow, run)
        return run

    async def _read(self, run: checkpoint.Run) -> None:
        """The workers, each given its share of the memory budget, read to the run's ends."""
        o = self.options
        async with await self._connect() as conn:
            skip = await self.follow.unstorable(conn)
        ours = rss.total(rss.helpers()) + COORDINATOR_RESERVE
        share = (o.memory_budget - ours) // len(run.groups)
        if share < WORKER_FLOOR:
            self.progress.phase(
                f"memory budget {rss.mib(o.memory_budget)} leaves {rss.mib(max(share, 0))} per "
                f"worker after the coordinator's {rss.mib(ours)}: workers flush every "
                f"{MIN_HELD} events and may still exceed it")
        specs = [BulkSpec(o.bootstrap, o.url, o.topic, o.shadow, g, tuple(parts), run.ends,
                          run.generation, max(share, 0), o.users,
                          frozenset(s for s in skip if s[0] in parts))
                 for g, parts in enumerate(run.groups)]
        await self.pool.run(specs, self._advanced)

    async def _finish_tables(self, run: checkpoint.Run) -> None:
        """Every loaded table made whole, at once on several connections: each rollup's staged
        sums added up, then its indexes built; split sessions set aside, then the sessions'
        tables' indexes built. Each step is idempotent (a continued run redoes what is left)."""
        o, steps = self.options, self.report.steps

        async def timed(name: str, work: Awaitable[object]) -> None:
            began = time.perf_counter()
            await work
            steps[name] = time.perf_counter() - began

        async def rollup(r: Rollup) -> None:
            async with await self._connect() as conn:
                await timed(f"sum {r.name}", split.load_staged(conn, o.shadow, r))
            await timed(f"index {r.name}", self._restore(run.indexes.get(r.tables[0].name, [])))

        async def sessions() -> None:
            async with await self._connect() as conn:
                await timed("set aside", split.set_aside(conn, o.shadow))
            await asyncio.gather(*(timed(f"index {t}", self._restore(run.indexes.get(t, [])))
                                   for t in (EVENTS.name, SESSIONS.name)))

        await asyncio.gather(sessions(), *(rollup(r) for r in ROLLUPS))

    def _advanced(self, progress: Progress) -> None:
        self.progress.bulk_advanced(progress.offsets)
        status = getattr(self.progress, "bulk_status", None)
        if status is not None:
            status(progress, self.watch.now, self.watch.peak)

    async def _advance(self, phase: str) -> str:
        async with await self._connect() as conn:
            await checkpoint.set_phase(conn, self.options.shadow, phase)
        return phase

    async def _restore(self, statements: list[list[str]]) -> None:
        async with await self._connect() as conn:
            await shadow_sql.restore_indexes(conn, self.options.shadow, statements)

    async def catch_up(self, *, close_enough: int = 2000, rounds: int = 50) -> None:
        """Follow the live positions until the shadow is within ``close_enough`` events."""
        self.progress.phase("catching up with the live projector")
        async with await self._connect() as conn:
            for _ in range(rounds):
                live = await shadow_sql.positions(conn, self.options.live, self.options.topic)
                async with conn.transaction():
                    applied = await self.follow.catch_up(conn, live)
                self.report.caught_up += applied
                if applied <= close_enough:
                    return

    async def diff(self) -> ReplayDiff:
        """Shadow vs live at the same log positions, in one snapshot of both."""
        o = self.options
        self.progress.phase("comparing the shadow with the live tables")
        async with await self._connect() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            live = await shadow_sql.positions(conn, o.live, o.topic)
            self.report.caught_up += await self.follow.catch_up(conn, live)
            shadow = await shadow_sql.positions(conn, o.shadow, o.topic)
            self.report.live_lag = {p: s - live.get(p, 0) for p, s in shadow.items()
                                    if s > live.get(p, 0)}
            users = sorted(o.users) if o.users is not None else None
            live_tables = await shadow_sql.tables(conn, o.live)
            return await diff(conn, o.live, o.shadow, users=users,
                              tables=[t for t in TABLES if t.name in live_tables])

    async def swap(self) -> None:
        """Lock live, final catch-up, swap: one transaction, retried while locks are busy."""
        o = self.options
        self.progress.phase("swapping the shadow tables in")
        retired = f"focus_retired_{datetime.now(UTC):%Y%m%d%H%M%S}"
        async with await self._connect() as conn:
            names = await shadow_sql.tables(conn, o.shadow)
            if o.users is None:
                await shadow_sql.check_swappable(conn, o.live, o.shadow, names)
            for attempt in range(o.lock_attempts):
                self.report.swap_attempts = attempt + 1
                try:
                    async with conn.transaction():
                        await self._swap_locked(conn, names, retired)
                    break
                except psycopg.errors.LockNotAvailable:
                    await asyncio.sleep(random.uniform(0.02, 0.1) * min(attempt + 1, 5))  # noqa: S311
            else:
                raise ReplayError(
                    f"could not lock the live tables in {o.lock_attempts} attempts: long "
                    "transactions hold them; end those (pg_stat_activity) and run again"
                )
            self.report.positions = await shadow_sql.positions(conn, o.live, o.topic)
        self.report.swapped = True
        if o.users is None:
            self.report.retired_schema = retired
            if not o.keep_retired:
                await self._drop(retired)
                self.report.retired_schema = None
        await self._drop(o.shadow)

    async def _swap_locked(self, conn: AsyncConnection[Any], names: list[str],
                           retired: str) -> None:
        o = self.options
        if o.users is None:
            await shadow_sql.lock_live(conn, o.live, names, "ACCESS EXCLUSIVE", o.lock_timeout_ms)
        else:  # readers of the per-user tables go on; the projector waits
            await shadow_sql.lock_live(conn, o.live, [EVENTS.name], "ACCESS EXCLUSIVE",
                                       o.lock_timeout_ms)
            await shadow_sql.lock_live(conn, o.live, [n for n in names if n != EVENTS.name],
                                       "EXCLUSIVE", o.lock_timeout_ms)
        live = await shadow_sql.positions(conn, o.live, o.topic)
        self.report.caught_up += await self.follow.catch_up(conn, live)
        if o.users is None:
            await shadow_sql.swap_schemas(conn, o.live, o.shadow, retired, names, o.topic)
        else:
            await shadow_sql.swap_users(conn, o.live, o.shadow, sorted(o.users), names)
        # readers' caches of the live tables drop everything once this commits
        await notify.send(conn, notify.flush_notice(o.live))

    async def _drop(self, schema: str) -> None:
        async with await self._connect() as conn:
            await shadow_sql.drop_schema(conn, schema)

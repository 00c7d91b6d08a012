"""Run the bulk phase's worker processes and relay their progress.

Partitions are dealt to ``workers`` processes. They come from a fork server where the platform
has one (Linux, macOS): a clean process, started by :func:`warm_up` while the replay still sets
up its shadow schema, imports the worker's modules (and the main script's, see
:func:`main_imports`) once, and every worker is forked from it ready to run. (Spawning imported
them in every worker, all at once: ~0.4 s of CPU each, ~0.7 s under the ``focus`` command, whose
own modules the children import too.) Either way nothing of the parent's event loop, sockets or
threads is inherited. Elsewhere, workers are spawned.

The coordinator relays the workers' progress and raises the first failure; sessions that two
workers saw are found and folded afterwards (:mod:`.split`), from what the workers wrote.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from types import ModuleType
from typing import Any

from focus_sessions.consumers.replay.bulk import BulkSpec, Progress, run_worker, totals

OnProgress = Callable[[Progress], None]


class ReplayWorkerError(RuntimeError):
    """A bulk worker failed; the message carries its traceback."""


def _context() -> SpawnContext | ForkServerContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["focus_sessions.consumers.replay.bulk", *main_imports()])
    return ctx


def main_imports() -> list[str]:
    """The loaded modules the main script took names from (``from focus_sessions.cli import main``).

    Every worker runs the main script again before its target, as a spawned child does, and a
    ``"__main__"`` preload does not spare that: CPython 3.11's fork server drops the script's
    path on the way (``multiprocessing.forkserver`` keeps only the keys ``main_path`` and
    ``sys_path`` of the preparation data, which calls it ``init_main_from_path``). So the
    server imports what the script imports, once, and each worker's re-run finds it loaded:
    under the ``focus`` command that saves each worker ~0.3 s of CPU (importing the CLI).
    """
    main = sys.modules.get("__main__")
    found: set[str] = set()
    for key, value in vars(main).items() if main is not None else ():
        if key.startswith("__"):
            continue  # the module's own attributes: its loader, spec, builtins
        name = value.__name__ if isinstance(value, ModuleType) else getattr(
            value, "__module__", None)
        if isinstance(name, str) and name in sys.modules and not name.startswith("__"):
            found.add(name)
    return sorted(found)


def warm_up() -> None:
    """Start the fork server now, so that its imports overlap what the caller does next."""
    if _context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


def deal(partitions: list[int], workers: int) -> list[tuple[int, ...]]:
    """Round-robin partitions over at most ``workers`` groups (none empty)."""
    groups = [tuple(partitions[i::workers]) for i in range(max(1, workers))]
    return [g for g in groups if g]


class Pool:
    """The bulk workers of one replay: started, driven to the end, their processes listed for
    the memory watch."""

    def __init__(self) -> None:
        self.procs: list[Any] = []

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None and p.is_alive()]

    async def run(self, specs: list[BulkSpec], on_progress: OnProgress | None = None) -> None:
        """Run one worker per spec until every one has flushed its partitions' ends."""
        ctx = _context()
        pipes: list[Connection] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=run_worker, args=(spec, child), daemon=True,
                               name=f"replay-bulk-{spec.group}")
            proc.start()
            child.close()
            pipes.append(parent)
            self.procs.append(proc)
        try:
            await _drive(pipes, on_progress)
        finally:
            for proc in self.procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()
            for pipe in pipes:
                pipe.close()
            self.procs.clear()


async def _drive(pipes: list[Connection], on_progress: OnProgress | None) -> None:
    progress: dict[int, Progress] = {}
    done: set[int] = set()
    while len(done) < len(pipes):
        message = False
        for i, pipe in enumerate(pipes):
            while i not in done and pipe.poll():
                message = True
                kind, body = _receive(pipe)
                if kind == "progress":
                    progress[body.group] = body
                    if on_progress is not None:
                        on_progress(totals(progress))
                elif kind == "done":
                    done.add(i)
                elif kind == "error":
                    raise ReplayWorkerError(f"replay worker {i} failed: {body}")
        if not message:
            await asyncio.sleep(0.02)


def _receive(pipe: Connection) -> tuple[str, Any]:
    try:
        kind, body = pipe.recv()
    except EOFError as exc:
        raise ReplayWorkerError("a replay worker exited without reporting (killed?)") from exc
    return str(kind), body

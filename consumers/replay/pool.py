"""Run the bulk phase's worker processes and merge what they return.

Partitions are dealt to ``workers`` processes. They come from a fork server where the platform
has one (Linux, macOS): a clean process, started by :func:`warm_up` while the replay still sets
up its shadow schema, imports the worker's modules (and the main script's, see
:func:`main_imports`) once, and every worker is forked from it ready to run. (Spawning imported
them in every worker, all at once: ~0.4 s of CPU each, ~0.7 s under the ``focus`` command, whose
own modules the children import too.) Either way nothing of the parent's event loop, sockets or
threads is inherited. Elsewhere, workers are spawned.

The coordinator relays progress, finds sessions that more than one worker saw, has their owners
hand them back, and folds those whole; likewise it collects the rollups of users more than one
worker saw, to add them up.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from types import ModuleType
from typing import Any

from focus_sessions.consumers.replay.bulk import BulkSpec, WorkerResult, run_worker
from focus_sessions.consumers.replay.memory import Placed, Rollups

OnProgress = Callable[[Mapping[int, int]], None]
#: What a worker reports having read: its session ids (16 bytes each, concatenated) and the
#: user ids its events named.
Seen = tuple[bytes, set[str]]


class ReplayWorkerError(RuntimeError):
    """A bulk worker failed; the message carries its traceback."""


@dataclass(slots=True)
class Merged:
    rollups: Rollups = field(default_factory=Rollups)
    shared: list[Placed] = field(default_factory=list)
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    last_event_time: dict[int, datetime] = field(default_factory=dict)


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


async def run_pool(specs: list[BulkSpec], on_progress: OnProgress | None = None) -> Merged:
    """Run one worker per spec; return the merged rollups and the cross-worker sessions."""
    ctx = _context()
    pipes: list[Connection] = []
    procs: list[Any] = []
    for spec in specs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=run_worker, args=(spec, child), daemon=True,
                           name=f"replay-bulk-{'-'.join(map(str, spec.partitions))}")
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    try:
        return await _drive(pipes, on_progress)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        for pipe in pipes:
            pipe.close()


async def _drive(pipes: list[Connection], on_progress: OnProgress | None) -> Merged:
    merged = Merged()
    offsets: dict[int, int] = {}
    seen: dict[int, Seen] = {}
    results: dict[int, WorkerResult] = {}
    while len(results) < len(pipes):
        message = False
        for i, pipe in enumerate(pipes):
            while i not in results and pipe.poll():
                message = True
                kind, body = _receive(pipe)
                if kind == "progress":
                    offsets.update(body)
                    if on_progress is not None:
                        on_progress(offsets)
                elif kind == "seen":
                    seen[i] = body
                    if len(seen) == len(pipes):
                        _send_shared(pipes, seen)
                elif kind == "done":
                    results[i] = body
                elif kind == "error":
                    raise ReplayWorkerError(f"replay worker {i} failed: {body}")
        if not message:
            await asyncio.sleep(0.02)
    for result in results.values():
        merged.rollups.merge(result.rollups)
        merged.shared.extend(result.shared)
        merged.events += result.events
        merged.duplicates += result.duplicates
        merged.dead_letters += result.dead_letters
        merged.last_event_time.update(result.last_event_time)
    return merged


def _receive(pipe: Connection) -> tuple[str, Any]:
    try:
        kind, body = pipe.recv()
    except EOFError as exc:
        raise ReplayWorkerError("a replay worker exited without reporting (killed?)") from exc
    return str(kind), body


def _send_shared(pipes: list[Connection], seen: Mapping[int, Seen]) -> None:
    """Tell every worker which of its sessions and users another worker also saw."""
    owners: dict[bytes, int] = {}
    shared: set[bytes] = set()
    user_owners: dict[str, int] = {}
    shared_users: set[str] = set()
    for i, (blob, users) in seen.items():
        for j in range(0, len(blob), 16):
            sid = blob[j:j + 16]
            if owners.setdefault(sid, i) != i:
                shared.add(sid)
        for user in users:
            if user_owners.setdefault(user, i) != i:
                shared_users.add(user)
    for i, pipe in enumerate(pipes):
        blob, users = seen[i]
        mine = b""
        if shared:
            ids = {blob[j:j + 16] for j in range(0, len(blob), 16)}
            mine = b"".join(shared & ids)
        pipe.send(("shared", (mine, shared_users & users)))

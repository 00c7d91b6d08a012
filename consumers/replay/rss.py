"""Resident memory of the replay's processes: what its memory budget is measured against.

A process's resident set size (RSS) counts every page it has in memory, pages it shares with
another process (a forked worker's, with its fork server) included; the sum over the replay's
processes therefore never understates what they use together. Read from ``/proc`` (Linux);
where there is no ``/proc`` the figures are 0 and the budget falls back to the workers' own
event counts (``docs/replay.md``, "Memory").
"""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import threading
from collections.abc import Callable, Iterable

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss(pid: int | None = None) -> int:
    """Resident bytes of ``pid`` (default: this process); 0 when unknown or gone."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def total(pids: Iterable[int | None]) -> int:
    return sum(rss(pid) for pid in pids)


def helpers() -> list[int | None]:
    """This process and the helpers multiprocessing started for it: the fork server and the
    resource tracker (private attributes of the standard library, hence ``getattr``)."""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    tracker = getattr(multiprocessing.resource_tracker, "_resource_tracker", None)
    return [os.getpid(), getattr(server, "_forkserver_pid", None),
            getattr(tracker, "_pid", None)]


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


class Watch:
    """Samples the summed RSS of ``pids()`` on a thread; keeps the latest and the peak."""

    def __init__(self, pids: Callable[[], Iterable[int | None]], every: float = 0.1) -> None:
        self.pids, self.every = pids, every
        self.now = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay-rss", daemon=True)

    def __enter__(self) -> Watch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> int:
        self.now = total(self.pids())
        self.peak = max(self.peak, self.now)
        return self.now

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

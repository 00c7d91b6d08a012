"""Resident memory of a process and its descendants, read from ``/proc`` (Linux), for the
benchmarks: measured from outside the code under test, so it does not depend on that code's own
report. No dependency beyond the standard library."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` (``/proc/<pid>/statm``: resident pages x page size); 0 once
    it has gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from the ppid field of each ``/proc/<pid>/stat``."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:  # it exited between the listing and the read
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after
        # its last ")".
        fields = text[text.rfind(b")") + 2:].split()
        if len(fields) > 1:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def children(pid: int) -> list[int]:
    return children_by_parent().get(pid, [])


def descendants(root: int, exclude: Iterable[int] = ()) -> list[int]:
    """Every process below ``root``, skipping the processes in ``exclude`` and all below them."""
    tree, skip = children_by_parent(), set(exclude)
    found, todo = [], [root]
    while todo:
        for child in tree.get(todo.pop(), ()):
            if child not in skip:
                found.append(child)
                todo.append(child)
    return found


class PeakMemory:
    """``with PeakMemory() as peak: ...``: a thread that every ``interval`` seconds sums the
    resident memory of this process and of all its descendants (less the subtrees rooted at
    ``exclude``, e.g. a broker or database server the benchmark started itself) and keeps the
    largest sum. Resident sizes are added as the kernel reports them, nothing subtracted:
    pages that forked processes share are counted once per process, as ``ps`` and the
    OOM-killer's per-process view count them."""

    def __init__(self, exclude: Iterable[int] = (), interval: float = 0.1) -> None:
        self.root = os.getpid()
        self.exclude = set(exclude)
        self.interval = interval
        self.baseline = rss(self.root)  # this process alone, before the measured work
        self.peak = 0
        self.processes_at_peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def sample(self) -> int:
        pids = [self.root, *descendants(self.root, self.exclude)]
        total = sum(rss(pid) for pid in pids)
        self.samples += 1
        if total > self.peak:
            self.peak, self.processes_at_peak = total, len(pids)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

"""Replay at any size (issue 20), against the real broker and PostgreSQL: a memory budget that
forces every flush and split path, resuming after SIGKILL in every phase, and the budget
measured on the replay's processes."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from focus_sessions.consumers.replay import rss
from focus_sessions.contracts.codec import encode
from focus_sessions.contracts.events import CloudEvent
from focus_sessions.migrate import migrate
from focus_sessions.producers import events as ev
from tests.integration.test_replay import caught_up, describe, replayer
from tests.support.projection import (
    publish,
    reference_snapshot,
    running_projector,
    settings_for,
    snapshot,
    snapshot_diff,
)
from tests.support.stream import stream
from tests.unit.histories import minutes

Message = CloudEvent | tuple[bytes | None, bytes | None]


def hostile_log(events: int, users: int, seed: int = 11) -> list[Message]:
    """A log no flush can cut cleanly: ``stream``'s sessions (held ends, retried events) with
    their events spread up to 40 records apart, a few events delivered again far later, poison,
    ends held for good or for hundreds of records, and sessions whose events name two users
    (two partitions, so often two workers)."""
    rng = random.Random(seed)
    base = list(stream(events, users=users, seed=seed))
    spread = sorted(range(len(base)), key=lambda i: i + rng.uniform(0, 40))
    log: list[Message] = [base[i] for i in spread]
    for _ in range(len(base) // 40):  # redelivered long after: duplicates across flushes
        log.insert(rng.randrange(len(log) // 2, len(log)), base[rng.randrange(len(base) // 2)])
    for n in range(20):  # poison: dead letters
        log.insert(rng.randrange(len(log)), (b"user-1", b'{"not": "an event", "n": %d}' % n))
    for n in range(10):  # an end whose start never comes: held for good
        orphan = ev.started(f"user-{n}", minutes(20_000 + 60 * n)).data.session_id
        log.insert(rng.randrange(len(log)), ev.ended(f"user-{n}", orphan, minutes(20_025 + n)))
    for n in range(10):  # an end whose start comes hundreds of records later: held till then
        start = ev.started(f"user-{n}", minutes(30_000 + 60 * n))
        at = rng.randrange(len(log) // 2)
        log.insert(at, ev.ended(f"user-{n}", start.data.session_id, minutes(30_025 + 60 * n)))
        log.insert(rng.randrange(at + 300, len(log)), start)
    for n in range(15):  # an end or interruption naming another user: a contradiction
        start = ev.started(f"user-{n}", minutes(10_000 + 60 * n))
        sid = start.data.session_id
        other = f"user-{(n + 7) % users}"
        stray = (ev.ended(other, sid, minutes(10_025 + 60 * n)) if n % 2
                 else ev.interrupted(other, sid, minutes(10_005 + 60 * n)))
        log.insert(rng.randrange(len(log)), start)
        log.insert(rng.randrange(len(log)), stray)
    return log


async def live_tables(kafka_bootstrap: str, url: str, topics, log: list[Message]) -> dict:
    s = settings_for(kafka_bootstrap, url, topics)
    async with running_projector(s):
        await publish(kafka_bootstrap, topics.events, log)
        await caught_up(kafka_bootstrap, url, topics.events)
    return snapshot(url)


async def test_a_tiny_budget_flushes_and_folds_split_sessions_and_equals_the_live_tables(
    kafka_bootstrap, fresh_database, fresh_topics
):
    log = hostile_log(3000, users=30)
    live = await live_tables(kafka_bootstrap, fresh_database, fresh_topics, log)
    held = [row for row in live["session_events"] if "held" in row]
    assert held, "the log should leave some events held"

    # one byte: every worker flushes every 256 events (the floor), so sessions are cut by
    # flushes all through the log, and some also sit with both workers
    report = await replayer(kafka_bootstrap, fresh_database, fresh_topics.events,
                            memory_budget=1).run()
    assert report.swapped, describe(report)
    assert report.flushes >= 6
    assert report.split_sessions >= 20
    assert report.duplicates > 0 and report.dead_letters >= 20
    assert report.diff is not None and report.diff.clean, describe(report)
    assert snapshot_diff(snapshot(fresh_database), live) == {}


# -- SIGKILL and resume ---------------------------------------------------------------------


class ReplayProcess:
    """``focus replay`` as a real OS process in a group of its own (its fork server and workers
    are in the group too), with its output in a file."""

    def __init__(self, kafka_bootstrap: str, url: str, topic: str, log: Path,
                 *args: str) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": url,
               "FOCUS_EVENTS_TOPIC": topic, "COLUMNS": "200"}
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "focus_sessions.cli", "replay", "--workers", "2", *args],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill_group(self) -> None:
        """SIGKILL to every process of the replay at once: a machine that lost power."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()
        deadline = time.monotonic() + 10
        while group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_members(self.process.pid) == []

    def wait(self, timeout: float = 240) -> int:
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code


def group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def run_state(url: str) -> tuple[str | None, int]:
    """The interrupted replay's phase and its workers' flushes so far (None: no run)."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('focus_shadow.replay_run')").fetchone()[0] is None:
            return None, 0
        phase = conn.execute("SELECT phase FROM focus_shadow.replay_run").fetchone()
        flushes = conn.execute("SELECT coalesce(sum(flushes), 0) FROM focus_shadow.replay_workers"
                               ).fetchone()[0]
        return (phase[0] if phase else None), int(flushes)


def kill_when(proc: ReplayProcess, ready: Callable[[], bool], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.process.poll() is None, f"replay ended before the kill:\n{proc.output()}"
        assert time.monotonic() < deadline, f"never ready to kill:\n{proc.output()}"
        time.sleep(0.01)
    proc.kill_group()


def records_read(output: str) -> int:
    found = re.search(r"this run read ([0-9,]+) records", output)
    assert found, output
    return int(found.group(1).replace(",", ""))


async def test_a_replay_killed_in_every_phase_continues_and_equals_the_live_tables(
    kafka_bootstrap, fresh_database, fresh_topics, tmp_path
):
    log = hostile_log(6000, users=40, seed=5)
    live = await live_tables(kafka_bootstrap, fresh_database, fresh_topics, log)
    topic, url = fresh_topics.events, fresh_database
    start = lambda n: ReplayProcess(kafka_bootstrap, url, topic, tmp_path / f"run{n}.log",  # noqa: E731
                                    "--memory", "1")
    kills: list[tuple[str | None, int]] = []

    # 1. bulk phase, after some flushes committed (a worker may be inside the next one)
    proc = start(1)
    kill_when(proc, lambda: run_state(url)[1] >= 3)
    kills.append(run_state(url))
    with psycopg.connect(url) as conn:  # open sessions carried over a flush: read back next
        assert conn.execute("SELECT count(*) FROM focus_shadow.replay_carry").fetchone()[0] > 0
    # 2. bulk phase again, a few flushes further: the continued run flushes on from there
    proc = start(2)
    before = run_state(url)[1]
    kill_when(proc, lambda: run_state(url)[1] >= before + 3)
    kills.append(run_state(url))
    # 3. catch-up: the bulk phase is over (its checkpoint says so)
    proc = start(3)
    kill_when(proc, lambda: "catching up" in proc.output())
    kills.append(run_state(url))
    # 4. diff
    proc = start(4)
    kill_when(proc, lambda: "comparing" in proc.output())
    kills.append(run_state(url))

    assert [k[0] for k in kills[:2]] == ["bulk", "bulk"], kills
    assert kills[1][1] > kills[0][1], kills
    assert kills[2][0] == "loaded" and kills[3][0] == "loaded", kills

    proc = start(5)
    assert proc.wait() == 0, proc.output()
    out = proc.output()
    assert "continued from its checkpoints" in out and "swapped" in out, out
    assert records_read(out) == 0  # the bulk phase was done: nothing read again
    assert snapshot_diff(snapshot(url), live) == {}
    assert run_state(url) == (None, 0)  # the shadow and its checkpoints are gone


async def test_a_replay_continued_while_the_live_projector_moves_on_catches_up_and_swaps(
    kafka_bootstrap, fresh_database, fresh_topics, tmp_db_factory, tmp_path
):
    """Killed in its bulk phase; meanwhile more events come and the live projector projects
    them; the continued replay catches up past its original end offsets and swaps, and the
    projector goes on: the tables equal a fresh projector's of the same log."""
    topic, url = fresh_topics.events, fresh_database
    first = hostile_log(3000, users=30, seed=21)
    more = list(stream(800, users=30, seed=22))
    s = settings_for(kafka_bootstrap, url, fresh_topics)
    async with running_projector(s):
        sent = await publish(kafka_bootstrap, topic, first)
        await caught_up(kafka_bootstrap, url, topic)
        proc = ReplayProcess(kafka_bootstrap, url, topic, tmp_path / "run1.log", "--memory", "1")
        await asyncio.to_thread(kill_when, proc, lambda: run_state(url)[1] >= 3)
        sent += await publish(kafka_bootstrap, topic, more)
        await caught_up(kafka_bootstrap, url, topic)
        proc = ReplayProcess(kafka_bootstrap, url, topic, tmp_path / "run2.log", "--memory", "1")
        assert await asyncio.to_thread(proc.wait) == 0, proc.output()
        assert "continued from its checkpoints" in proc.output()
        sent += await publish(kafka_bootstrap, topic, stream(200, users=30, seed=23))
        await caught_up(kafka_bootstrap, url, topic)
    expected = await reference_snapshot(kafka_bootstrap, fresh_topics, sent, tmp_db_factory)
    assert snapshot_diff(snapshot(url), expected) == {}


async def test_a_replay_killed_while_folding_split_sessions_or_building_indexes_continues(
    kafka_bootstrap, fresh_database, fresh_topics, tmp_path
):
    log = hostile_log(3000, users=30, seed=3)
    live = await live_tables(kafka_bootstrap, fresh_database, fresh_topics, log)
    topic, url = fresh_topics.events, fresh_database
    seen: list[str | None] = []
    for n in range(12):  # the phases after the bulk one take milliseconds: kill on sight
        proc = ReplayProcess(kafka_bootstrap, url, topic, tmp_path / f"run{n}.log",
                             "--memory", "1")
        kill_when(proc, lambda p=proc: run_state(url)[0] in ("tables", "refold")
                  or "catching up" in p.output())
        seen.append(run_state(url)[0])
        if any(p in ("tables", "refold") for p in seen):
            break
    assert any(p in ("tables", "refold") for p in seen), seen
    proc = ReplayProcess(kafka_bootstrap, url, topic, tmp_path / "last.log", "--memory", "1")
    assert proc.wait() == 0, proc.output()
    assert snapshot_diff(snapshot(url), live) == {}


# -- the budget, measured ---------------------------------------------------------------------


class PeakRss:
    """Summed RSS of a process group, sampled every 20 ms on a thread."""

    def __init__(self, pgid: int) -> None:
        self.pgid, self.peak = pgid, 0
        #: Each process's RSS at the peak: ``{pid: (name, bytes)}``, for a failure's message.
        self.at_peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            each = {pid: rss.rss(pid) for pid in group_members(self.pgid)}
            if sum(each.values()) > self.peak:
                self.peak = sum(each.values())
                self.at_peak = {pid: (_name(pid), n) for pid, n in each.items()}

    def describe(self) -> str:
        return ", ".join(f"{name} {rss.mib(n)}" for name, n in self.at_peak.values())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[-60:].decode()
    except OSError:
        return str(pid)


def bench_like(events: int, users: int) -> Iterator[tuple[bytes, bytes]]:
    """Sessions of four events, as the benchmark publishes them (cheap to make in bulk)."""
    for n in range(events // 4):
        user = f"user-{n % users}"
        at = minutes(37 * n)
        start = ev.started(user, at)
        sid = start.data.session_id
        for event in (start, ev.interrupted(user, sid, minutes(37 * n + 5)),
                      ev.interrupted(user, sid, minutes(37 * n + 9)),
                      ev.ended(user, sid, minutes(37 * n + 24), focus_quality=3)):
            yield user.encode(), encode(event)


@pytest.mark.timeout(600)
async def test_the_memory_budget_holds_where_holding_the_whole_log_would_exceed_it(
    kafka_bootstrap, fresh_database, fresh_topics, tmp_path
):
    events, budget = 400_000, 400 << 20
    await publish(kafka_bootstrap, fresh_topics.events, bench_like(events, users=2000))
    migrate(fresh_database)

    def replay(memory: str, name: str) -> tuple[int, str]:
        proc = ReplayProcess(kafka_bootstrap, fresh_database, fresh_topics.events,
                             tmp_path / name, "--dry-run", "--memory", memory)
        peak = PeakRss(proc.process.pid)
        code = proc.wait(timeout=500)
        measured = peak.stop()
        assert code == 0, proc.output()
        return measured, f"{proc.output()}\nat the peak: {peak.describe()}"

    # a budget no log of this size reaches: every event is held until the end, as the
    # replay before issue 20 held them
    unbounded, out = replay("64GiB", "unbounded.log")
    assert flushes(out) == 2, out  # each worker once, at its end
    bounded, out = replay(f"{budget}", "bounded.log")
    assert unbounded > budget, f"holding the whole log took {rss.mib(unbounded)}"
    assert bounded <= budget, f"{rss.mib(bounded)} over {rss.mib(budget)}: {out}"
    assert flushes(out) > 2, out
    assert f"replayed {events:,} events" in out


def flushes(output: str) -> int:
    found = re.search(r"([0-9,]+) flushes", output)
    assert found, output
    return int(found.group(1).replace(",", ""))

"""``focus project --processes 2``: two workers share the stream and project it as one projector
would; a stop, a Ctrl-C, a dead worker or a killed supervisor leaves no worker running."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from focus_sessions.migrate import migrate
from tests.support.infra import create_database, drop_database
from tests.support.projection import (
    ProjectorProcess,
    child_pids,
    positions,
    publish,
    rollup_mismatches,
    running_projector,
    settings_for,
    snapshot,
    snapshot_diff,
    stop_all,
    wait_caught_up,
)
from tests.support.projection import running as is_running
from tests.support.stream import stream

pytestmark = pytest.mark.slow

ASSIGNED = re.compile(r" (worker-\d) focus_sessions\.consumers\.projector assigned \[([\d, ]+)\]")
STARTED = re.compile(r" (worker-\d) focus_sessions\.workers started \(pid")


def assignments(log: str) -> dict[str, set[int]]:
    """Each worker's latest partition assignment, from the supervisor's output."""
    return {name: {int(p) for p in parts.split(",")} for name, parts in ASSIGNED.findall(log)}


def stopped(log: str) -> list[str]:
    """Workers that logged run_projector's last line (batch in hand committed, group left)."""
    return sorted(re.findall(r" (worker-\d) focus_sessions\.bootstrap projector stopped", log))


def supervisor(settings, tmp_path, name="supervisor", **options) -> ProjectorProcess:
    return ProjectorProcess(settings, tmp_path, name, args=("--processes", "2"), **options)


async def until(condition: Callable[[], bool], proc: ProjectorProcess, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.process.poll() is None, proc.log()
        assert time.monotonic() < deadline, proc.log()
        await asyncio.sleep(0.1)


async def workers_assigned(proc: ProjectorProcess) -> list[int]:
    """Wait until both workers own partitions; their pids."""
    await until(lambda: len(assignments(proc.log())) == 2, proc)
    return child_pids(proc.process.pid)


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if is_running(pid)]


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Worker pids a test saw: whatever still runs at the end is killed (and the test failed)."""
    seen: list[int] = []
    yield seen
    for pid in alive(seen):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def settings(kafka_bootstrap, fresh_database, fresh_topics):
    migrate(fresh_database)
    return settings_for(kafka_bootstrap, fresh_database, fresh_topics,
                        focus_batch_max_records=500)


async def test_two_workers_share_the_stream_and_project_it_as_one_projector_does(
    kafka_bootstrap, postgres_url, settings, fresh_database, fresh_topics, tmp_path, leftovers
):
    sent = await publish(kafka_bootstrap, fresh_topics.events, stream(3_000, seed=21))
    proc = supervisor(settings, tmp_path)
    try:
        leftovers += await workers_assigned(proc)
        sent += await publish(kafka_bootstrap, fresh_topics.events, stream(3_000, seed=22))
        await wait_caught_up(fresh_database, fresh_topics, sent, timeout=60)
        assert proc.terminate() == 0, proc.log()
    finally:
        stop_all([proc])
    log = proc.log()
    assert len(leftovers) == 2
    assert alive(leftovers) == []
    owned = assignments(log)
    assert owned["worker-1"] | owned["worker-2"] == set(range(6)), log
    assert not owned["worker-1"] & owned["worker-2"], log
    assert "Traceback" not in log

    reference_db = create_database(postgres_url)
    try:
        async with running_projector(settings_for(
                kafka_bootstrap, reference_db, fresh_topics,
                focus_consumer_group=f"ref-{fresh_topics.events}")):
            await wait_caught_up(reference_db, fresh_topics, sent, timeout=60)
        reference = snapshot(reference_db)
    finally:
        drop_database(postgres_url, reference_db)
    assert snapshot_diff(snapshot(fresh_database), reference) == {}
    assert len(reference["session_events"]) > 5_000
    assert rollup_mismatches(fresh_database) == []


async def test_sigterm_stops_every_worker_after_its_batch_and_exits_0(
    kafka_bootstrap, settings, fresh_database, fresh_topics, tmp_path, leftovers
):
    proc = supervisor(settings, tmp_path)
    try:
        leftovers += await workers_assigned(proc)
        await publish(kafka_bootstrap, fresh_topics.events, stream(20_000, seed=23))
        await until(lambda: sum(positions(fresh_database, fresh_topics.events).values()) > 0,
                    proc)
        assert proc.terminate() == 0, proc.log()
    finally:
        stop_all([proc])
    log = proc.log()
    assert alive(leftovers) == []
    assert stopped(log) == ["worker-1", "worker-2"]
    assert "Traceback" not in log
    assert rollup_mismatches(fresh_database) == []


async def test_ctrl_c_ends_the_supervisor_and_its_workers_cleanly(
    settings, tmp_path, leftovers
):
    proc = supervisor(settings, tmp_path, own_session=True)
    try:
        await until(lambda: len(STARTED.findall(proc.log())) == 2, proc)
        leftovers += child_pids(proc.process.pid)
        os.killpg(proc.process.pid, signal.SIGINT)  # a terminal sends it to the whole group
        assert proc.process.wait(timeout=30) == 0, proc.log()
    finally:
        stop_all([proc])
    assert alive(leftovers) == []
    assert "Traceback" not in proc.log()


async def test_a_worker_killed_stops_the_other_and_the_supervisor_exits_non_zero(
    settings, tmp_path, leftovers
):
    proc = supervisor(settings, tmp_path)
    try:
        leftovers += await workers_assigned(proc)
        os.kill(leftovers[1], signal.SIGKILL)
        assert proc.process.wait(timeout=40) == 1, proc.log()
    finally:
        stop_all([proc])
    log = proc.log()
    assert alive(leftovers) == []
    assert f"(pid {leftovers[1]}) killed by SIGKILL" in log
    assert "died: stopping the other workers" in log


async def test_workers_of_a_killed_supervisor_stop_within_seconds(
    settings, tmp_path, leftovers
):
    proc = supervisor(settings, tmp_path)
    try:
        leftovers += await workers_assigned(proc)
        # one thread, or Linux sends PR_SET_PDEATHSIG once per thread the workers pass through
        assert threads(proc.process.pid) == 1
        proc.kill()  # SIGKILL: nobody forwards anything
        killed = time.monotonic()
        while alive(leftovers) and time.monotonic() - killed < 10:
            await asyncio.sleep(0.1)
        stopped_after = time.monotonic() - killed
    finally:
        stop_all([proc])
    assert alive(leftovers) == [], proc.log()
    assert stopped_after < 10
    assert stopped(proc.log()) == ["worker-1", "worker-2"]  # a clean stop, not a kill

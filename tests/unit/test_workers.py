"""The supervisor's rules (``focus_sessions.workers``) with stand-in workers, and how ``focus
project``
chooses between one projector in-process and a supervisor."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from focus_sessions import cli
from focus_sessions.settings import ProjectorSettings
from focus_sessions.workers import (
    GRACE_SECONDS,
    StopRequest,
    describe,
    stopped_cleanly,
    supervise,
    worker_commands,
    worker_environment,
)
from tests.support.projection import running

SLEEPS = "import time; time.sleep(60)"  # SIGTERM's default action ends it
STOPS_ON_SIGTERM = "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))"
IGNORES_SIGTERM = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def handling_sigterm(handler: str, ready: Path) -> list[str]:
    """A stand-in worker that installs ``handler``, then says so by creating ``ready``."""
    return python(f"import signal, sys, time; {handler}; open({str(ready)!r}, 'w').close(); "
                  "time.sleep(60)")


def stop_when(ready: Callable[[], bool], stop: StopRequest) -> asyncio.Task[None]:
    async def wait() -> None:
        while not ready():
            await asyncio.sleep(0.02)
        stop.requested = True

    return asyncio.create_task(wait())


async def supervised(commands: dict[str, list[str]], stop: StopRequest,
                     grace: float = GRACE_SECONDS) -> int:
    """:func:`supervise` in a thread, so that this loop can request the stop."""
    return await asyncio.to_thread(supervise, commands, os.environ, stop, grace)


@pytest.fixture
def supervisor_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="focus_sessions.workers")
    return caplog


def started_pids(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \(pid (\d+)\)", caplog.text)]


async def test_a_stop_reaches_every_worker_and_ends_in_status_0(
    supervisor_log: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    stop, ready = StopRequest(), tmp_path / "ready"
    waiting = stop_when(ready.exists, stop)
    code = await supervised({"worker-1": handling_sigterm(STOPS_ON_SIGTERM, ready),
                             "worker-2": python(SLEEPS)}, stop)
    await waiting
    assert code == 0
    assert re.search(r"worker-1 \(pid \d+\) exited with status 0", supervisor_log.text)
    assert re.search(r"worker-2 \(pid \d+\) killed by SIGTERM", supervisor_log.text)
    assert "died" not in supervisor_log.text
    assert not [pid for pid in started_pids(supervisor_log) if running(pid)]


async def test_a_worker_that_fails_stops_the_others_and_ends_in_status_1(
    supervisor_log: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"
    fails_when_ready = python("import os, time\nwhile not os.path.exists("
                              f"{str(ready)!r}): time.sleep(0.02)\nraise SystemExit(3)")
    code = await supervised({"worker-1": handling_sigterm(STOPS_ON_SIGTERM, ready),
                             "worker-2": fails_when_ready}, StopRequest())
    assert code == 1
    assert re.search(r"worker-2 \(pid \d+\) exited with status 3", supervisor_log.text)
    assert "worker-2 died: stopping the other workers" in supervisor_log.text
    assert re.search(r"worker-1 \(pid \d+\) exited with status 0", supervisor_log.text)


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(
    supervisor_log: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    stop, ready = StopRequest(), tmp_path / "ready"
    waiting = stop_when(ready.exists, stop)
    code = await supervised({"worker-1": handling_sigterm(IGNORES_SIGTERM, ready)}, stop,
                            grace=1.0)
    await waiting
    assert code == 1
    assert "worker-1 did not stop within 1 s: killing it" in supervisor_log.text
    assert re.search(r"worker-1 \(pid \d+\) killed by SIGKILL", supervisor_log.text)


@pytest.mark.parametrize("before", [0, 1])
async def test_workers_already_started_are_stopped_when_another_cannot_start(
    supervisor_log: pytest.LogCaptureFixture, before: int,
) -> None:
    commands = {f"worker-{n}": python(SLEEPS) for n in range(1, before + 1)}
    commands["worker-x"] = ["/nonexistent/python"]
    with pytest.raises(FileNotFoundError):
        await supervised(commands, StopRequest())
    pids = started_pids(supervisor_log)
    assert len(pids) == before
    assert not [pid for pid in pids if running(pid)]


@pytest.mark.parametrize(("returncode", "clean", "text"), [
    (0, True, "exited with status 0"),
    (-signal.SIGTERM, True, "killed by SIGTERM"),
    (1, False, "exited with status 1"),
    (-signal.SIGKILL, False, "killed by SIGKILL"),
    (-signal.SIGSEGV, False, "killed by SIGSEGV"),
])
def test_which_endings_are_clean(returncode: int, clean: bool, text: str) -> None:
    assert stopped_cleanly(returncode) is clean
    assert describe(returncode) == text


def test_workers_are_named_and_told_their_supervisor() -> None:
    commands = worker_commands(2, 4242)
    assert commands == {
        "worker-1": [sys.executable, "-m", "focus_sessions.workers", "worker-1", "4242"],
        "worker-2": [sys.executable, "-m", "focus_sessions.workers", "worker-2", "4242"],
    }


def test_workers_get_the_servers_the_supervisor_resolved() -> None:
    settings = ProjectorSettings(kafka_bootstrap_servers="k:9092", database_url="postgresql://x")
    env = worker_environment(settings)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "k:9092"
    assert env["DATABASE_URL"] == "postgresql://x"
    assert env["PATH"] == os.environ["PATH"]


def test_a_worker_whose_supervisor_is_already_gone_does_not_start() -> None:
    done = subprocess.run([sys.executable, "-m", "focus_sessions.workers", "worker-9", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "worker-9 focus_sessions.workers supervisor (pid 0) is gone: not starting" in done.stderr


# -- focus project: one process, or a supervisor ---------------------------------------------


@pytest.fixture
def chosen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Which of ``_project`` / ``_supervise`` ``focus project`` ran, with what settings."""
    for name in list(os.environ):
        if name.startswith("FOCUS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FOCUS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/focus")
    seen: dict[str, Any] = {}

    async def project(settings: ProjectorSettings) -> None:
        seen["project"] = settings

    def supervise(settings: ProjectorSettings) -> int:
        seen["supervise"] = settings
        return 1

    monkeypatch.setattr(cli, "_project", project)
    monkeypatch.setattr(cli, "_supervise", supervise)
    return seen


def test_one_process_runs_the_projector_in_process(chosen: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli.app, ["project"])
    assert result.exit_code == 0, result.output
    assert list(chosen) == ["project"]
    assert chosen["project"].focus_projector_processes == 1


def test_more_processes_from_the_option_run_a_supervisor_with_its_status(
    chosen: dict[str, Any],
) -> None:
    result = CliRunner().invoke(cli.app, ["project", "--processes", "3"])
    assert result.exit_code == 1, result.output
    assert list(chosen) == ["supervise"]
    assert chosen["supervise"].focus_projector_processes == 3


def test_more_processes_from_the_environment_run_a_supervisor(
    chosen: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOCUS_PROJECTOR_PROCESSES", "2")
    CliRunner().invoke(cli.app, ["project"])
    assert chosen["supervise"].focus_projector_processes == 2
    monkeypatch.setenv("FOCUS_PROJECTOR_PROCESSES", "4")
    CliRunner().invoke(cli.app, ["project", "--processes", "1"])  # the option wins
    assert chosen["project"].focus_projector_processes == 1


def test_zero_processes_is_refused(chosen: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli.app, ["project", "--processes", "0"])
    assert result.exit_code == 2
    assert chosen == {}

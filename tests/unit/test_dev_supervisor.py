"""When ``focus dev`` restarts what died (``focus_sessions.dev_supervisor``): fake members and a
fake clock, so each decision is shown without waiting for it."""

from __future__ import annotations

import logging
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from focus_sessions.consumers.backoff import Backoff
from focus_sessions.dev_supervisor import (
    ChildProcess,
    RestartPolicy,
    StackLost,
    Supervisor,
    describe_exit,
)

#: No jitter to reason about: every wait is exactly its ceiling (0.5, 1, 2, 4, capped at 4).
POLICY = RestartPolicy(backoff=Backoff(base=0.5, cap=4.0), healthy_after=30.0)


class CeilingRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeMember:
    """A piece of the stack that dies when told and counts its restarts."""

    def __init__(self, name: str, *, fatal: str | None = None) -> None:
        self.name = name
        self.fatal = fatal
        self.running = True
        self.restarts = 0
        self.refusals = 0  # the next restarts that fail
        self.generation = 1

    @property
    def pid(self) -> int | None:
        return 100 + self.generation

    def alive(self) -> bool:
        return self.running

    def exit_status(self) -> str:
        return "killed by SIGKILL"

    def restart(self) -> None:
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError("port still taken")
        self.restarts += 1
        self.generation += 1
        self.running = True


def supervise(*members: FakeMember, restarted: list[str] | None = None) -> tuple[Supervisor, Clock]:
    clock = Clock()
    supervisor = Supervisor(
        members, policy=POLICY, clock=clock, rng=CeilingRandom(),
        on_restart=lambda m: restarted.append(m.name) if restarted is not None else None)
    return supervisor, clock


def test_a_member_that_dies_is_restarted_after_the_first_wait_and_not_before() -> None:
    projector = FakeMember("the projector")
    supervisor, clock = supervise(projector)
    supervisor.check()
    projector.running = False

    supervisor.check()  # noticed: restart due in 0.5 s
    clock.advance(0.4)
    supervisor.check()
    assert projector.restarts == 0 and supervisor.down() == ["the projector"]

    clock.advance(0.1)
    supervisor.check()
    assert projector.restarts == 1 and projector.alive() and supervisor.down() == []


def test_quick_crashes_in_a_row_double_the_wait_up_to_the_cap() -> None:
    api = FakeMember("the API")
    supervisor, clock = supervise(api)
    waits = []
    for _ in range(6):
        api.running = False  # dies again at once after each restart
        supervisor.check()
        started = clock.now
        while api.restarts < len(waits) + 1:
            clock.advance(0.25)
            supervisor.check()
        waits.append(clock.now - started)
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_member_that_stayed_up_long_enough_starts_again_from_the_shortest_wait() -> None:
    api = FakeMember("the API")
    supervisor, clock = supervise(api)
    for _ in range(3):  # three quick crashes: the next wait would be 4 s
        api.running = False
        supervisor.check()
        clock.advance(4)
        supervisor.check()
    clock.advance(POLICY.healthy_after)  # then a long healthy run
    supervisor.check()

    api.running = False
    supervisor.check()
    clock.advance(0.5)
    supervisor.check()
    assert api.restarts == 4


def test_a_restart_that_fails_is_tried_again_with_a_longer_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    postgres = FakeMember("PostgreSQL")
    supervisor, clock = supervise(postgres)
    postgres.running, postgres.refusals = False, 1
    with caplog.at_level(logging.INFO, logger="focus_sessions.dev"):
        supervisor.check()
        clock.advance(0.5)
        supervisor.check()  # the restart fails: next try after 1 s
        assert postgres.restarts == 0
        clock.advance(0.9)
        supervisor.check()
        assert postgres.restarts == 0
        clock.advance(0.1)
        supervisor.check()
    assert postgres.restarts == 1
    assert [r.getMessage() for r in caplog.records] == [
        "PostgreSQL killed by SIGKILL after 0 s up; restarting in 0.5 s (restart 1 in a row)",
        "PostgreSQL did not start again (port still taken); next try in 1.0 s",
        "PostgreSQL is running again (pid 102)",
    ]


def test_the_death_of_a_member_that_cannot_be_restarted_ends_the_stack() -> None:
    broker = FakeMember("the tansu broker", fatal="Its log is gone.")
    projector = FakeMember("the projector")
    supervisor, clock = supervise(projector, broker)
    broker.running = False
    with pytest.raises(StackLost, match=r"^the tansu broker killed by SIGKILL\. Its log is gone"):
        supervisor.check()
    clock.advance(60)
    assert broker.restarts == 0


def test_members_are_restarted_independently_and_each_restart_is_reported() -> None:
    projector, api = FakeMember("the projector"), FakeMember("the API")
    restarted: list[str] = []
    supervisor, clock = supervise(projector, api, restarted=restarted)
    projector.running = False
    supervisor.check()
    clock.advance(0.5)
    api.running = False
    supervisor.check()  # the projector is due, the API just died
    assert restarted == ["the projector"]
    clock.advance(0.5)
    supervisor.check()
    assert restarted == ["the projector", "the API"]
    assert (projector.restarts, api.restarts) == (1, 1)


@pytest.mark.parametrize(("code", "words"), [
    (-signal.SIGKILL, "killed by SIGKILL"), (-signal.SIGTERM, "killed by SIGTERM"),
    (1, "exited with status 1"), (0, "exited with status 0"), (None, "stopped"),
])
def test_an_exit_is_described_in_words(code: int | None, words: str) -> None:
    assert describe_exit(code) == words


def test_a_child_process_is_a_member_that_can_be_killed_and_started_again(tmp_path: Path) -> None:
    child = ChildProcess("the sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                         {}, tmp_path / "sleeper.log")
    child.start()
    first = child.pid
    assert child.alive()
    assert child.process is not None
    child.process.kill()
    child.process.wait()
    assert not child.alive() and child.exit_status() == "killed by SIGKILL"

    child.restart()
    assert child.alive() and child.pid != first
    child.stop(grace=5)
    assert not child.alive() and child.exit_status() == "killed by SIGTERM"


def test_a_child_that_ignores_sigterm_is_killed_after_its_grace(tmp_path: Path) -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
             "print('ready', flush=True); time.sleep(60)"
    child = ChildProcess("the stubborn", [sys.executable, "-c", script], {},
                         tmp_path / "stubborn.log")
    child.start()
    assert child.process is not None
    for _ in range(100):  # until it ignores SIGTERM
        if "ready" in (tmp_path / "stubborn.log").read_text():
            break
        time.sleep(0.05)
    child.stop(grace=0.5)
    assert child.exit_status() == "killed by SIGKILL"

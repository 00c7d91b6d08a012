"""How ``focus dev`` keeps its stack up: what dies is restarted, with backoff, and said.

``focus dev`` is the service manager of what it runs, so it restarts in place what
``focus project --processes`` would not (that supervisor is crash-only and leaves restarts to the
service manager above it; see :mod:`focus_sessions.workers`). Each piece of the stack is a
:class:`Member`; :class:`Supervisor` looks at all of them on every :meth:`Supervisor.check` and
decides, by :class:`RestartPolicy`, when to restart one that died:

- the first restart comes after a short wait, each quick crash after it doubles the wait (equal
  jitter, :class:`focus_sessions.consumers.backoff.Backoff`) up to ``cap``; a member that has run
  ``healthy_after`` seconds since its last restart starts again from the shortest wait;
- a restart that fails counts as one more crash;
- a member with a ``fatal`` reason is not restarted: its death ends the stack
  (:class:`StackLost`). The memory-only broker is one: when it dies its log is gone, and read
  models must never outlive their log.

No threads and no clock of its own: the caller passes ``clock`` and ``rng`` (tests use fakes)
and calls :meth:`Supervisor.check` from its main loop.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from focus_sessions.consumers.backoff import Backoff

log = logging.getLogger("focus_sessions.dev")


class StackLost(RuntimeError):
    """A member whose death cannot be repaired died; the message says what to do."""


class Member(Protocol):
    """One supervised piece of the stack."""

    name: str  # in log lines: "the projector", "PostgreSQL"
    fatal: str | None  # why its death ends the stack; None: restart it

    @property
    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...

    def exit_status(self) -> str:
        """How it ended, in words ("killed by SIGKILL", "exited with status 1")."""
        ...

    def restart(self) -> object:
        """Start it again; raise if it cannot be started now (the supervisor retries)."""
        ...


def describe_exit(returncode: int | None) -> str:
    """A process's end in words."""
    if returncode is None:
        return "stopped"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a member that died."""

    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=30.0))
    healthy_after: float = 30.0  # seconds up after which a crash is a first crash again

    def delay(self, crashes: int, rng: random.Random) -> float:
        """Seconds to wait before restarting after the ``crashes``-th crash in a row."""
        return float(self.backoff.delay(crashes, rng))


@dataclass
class _Watch:
    up_since: float
    crashes: int = 0  # in a row: reset once the member has been up healthy_after seconds
    restart_at: float | None = None  # set while the member is down


class Supervisor:
    """Watches ``members`` and logs one line per death (warning), failed restart (warning) and
    recovery (info) to ``focus_sessions.dev``; ``on_restart`` runs after each successful
    restart (``focus dev`` rewrites ``dev.json``)."""

    def __init__(
        self,
        members: Sequence[Member],
        *,
        policy: RestartPolicy | None = None,
        on_restart: Callable[[Member], None] = lambda member: None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._on_restart = on_restart
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        now = clock()
        self._members = [(m, _Watch(up_since=now)) for m in members]

    def check(self) -> None:
        """One look at every member: notice deaths, restart those whose wait is over."""
        for member, watch in self._members:
            if watch.restart_at is None:
                self._look(member, watch)
            elif self._clock() >= watch.restart_at:
                self._restart(member, watch)

    def down(self) -> list[str]:
        """Names of the members waiting for a restart."""
        return [m.name for m, w in self._members if w.restart_at is not None]

    def _look(self, member: Member, watch: _Watch) -> None:
        now = self._clock()
        up_for = now - watch.up_since
        if member.alive():
            if watch.crashes and up_for >= self.policy.healthy_after:
                watch.crashes = 0
            return
        status = member.exit_status()
        if member.fatal is not None:
            raise StackLost(f"{member.name} {status}. {member.fatal}")
        if up_for >= self.policy.healthy_after:
            watch.crashes = 0
        wait = self._schedule(watch, now)
        log.warning(f"{member.name} {status} after {up_for:.0f} s up; restarting in "
                    f"{wait:.1f} s (restart {watch.crashes} in a row)")

    def _restart(self, member: Member, watch: _Watch) -> None:
        try:
            member.restart()
        except Exception as error:  # any failure to start is one more crash: try again later
            wait = self._schedule(watch, self._clock())
            log.warning(f"{member.name} did not start again ({error}); next try in {wait:.1f} s")
            return
        watch.restart_at = None
        watch.up_since = self._clock()
        log.info(f"{member.name} is running again (pid {member.pid})")
        self._on_restart(member)

    def _schedule(self, watch: _Watch, now: float) -> float:
        watch.crashes += 1
        wait = self.policy.delay(watch.crashes, self._rng)
        watch.restart_at = now + wait
        return wait


@dataclass
class Server:
    """A server started in-process (PostgreSQL, a broker) as a :class:`Member`, by functions."""

    key: str  # in dev.json's pids
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], object]
    current_pid: Callable[[], int | None]
    ended: Callable[[], str] = lambda: "stopped running"
    fatal: str | None = None

    @property
    def pid(self) -> int | None:
        return self.current_pid()

    def exit_status(self) -> str:
        return self.ended()


@dataclass
class ChildProcess:
    """A ``focus`` command that ``focus dev`` runs as a child process, its output appended to
    ``log_path``; a :class:`Member`."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    fatal: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        with self.log_path.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed argv
                list(self.argv), env=dict(self.env), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # its own session: a Ctrl-C in the terminal reaches `focus dev` only, which
                # stops the children with SIGTERM, instead of racing them to their exits
                start_new_session=True)

    restart = start

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_status(self) -> str:
        return describe_exit(self.process.poll() if self.process is not None else None)

    def terminate(self) -> None:
        """SIGTERM, if it runs: a projector commits its batch in hand and leaves its group."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 20.0) -> None:
        """:meth:`terminate`, then SIGKILL after ``grace`` seconds."""
        process = self.process
        if process is None:
            return
        self.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

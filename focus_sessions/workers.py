"""``focus project --processes N``: a supervisor and N projector worker processes on one host.

One projector is CPU-bound in one Python process; N workers in the same consumer group use N
cores, and the compare-and-set positions keep them as safe as N separate replicas.

Workers are subprocesses (``python -m focus_sessions.workers NAME SUPERVISOR_PID``), not
``multiprocessing`` children: each is a plain interpreter running what ``focus project`` runs
(``build_projector``, ``run_projector``, ``stop_on_signals``) with the settings from its
environment, as a replica a service manager starts would; nothing is pickled, the supervisor's
``__main__`` (the console script) is not re-imported, and each worker starts in its own process
group. That last point makes Ctrl-C clean: the terminal's SIGINT reaches only the supervisor,
which turns it into one SIGTERM per worker, so no worker sees SIGINT while its interpreter is
still importing (a ``KeyboardInterrupt`` traceback).

Crash-only: when a worker dies unexpectedly (non-zero status, or a signal other than SIGTERM),
the supervisor stops the others with SIGTERM and exits 1, and the service manager restarts the
whole unit. Restarting one worker in place would be a second, quieter restart policy next to the
service manager's; the positions in PostgreSQL make a full restart lose and repeat nothing. A
worker that stops cleanly (someone sent it SIGTERM) ends the unit too, with status 0: the unit
runs all its workers or none.

Orphans: a worker asks Linux for SIGTERM when its supervisor dies (``PR_SET_PDEATHSIG``), so a
SIGKILLed supervisor's workers finish their batch in hand and leave the group like any stopped
projector. The kernel sends that signal each time the worker is handed to another parent: once per
supervisor *thread* it passes through on its way to init. (Seen with an asyncio supervisor and
its child-watcher threads: a second SIGTERM arrived after the worker's event loop had closed and
restored SIGTERM's default action, killing it during interpreter shutdown.) So while workers run
the supervisor has no threads and no event loop: it polls them, and a stop flag set by plain
signal handlers, ten times a second.

Metrics: with ``FOCUS_PROJECTOR_METRICS_PORT`` set, the supervisor gives its workers a fresh
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode: each worker writes its
values to files there) and serves their aggregate and health on that port, answering requests
in its polling loop (:meth:`focus_sessions.telemetry.Endpoint.serve_for`), still without a
thread. A worker stopped (SIGSTOP) or stuck turns ``/healthz`` unhealthy while the others run.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from focus_sessions.settings import ProjectorSettings, from_environment

if TYPE_CHECKING:
    from focus_sessions.telemetry import Endpoint

log = logging.getLogger("focus_sessions.workers")  # also when run as __main__ (the workers)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: How long stopped workers get to finish their batch before they are killed (gunicorn's
#: graceful timeout); the positions make a kill safe, only slower to recover from.
GRACE_SECONDS = 30.0
POLL_SECONDS = 0.1  # how often the supervisor looks at its workers and its stop flag
PR_SET_PDEATHSIG = 1
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PORT, HEALTH_WINDOW = "FOCUS_PROJECTOR_METRICS_PORT", "FOCUS_PROJECTOR_HEALTH_WINDOW_S"


# -- supervisor --------------------------------------------------------------------------------


def worker_commands(processes: int, supervisor_pid: int) -> dict[str, list[str]]:
    """The command line of each worker, by name (``worker-1`` ...)."""
    return {f"worker-{n}": [sys.executable, "-m", "focus_sessions.workers", f"worker-{n}",
                            str(supervisor_pid)] for n in range(1, processes + 1)}


def worker_environment(settings: ProjectorSettings) -> dict[str, str]:
    """This environment plus the servers the supervisor resolved (perhaps from a running
    ``focus dev``), so that workers read the same settings without resolving them again; with
    metrics on, a fresh directory for their metric files, which :func:`supervise` serves and
    removes."""
    assert settings.kafka_bootstrap_servers
    assert settings.database_url
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "DATABASE_URL": settings.database_url}
    env.pop(MULTIPROC_DIR, None)
    if settings.focus_projector_metrics_port:
        env[MULTIPROC_DIR] = tempfile.mkdtemp(prefix="focus-metrics-")
        env[METRICS_PORT] = str(settings.focus_projector_metrics_port)
        env[HEALTH_WINDOW] = str(settings.focus_projector_health_window_s)
    return env


def stopped_cleanly(returncode: int) -> bool:
    """A worker that exited 0 finished its batch; one ended by SIGTERM before its handler was
    installed had none. Anything else is a crash."""
    return returncode in (0, -signal.SIGTERM)


def describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class StopRequest:
    """Set by SIGTERM or SIGINT. A plain flag polled by :func:`supervise`: the supervisor has
    no event loop and no threads (see the module's docstring)."""

    def __init__(self) -> None:
        self.requested = False

    def on_signals(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)
        return self

    def _set(self, signum: int, frame: object) -> None:
        self.requested = True


def supervise(
    commands: Mapping[str, Sequence[str]], env: Mapping[str, str], stop: StopRequest,
    grace: float = GRACE_SECONDS,
) -> int:
    """Run the workers until a stop is requested or one of them ends, then SIGTERM the rest
    and wait for them. Returns the supervisor's exit status: 0 if every worker stopped
    cleanly, else 1 (crash-only: the service manager restarts the unit)."""
    workers = _Workers(env.get(MULTIPROC_DIR))
    endpoint = _endpoint(env)
    wait = time.sleep if endpoint is None else endpoint.serve_for
    try:
        for name, command in commands.items():
            workers.start(name, command, env)
        ended: list[str] = []
        while not (stop.requested or ended):
            wait(POLL_SECONDS)
            ended = workers.reap()
        for name in ended:
            if not stopped_cleanly(workers.children[name].returncode):
                log.error("%s died: stopping the other workers; exiting 1 so that the "
                          "service manager restarts the projector", name)
    finally:
        workers.stop(grace)
        if endpoint is not None:
            endpoint.close()
        if MULTIPROC_DIR in env:
            shutil.rmtree(env[MULTIPROC_DIR], ignore_errors=True)
    return 0 if all(stopped_cleanly(c.returncode) for c in workers.children.values()) else 1


def _endpoint(env: Mapping[str, str]) -> Endpoint | None:
    """The workers' ``/metrics`` and ``/healthz`` (None when metrics are off)."""
    if MULTIPROC_DIR not in env:
        return None
    from focus_sessions.telemetry import open_endpoint, workers_registry

    return open_endpoint(int(env[METRICS_PORT]), workers_registry(Path(env[MULTIPROC_DIR])),
                         float(env[HEALTH_WINDOW]))


class _Workers:
    def __init__(self, metrics_dir: str | None = None) -> None:
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._reported: set[str] = set()
        self._metrics_dir = metrics_dir

    def start(self, name: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.children[name] = subprocess.Popen(  # noqa: S603 - our own module
            command, env=env, stdin=subprocess.DEVNULL, process_group=0)
        log.info("%s started (pid %d)", name, self.children[name].pid)

    def reap(self) -> list[str]:
        """Workers that ended since the last call, each logged once."""
        ended = [name for name, child in self.children.items()
                 if name not in self._reported and child.poll() is not None]
        for name in ended:
            child = self.children[name]
            level = logging.INFO if stopped_cleanly(child.returncode) else logging.ERROR
            log.log(level, "%s (pid %d) %s", name, child.pid, describe(child.returncode))
            if self._metrics_dir is not None:  # its heartbeat and lag series go with it
                from prometheus_client.multiprocess import mark_process_dead

                mark_process_dead(child.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        self._reported.update(ended)
        return ended

    def stop(self, grace: float) -> None:
        """SIGTERM every running worker; SIGKILL those still running after ``grace`` s."""
        for child in self.children.values():
            child.send_signal(signal.SIGTERM)  # Popen skips those that have ended
        deadline = time.monotonic() + grace
        self.reap()
        while len(self._reported) < len(self.children) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            self.reap()
        for name, child in self.children.items():
            if child.poll() is None:
                log.error("%s did not stop within %.0f s: killing it", name, grace)
                child.kill()
                child.wait()
        self.reap()


# -- worker ------------------------------------------------------------------------------------


def die_with(supervisor_pid: int) -> bool:
    """Have Linux SIGTERM this process when its supervisor dies. False if the supervisor is
    already gone (it died before the request took effect)."""
    # prctl fails only for an invalid signal number: no result to check
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == supervisor_pid


async def run_worker(settings: ProjectorSettings) -> None:
    """What ``focus project`` runs after its start-up checks, which the supervisor did once."""
    from focus_sessions.bootstrap import build_projector, run_projector, stop_on_signals

    stopping = stop_on_signals()
    await run_projector(build_projector(settings, serve=False), stopping)


def main(argv: Sequence[str]) -> None:
    name, supervisor_pid = argv[0], int(argv[1])
    alive = die_with(supervisor_pid)  # first: the supervisor may be killed at any moment
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT.replace("%(name)s",
                                                                      f"{name} %(name)s"))
    if not alive:
        log.warning("supervisor (pid %d) is gone: not starting", supervisor_pid)
        return
    log.info("started (pid %d); stops when the supervisor (pid %d) does", os.getpid(),
             supervisor_pid)
    asyncio.run(run_worker(from_environment(ProjectorSettings)))


if __name__ == "__main__":
    main(sys.argv[1:])

"""``focus dev`` as a person runs it, for end-to-end tests: a process in its own folder, its
banner, its ``dev.json``, and ``focus`` commands run next to it with no server settings."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from focus_sessions.embedded import free_port
from tests.support.infra import chosen_broker

#: What a fresh shell lacks: every command must find the servers and the secret by itself.
SERVER_SETTINGS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "FOCUS_JWT_SECRET", "FOCUS_DEV_MODE")


def bare_environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_SETTINGS}
    env["FOCUS_DATA_DIR"] = str(data_dir)
    return env


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               every: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            found = None
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {timeout:g} s: {what}")


class DevProcess:
    """``focus dev [args]`` in ``folder`` (data in ``folder/.focus``) on free ports, with the
    broker ``FOCUS_TEST_BROKER`` names unless ``broker`` is given."""

    def __init__(self, folder: Path, *args: str, broker: str | None = None) -> None:
        self.folder = folder
        self.broker = broker or chosen_broker()  # FOCUS_TEST_BROKER unless a test insists
        # a free port, not 9092: other suites on this machine may run a broker there
        self.args = ("--broker", self.broker, "--kafka-port", str(free_port()), *args)
        self.data_dir = folder / ".focus"
        self.port = free_port()
        self.out_path = folder / f"dev-{time.monotonic_ns()}.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self, timeout: float = 120) -> DevProcess:
        env = {**bare_environment(self.data_dir), "FOCUS_API_PORT": str(self.port)}
        with self.out_path.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "focus_sessions.cli", "dev", *self.args], env=env,
                stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)

        def banner() -> str | None:
            assert self.process is not None and self.process.poll() is None, self.output()
            match = re.search(r"export TOKEN=(\S+)", self.output())
            return match[1] if match else None

        self.token = wait_until(banner, timeout, "the banner of `focus dev`")
        return self

    def output(self) -> str:
        return self.out_path.read_text()

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.data_dir / "dev.json").read_text())
        return state

    def pids(self) -> dict[str, int]:
        return dict(self.state()["pids"])

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=15,
                            headers={"Authorization": f"Bearer {token or self.token}"})

    def focus(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A ``focus`` command in the same folder, with no server settings exported."""
        return subprocess.run(
            [sys.executable, "-m", "focus_sessions.cli", *args], env=bare_environment(
                self.data_dir), cwd=self.folder, capture_output=True, text=True,
            timeout=timeout, check=False)

    def restarted(self, piece: str, old_pid: int, timeout: float = 60) -> int:
        """Wait until ``dev.json`` names a new pid for ``piece``; return it."""
        try:
            return int(wait_until(lambda: self.pids()[piece] != old_pid and self.pids()[piece],
                                  timeout, f"{piece} restarted"))
        except AssertionError as error:
            state = Path(f"/proc/{old_pid}/status")
            was = state.read_text().splitlines()[:3] if state.exists() else "gone"
            raise AssertionError(f"{error}; old pid {old_pid}: {was}\n{self.output()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False

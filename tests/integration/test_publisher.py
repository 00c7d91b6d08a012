"""The publisher library, the bulk path and ``focus emit`` / ``focus simulate`` on a real broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import pytest
import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError
from typer.testing import CliRunner

from focus_sessions import cli_produce
from focus_sessions.bootstrap import producer
from focus_sessions.contracts.codec import decode
from focus_sessions.embedded import free_port
from focus_sessions.producers.bulk import partition_for, publish_pairs
from focus_sessions.producers.publisher import Publisher, PublisherError
from focus_sessions.producers.simulate import Profile, generate
from focus_sessions.producers.sync import SyncPublisher
from tests.support.infra import TopicSet, delete_topics, partition_count


async def read_all(bootstrap: str, topics: TopicSet, expected: int) -> list[ConsumerRecord]:
    """Every record of the events topic, once ``expected`` have arrived (20 s at most)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topics.events, p) for p in range(topics.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + 20
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def cli() -> typer.Typer:
    app = typer.Typer()
    cli_produce.register(app)
    return app


async def test_a_session_published_with_the_library_lands_in_order_on_one_partition(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    async with Publisher(kafka_bootstrap, topic=fresh_topics.events) as publisher:
        start = await publisher.start_session("user-a", duration_minutes=15)
        pause = await publisher.interrupt("user-a", start.session_id, reason="colleague")
        end = await publisher.end_session("user-a", start.session_id, completed=True)
    records = await read_all(kafka_bootstrap, fresh_topics, 3)
    assert [(r.partition, r.offset) for r in records] == [
        (receipt.partition, receipt.offset) for receipt in (start, pause, end)
    ]
    assert {r.key for r in records} == {b"user-a"}
    assert [decode(r.value).id for r in records] == [start.event_id, pause.event_id, end.event_id]
    assert start.partition == partition_for(b"user-a", fresh_topics.partitions)


async def test_invalid_events_never_reach_the_topic(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    async with Publisher(kafka_bootstrap, topic=fresh_topics.events) as publisher:
        with pytest.raises(ValidationError):
            await publisher.start_session("user-b", duration_minutes=3)
        await publisher.start_session("user-b")
    records = await read_all(kafka_bootstrap, fresh_topics, 1)
    assert len(records) == 1
    assert decode(records[0].value).data.duration_minutes == 25  # type: ignore[union-attr]


async def test_an_unreachable_broker_is_named_in_the_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(PublisherError, match=address):
        async with Publisher(address):
            pass


def test_the_sync_wrapper_publishes_from_plain_code(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    with SyncPublisher(kafka_bootstrap, topic=fresh_topics.events) as publisher:
        start = publisher.start_session("user-c")
        end = publisher.end_session("user-c", start.session_id, outcome="cancelled")
    assert end.partition == start.partition
    assert end.offset == start.offset + 1


async def test_a_simulation_published_in_bulk_arrives_whole_and_keyed_by_user(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    pairs = list(generate(40, 300, seed=3))
    kafka = producer(kafka_bootstrap)
    await kafka.start()
    try:
        result = await publish_pairs(kafka, fresh_topics.events, pairs, rate=None)
    finally:
        await kafka.stop()
    records = await read_all(kafka_bootstrap, fresh_topics, len(pairs))
    assert result.events == len(records) == len(pairs)
    assert Counter((r.key, r.value) for r in records) == Counter(pairs)
    assert all(r.partition == partition_for(r.key, fresh_topics.partitions) for r in records)
    assert Counter(r.partition for r in records) == Counter(result.per_partition)


def test_focus_emit_publishes_a_session_and_prints_receipts(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    common = ["--bootstrap-servers", kafka_bootstrap, "--topic", fresh_topics.events]
    runner = CliRunner()
    started = runner.invoke(cli(), ["emit", "started", "-u", "user-d", "--duration-minutes",
                                    "50", "--time-zone", "Europe/Berlin", *common])
    assert started.exit_code == 0, started.output
    receipt = json.loads(started.stdout)
    session = receipt["session_id"]
    for args in (["interrupted", "-u", "user-d", "-s", session, "--reason", "phone call"],
                 ["ended", "-u", "user-d", "-s", session, "--abandoned", "--interruptions", "1"]):
        result = runner.invoke(cli(), ["emit", *args, *common])
        assert result.exit_code == 0, result.output
    records = asyncio.run(read_all(kafka_bootstrap, fresh_topics, 3))
    events = [decode(r.value) for r in records]
    assert [e.type for e in events] == ["focus.session.started.v1",
                                        "focus.session.interrupted.v1", "focus.session.ended.v2"]
    assert events[-1].data.outcome == "abandoned"  # type: ignore[union-attr]
    assert receipt["partition"] == records[0].partition


def test_focus_emit_names_the_address_and_the_variable_when_no_broker_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", address)
    result = CliRunner().invoke(cli(), ["emit", "started", "-u", "user-e", "--timeout", "0.5"])
    assert result.exit_code == 1
    assert address in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr


def test_focus_emit_creates_a_missing_topic_with_the_configured_partitions(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"focus.session.events.t{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("FOCUS_TOPIC_PARTITIONS", "6")
    try:
        result = CliRunner().invoke(cli(), ["emit", "started", "-u", "user-f", "--topic", topic,
                                            "--bootstrap-servers", kafka_bootstrap])
        assert result.exit_code == 0, result.output
        assert asyncio.run(partition_count(kafka_bootstrap, topic)) == 6
    finally:
        delete_topics(kafka_bootstrap, [topic])


def test_focus_simulate_publishes_what_it_reports(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    result = CliRunner().invoke(cli(), [
        "simulate", "--users", "30", "--sessions", "120", "--seed", "9", "--ended-v1-share",
        "0.5", "--bootstrap-servers", kafka_bootstrap, "--topic", fresh_topics.events,
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    records = asyncio.run(read_all(kafka_bootstrap, fresh_topics, summary["events"]))
    expected = list(generate(30, 120, 9, Profile(ended_v1_share=0.5)))
    assert len(records) == summary["events"] == len(expected)
    assert Counter((r.key, r.value) for r in records) == Counter(expected)  # seed -> same bytes
    assert summary["sessions"] == 120

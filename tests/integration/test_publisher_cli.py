"""``focus emit`` / ``focus simulate`` at the edges: no broker, a wrong topic, files, pacing."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from focus_sessions import cli_produce
from focus_sessions.bootstrap import producer
from focus_sessions.embedded import free_port
from focus_sessions.producers.bulk import publish_pairs
from focus_sessions.producers.simulate import generate
from focus_sessions.topics import ensure_topics
from tests.support.infra import TopicSet, delete_topics


def run(*args: str) -> Result:
    app = typer.Typer()
    cli_produce.register(app)
    return CliRunner().invoke(app, list(args))


def test_emit_with_no_broker_names_the_option_address_and_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    address = f"127.0.0.1:{free_port()}"
    result = run("emit", "started", "-u", "user-1", "--bootstrap-servers", address,
                 "--timeout", "0.3")
    assert result.exit_code == 1
    assert address in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr


def test_simulate_with_no_broker_names_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run("simulate", "--sessions", "3", "--bootstrap-servers", address, "--timeout",
                 "0.3", "--no-progress")
    assert result.exit_code == 1
    assert address in result.stderr


def test_simulate_out_writes_kcat_key_tab_value_lines(tmp_path: Path) -> None:
    out = tmp_path / "events.tsv"
    result = run("simulate", "--users", "5", "--sessions", "30", "--seed", "4", "--out",
                 str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    assert [tuple(line.split(b"\t")) for line in lines] == list(generate(5, 30, 4))


def test_emit_refuses_a_topic_with_fewer_partitions_than_configured(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keys would map to other partitions than the projector's: refuse, and say how to fix it
    topic = f"focus.session.events.t{uuid.uuid4().hex[:12]}"
    asyncio.run(ensure_topics(kafka_bootstrap, {topic: 2}))
    monkeypatch.setenv("FOCUS_TOPIC_PARTITIONS", "6")
    try:
        result = run("emit", "started", "-u", "user-1", "--topic", topic,
                     "--bootstrap-servers", kafka_bootstrap)
    finally:
        delete_topics(kafka_bootstrap, [topic])
    assert result.exit_code == 1
    assert "2 partitions; 6 are required" in result.stderr


async def test_bulk_publishing_keeps_to_the_requested_rate(
    kafka_bootstrap: str, fresh_topics: TopicSet
) -> None:
    pairs = list(generate(10, 100, seed=1))
    reported: list[int] = []
    # tiny batches: many in flight at once, trimmed as they are acknowledged
    kafka = producer(kafka_bootstrap, max_batch_size=2048)
    await kafka.start()
    try:
        started = time.perf_counter()
        result = await publish_pairs(kafka, fresh_topics.events, pairs, rate=1000,
                                     progress=reported.append, progress_every=50)
        elapsed = time.perf_counter() - started
    finally:
        await kafka.stop()
    assert result.events == sum(reported) == len(pairs)
    assert elapsed >= 0.9 * len(pairs) / 1000
    assert 0 < result.events_per_second < 1200

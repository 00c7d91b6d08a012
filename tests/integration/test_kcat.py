"""The kcat examples of docs/producing.md, run as written against Apache Kafka.

Debian's kcat (librdkafka 2.0) cannot talk to tansu at all (its ApiVersions answer is refused),
so these run against Apache Kafka in either test run (``apache_bootstrap``), and skip with a
reason where kcat or Java is missing (``apt-get install kcat``).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from focus_sessions.contracts.topics import EVENTS_TOPIC
from focus_sessions.producers.bulk import partition_for
from focus_sessions.producers.simulate import generate
from tests.support.infra import TopicSet, create_topic_set, delete_topics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "producing.md"
KCAT = shutil.which("kcat")

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install kcat)")


def documented_commands() -> list[str]:
    """The ``kcat -P`` commands of docs/producing.md, continuation lines joined."""
    text = DOCS.read_text().replace("\\\n", " ")
    return [" ".join(line.removeprefix("$ ").split())
            for line in text.splitlines() if line.startswith("$ kcat -P")]


def documented_started_json() -> str:
    """The one-line event the docs ``cat`` into started.json."""
    found = re.search(r"^\$ cat started\.json\n(\{.*\})$", DOCS.read_text(), re.MULTILINE)
    assert found is not None, "docs/producing.md lost its started.json example"
    return found.group(1)


def run_as_documented(command: str, bootstrap: str, topic: str, cwd: Path) -> None:
    # the docs' address and topic are those of a default stack; the rest runs as written
    argv = shlex.split(command.replace("-K$'\\t'", "-K'\t'"))
    argv = [bootstrap if a == "localhost:9092" else topic if a == EVENTS_TOPIC else a
            for a in argv]
    assert argv[0] == "kcat"
    done = subprocess.run([KCAT or "kcat", *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


async def read_back(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        found: list[tuple[int, bytes, bytes]] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                found += [(tp.partition, r.key, r.value) for r in batch.get(tp, [])]
        return found
    finally:
        await consumer.stop()


@pytest.fixture
def topics(apache_bootstrap: str) -> Iterator[TopicSet]:
    """A fresh events topic of 6 partitions on the Apache broker, deleted afterwards."""
    made = create_topic_set(apache_bootstrap, partitions=6)
    yield made
    delete_topics(apache_bootstrap, [made.events, made.dlq])


def test_the_docs_show_both_kcat_commands_with_the_murmur2_partitioner() -> None:
    commands = documented_commands()
    assert len(commands) == 2
    assert all("-X topic.partitioner=murmur2_random -X topic.acks=all" in c for c in commands)


async def test_kcat_publishes_the_documented_event_to_the_partition_of_its_user(
    apache_bootstrap: str, topics: TopicSet, tmp_path: Path
) -> None:
    (tmp_path / "started.json").write_text(documented_started_json() + "\n")
    one = next(c for c in documented_commands() if c.endswith("started.json"))

    run_as_documented(one, apache_bootstrap, topics.events, tmp_path)

    # where the publisher and the Java client would put user-42: murmur2, not librdkafka's CRC32
    (record,) = await read_back(apache_bootstrap, topics.events, 6)
    assert record[0] == partition_for(b"user-42", 6)
    assert record[1:] == (b"user-42", documented_started_json().encode())  # one line, one event


async def test_kcat_publishes_simulated_key_tab_json_lines_where_the_simulator_would(
    apache_bootstrap: str, topics: TopicSet, tmp_path: Path
) -> None:
    pairs = list(generate(users=20, sessions=60, seed=7))
    # what `focus simulate --out events.tsv` writes: key<TAB>json per line
    (tmp_path / "events.tsv").write_bytes(b"".join(k + b"\t" + v + b"\n" for k, v in pairs))
    many = next(c for c in documented_commands() if c.endswith("events.tsv"))

    run_as_documented(many, apache_bootstrap, topics.events, tmp_path)

    records = await read_back(apache_bootstrap, topics.events, 6)
    assert sorted((p, k, v) for p, k, v in records) == sorted(
        (partition_for(k, 6), k, v) for k, v in pairs)


async def test_kcat_reads_back_what_the_publisher_wrote(
    apache_bootstrap: str, topics: TopicSet
) -> None:
    from focus_sessions.producers.publisher import Publisher

    async with Publisher(apache_bootstrap, topic=topics.events) as publisher:
        receipt = await publisher.start_session("user-42")
    done = await asyncio.to_thread(subprocess.run, [
        KCAT or "kcat", "-C", "-b", apache_bootstrap, "-t", topics.events, "-o", "beginning",
        "-e", "-q", "-f", "%p %k %s\n"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    partition, key, value = done.stdout.strip().split(" ", 2)
    assert (int(partition), key) == (receipt.partition, "user-42")
    assert json.loads(value)["id"] == str(receipt.event_id)

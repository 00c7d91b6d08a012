"""A 3-node Apache Kafka cluster on loopback, for the failover tests in this folder.

Every test here carries the ``cluster`` marker. They need Java 17 (and Maven once, for the jars)
and take minutes, so they run in CI's Apache Kafka pass (``FOCUS_TEST_BROKER=apache``) or when
asked for (``FOCUS_TEST_CLUSTER=1``), and are skipped with that reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from focus_sessions.apache import ApacheKafka
from focus_sessions.embedded import run_coroutine_sync
from focus_sessions.topics import ensure_topics
from tests.support.infra import TopicSet, chosen_broker, create_database, drop_database

HERE = Path(__file__).resolve().parent


def cluster_tests_wanted() -> bool:
    return chosen_broker() == "apache" or os.environ.get("FOCUS_TEST_CLUSTER", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="3-broker cluster tests run with FOCUS_TEST_BROKER=apache "
                                   "(CI's second pass) or FOCUS_TEST_CLUSTER=1")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)
            if not cluster_tests_wanted():
                item.add_marker(skip)
            if shutil.which("java") is None:
                item.add_marker(pytest.mark.skip(reason="Apache Kafka needs Java 17+"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[ApacheKafka]:
    """Three combined broker+controller nodes: replication factor 3, min.insync.replicas 2."""
    folder = Path(tempfile.mkdtemp(prefix="focus-cluster-test-"))
    try:
        with ApacheKafka(folder, nodes=3, heap_mb=384) as kafka:
            yield kafka
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cluster_topics(cluster: ApacheKafka) -> TopicSet:
    """A fresh events topic (6 partitions) and dead-letter topic, each replicated 3 times."""
    import uuid

    events = f"focus.session.events.c{uuid.uuid4().hex[:10]}"
    topics = TopicSet(events=events, dlq=f"{events}.dlq", partitions=6)
    run_coroutine_sync(ensure_topics(cluster.bootstrap_servers, {events: 6, topics.dlq: 1},
                                     replication_factor=cluster.replication_factor))
    return topics


@pytest.fixture
def cluster_database(postgres_url: str) -> Iterator[str]:
    url = create_database(postgres_url)
    yield url
    drop_database(postgres_url, url)

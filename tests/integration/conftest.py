"""Fixtures shared by the integration tests: the HTTP API with a projector behind it, and
throw-away databases."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.api_harness import Api, api_settings, running_api
from tests.support.infra import TopicSet, create_database, drop_database


@pytest.fixture(scope="session")
def apache_bootstrap(broker_kind: str, kafka_bootstrap: str) -> Iterator[str]:
    """An Apache Kafka broker: the session's when ``FOCUS_TEST_BROKER=apache``, else one node
    started for the tests that are about Apache Kafka itself (the tansu run needs them too)."""
    if broker_kind == "apache":
        yield kafka_bootstrap
        return
    if shutil.which("java") is None:
        pytest.skip("Apache Kafka needs Java 17+ (and Maven once, for the jars)")
    from focus_sessions.apache import ApacheKafka

    folder = Path(tempfile.mkdtemp(prefix="focus-apache-test-"))
    try:
        with ApacheKafka(folder) as kafka:
            yield kafka.bootstrap_servers
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tansu_bootstrap(broker_kind: str, kafka_bootstrap: str) -> Iterator[str]:
    """A tansu broker: the session's when it is one, else one started for the comparisons."""
    if broker_kind == "tansu":
        yield kafka_bootstrap
        return
    from focus_sessions.embedded import EmbeddedKafka

    folder = Path(tempfile.mkdtemp(prefix="focus-tansu-test-"))
    try:
        with EmbeddedKafka(folder) as kafka:
            yield kafka.bootstrap_servers
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def projected_api(kafka_bootstrap: str, fresh_database: str, fresh_topics: TopicSet
                        ) -> AsyncIterator[Api]:
    """The API over fresh topics and a fresh database, with a projector running behind it and
    writes waiting up to 10 s for their projection."""
    settings = api_settings(kafka_bootstrap, fresh_database, fresh_topics,
                            focus_api_wait_ms=10_000)
    async with running_api(settings, projector_kafka=kafka_bootstrap, topics=fresh_topics) as a:
        yield a


@pytest.fixture
def tmp_db_factory(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Makes fresh empty databases on the test server; all are dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(create_database(postgres_url))
        return made[-1]

    yield make
    for url in made:
        drop_database(postgres_url, url)

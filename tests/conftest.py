"""Session infrastructure for every test folder (see ``tests/support/infra.py`` for the order)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from focus_sessions.contracts.topics import EVENTS_TOPIC
from tests.support.infra import (
    Infrastructure,
    TopicFactory,
    TopicSet,
    create_database,
    create_topic_set,
    delete_topics,
    drop_database,
    proxy_target,
)
from tests.support.proxy import TcpProxy

_INFRA = pytest.StashKey[Infrastructure]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: needs a 3-broker Apache Kafka cluster (tests/cluster; see there)")


@pytest.fixture(scope="session")
def infrastructure(request: pytest.FixtureRequest) -> Iterator[Infrastructure]:
    infra = Infrastructure()
    request.config.stash[_INFRA] = infra
    yield infra
    infra.close()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    infra = config.stash.get(_INFRA, None)
    for role, source in infra.sources.items() if infra else ():
        terminalreporter.write_line(f"infrastructure: {role} from {source}")


@pytest.fixture(scope="session")
def kafka_bootstrap(infrastructure: Infrastructure) -> str:
    """``host:port`` of a Kafka-protocol broker shared by the session (topics are per test)."""
    return infrastructure.kafka_bootstrap()


@pytest.fixture(scope="session")
def broker_kind(infrastructure: Infrastructure, kafka_bootstrap: str) -> str:
    """Which broker ``kafka_bootstrap`` is: ``tansu``, ``apache`` (``FOCUS_TEST_BROKER``) or
    ``other`` (from the environment or a container). For the few tests about one broker."""
    return infrastructure.broker


@pytest.fixture(scope="session")
def postgres_url(infrastructure: Infrastructure) -> str:
    """A server-level PostgreSQL URL; tests should work in ``fresh_database``, not here."""
    return infrastructure.postgres_url()


@pytest.fixture
def fresh_database(postgres_url: str) -> Iterator[str]:
    """URL of a brand-new empty database, dropped (connections forced off) after the test."""
    url = create_database(postgres_url)
    yield url
    drop_database(postgres_url, url)


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[TopicFactory]:
    """Make any number of uniquely named topic sets; all are deleted after the test."""
    made: list[TopicSet] = []

    def make(*, partitions: int = 6, dlq_partitions: int = 1, base: str = EVENTS_TOPIC) -> TopicSet:
        topics = create_topic_set(
            kafka_bootstrap, partitions=partitions, dlq_partitions=dlq_partitions, base=base
        )
        made.append(topics)
        return topics

    yield make
    if made:
        delete_topics(kafka_bootstrap, [name for t in made for name in (t.events, t.dlq)])


@pytest.fixture
def fresh_topics(topic_factory: TopicFactory) -> TopicSet:
    """A uniquely named events topic (6 partitions) and its ``.dlq`` topic (1 partition)."""
    return topic_factory()


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the session's PostgreSQL; route URLs with ``through_proxy``."""
    with TcpProxy(proxy_target(postgres_url)) as proxy:
        yield proxy

"""Fixtures shared by the integration tests: the HTTP API with a projector behind it, and
throw-away databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.integration.api_harness import Api, api_settings, running_api
from tests.support.infra import TopicSet, create_database, drop_database


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

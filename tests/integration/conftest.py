"""Fixtures shared by the integration tests of the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.api_harness import Api, api_settings, running_api
from tests.support.infra import TopicSet


@pytest.fixture
async def projected_api(kafka_bootstrap: str, fresh_database: str, fresh_topics: TopicSet
                        ) -> AsyncIterator[Api]:
    """The API over fresh topics and a fresh database, with a projector running behind it and
    writes waiting up to 10 s for their projection."""
    settings = api_settings(kafka_bootstrap, fresh_database, fresh_topics,
                            focus_api_wait_ms=10_000)
    async with running_api(settings, projector_kafka=kafka_bootstrap, topics=fresh_topics) as a:
        yield a

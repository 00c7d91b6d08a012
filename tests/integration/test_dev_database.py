"""`focus dev` keeps its database only while it describes the running log
(``focus_sessions.dev.keep_or_recreate``), on a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from focus_sessions.dev import keep_or_recreate
from tests.support.infra import drop_database, with_database

LOG_A = "Apache Kafka cluster A"
LOG_B = "Apache Kafka cluster B"


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    name = f"focus_dev_{uuid.uuid4().hex[:12]}"
    yield name
    drop_database(postgres_url, with_database(postgres_url, name))


def mark(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE read_model_marker ()")


def marked(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass('read_model_marker')").fetchone() != (None,)


def test_the_database_lives_exactly_as_long_as_the_log_it_describes(
    postgres_url: str, database: str,
) -> None:
    url = with_database(postgres_url, database)

    # a new log: a new database
    assert keep_or_recreate(postgres_url, database, LOG_A) is False
    mark(url)
    # the same log after a restart: the read models are kept
    assert keep_or_recreate(postgres_url, database, LOG_A) is True
    assert marked(url)
    # another log (its folder was deleted and formatted anew): recreated
    assert keep_or_recreate(postgres_url, database, LOG_B) is False
    assert not marked(url)
    mark(url)
    # a memory-only broker: recreated every time, and the old log's claim is gone with it
    assert keep_or_recreate(postgres_url, database, None) is False
    assert not marked(url)
    mark(url)
    assert keep_or_recreate(postgres_url, database, LOG_B) is False
    assert not marked(url)

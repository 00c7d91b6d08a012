"""Property-based fuzzing of the whole OpenAPI document (schemathesis): no input gets a 5xx.

The app runs under a real uvicorn in a thread, against the real broker and PostgreSQL, and is
called with a token that may do everything, so generated requests reach the handlers. A real
projector process projects what the writes publish: whatever the fuzzer gets accepted must not
stop it (once, an accepted `ended_at` in 2100 did).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from focus_sessions.api import create_app
from focus_sessions.api.auth import ANALYTICS, WRITE
from focus_sessions.consumers.replay.follow import topic_log_ends
from focus_sessions.embedded import free_port, run_coroutine_sync
from focus_sessions.migrate import migrate
from tests.integration.api_harness import api_settings, token
from tests.support.infra import TopicSet, create_database, create_topic_set, drop_database
from tests.support.projection import ProjectorProcess, positions, settings_for

ALL_SCOPES = token("fuzzer", ANALYTICS, WRITE)


@dataclass
class Stack:
    url: str
    database: str
    topics: TopicSet
    projector: ProjectorProcess


@pytest.fixture(scope="module")
def stack(postgres_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    url = create_database(postgres_url)
    migrate(url)
    topics = create_topic_set(kafka_bootstrap)
    projector = ProjectorProcess(settings_for(kafka_bootstrap, url, topics),
                                 tmp_path_factory.mktemp("fuzz"), "projector")
    app = create_app(api_settings(kafka_bootstrap, url, topics, focus_api_wait_ms=50))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Stack(f"http://127.0.0.1:{port}", url, topics, projector)
    finally:
        server.should_exit = True
        thread.join(10)
        if projector.process.poll() is None:
            projector.terminate()
        drop_database(postgres_url, url)


def test_no_input_gets_a_server_error(stack: Stack, kafka_bootstrap: str) -> None:
    base_url = stack.url
    # schemathesis.pytest.from_fixture does not support pytest 9 yet, so each operation's
    # strategy is driven by hypothesis directly (what from_fixture does under the hood).
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 7
    seen: Counter[int] = Counter()
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case: Any) -> None:
            response = case.call_and_validate(
                base_url=base_url, headers=ALL_SCOPES,
                checks=[schemathesis.checks.not_a_server_error])
            seen[response.status_code] += 1

        try:
            no_server_error()
        except Unsatisfiable:  # an operation without inputs has no invalid variant
            assert mode is GenerationMode.NEGATIVE
    # the fuzzing reached the handlers, not only the validation layer
    assert seen[200], seen
    assert seen[422], seen
    assert seen[404], seen
    # ... and what the writes published was projected or dead-lettered: the projector is
    # still running and its positions reach the end of the log
    ends = run_coroutine_sync(topic_log_ends(kafka_bootstrap, stack.topics.events))
    assert sum(ends.values()) > 0, "no write was published"
    deadline = time.monotonic() + 120
    while not all((stored := positions(stack.database, stack.topics.events)).get(p, 0) >= end
                  for p, end in ends.items()):
        assert stack.projector.process.poll() is None, stack.projector.log()[-3000:]
        assert time.monotonic() < deadline, f"projection stuck at {stored}, log ends {ends}"
        time.sleep(0.2)
    assert stack.projector.process.poll() is None, stack.projector.log()[-3000:]

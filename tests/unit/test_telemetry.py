"""The projector's endpoint on a loopback port: /metrics, /healthz's verdict, a taken port."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest

from focus_sessions.consumers.metrics import ProjectorMetrics
from focus_sessions.telemetry import Endpoint, open_endpoint


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def test_healthz_follows_the_heartbeat_and_metrics_are_served() -> None:
    metrics = ProjectorMetrics()
    endpoint = Endpoint(0, metrics.registry, window=5.0).start_thread()
    port = endpoint.server_address[1]
    try:
        status, body = get(port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        # the loop stopped polling 6 s ago: STOP, whatever the lag
        metrics.last_poll.set(time.time() - 6)
        status, body = get(port, "/healthz")
        verdict = json.loads(body)
        assert status == 503 and verdict["status"] == "stop"
        assert "no poll for" in verdict["processes"][0]["detail"]
        status, body = get(port, "/metrics?x=1")
        assert status == 200 and b"focus_projector_events_consumed_total 0.0" in body
        assert get(port, "/elsewhere")[0] == 404
    finally:
        endpoint.close()


def test_a_taken_port_is_logged_and_the_projector_goes_on_without_an_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Endpoint(0, ProjectorMetrics().registry, window=5.0)
    try:
        with caplog.at_level(logging.ERROR):
            assert open_endpoint(first.server_address[1], ProjectorMetrics().registry, 5.0) is None
        assert "FOCUS_PROJECTOR_METRICS_PORT" in caplog.text
    finally:
        first.close()


def test_the_supervisor_answers_between_looks_at_its_workers() -> None:
    endpoint = Endpoint(0, ProjectorMetrics().registry, window=5.0)
    port = endpoint.server_address[1]
    answers: list[int] = []
    asker = threading.Thread(target=lambda: answers.append(get(port, "/healthz")[0]))
    asker.start()
    try:
        started = time.monotonic()
        while asker.is_alive() and time.monotonic() - started < 5:
            endpoint.serve_for(0.1)  # what supervise() does instead of sleeping
    finally:
        asker.join(5)
        endpoint.close()
    assert answers == [200]

"""``focus status --json`` against a running projector reports the same lag and counts as the
projector's metrics, and a Burrow-style verdict."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from focus_sessions.migrate import migrate
from focus_sessions.producers import events as ev
from focus_sessions.status import Partition, judge
from tests.integration.test_metrics import free_port
from tests.support.projection import (
    ProjectorProcess,
    publish,
    settings_for,
    stop_all,
    wait_caught_up,
)
from tests.unit.histories import T0, minutes


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_status_json_reports_the_lag_and_counts_the_metrics_report(
    kafka_bootstrap, broker_kind, fresh_database, fresh_topics, tmp_path, monkeypatch
):
    port = free_port()
    monkeypatch.setenv("FOCUS_PROJECTOR_METRICS_PORT", str(port))
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    migrate(fresh_database)
    proc = ProjectorProcess(s, tmp_path, "projector")
    try:
        start = ev.started("ola", T0)
        sent = await publish(kafka_bootstrap, s.focus_events_topic, [
            start, ev.ended("ola", start.data.session_id, minutes(25)),
            ev.ended("pia", ev.started("pia", T0).data.session_id, minutes(5)),  # held
            (b"ola", b"{not json"),                                              # poison
        ])
        await wait_caught_up(fresh_database, fresh_topics, sent, timeout=60)
        deadline = time.monotonic() + 20
        while True:  # the held count and lag gauges follow the commits within a second or two
            metrics = scrape(port)
            lags = {int(dict(k[1])["partition"]): v for k, v in metrics.items()
                    if k[0] == "focus_projector_lag_events"}
            if metrics.get(("focus_projector_held_events", ())) == 1 and lags and not any(
                    lags.values()):
                break
            assert time.monotonic() < deadline, (metrics, proc.log()[-2000:])
            await asyncio.sleep(0.3)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
               "DATABASE_URL": fresh_database, "FOCUS_EVENTS_TOPIC": s.focus_events_topic,
               "FOCUS_CONSUMER_GROUP": s.focus_consumer_group}
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "focus_sessions.cli", "status", "--json"],
            env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
    finally:
        stop_all([proc])
    assert report["verdict"] == "ok", report
    assert {p["partition"]: p["lag"] for p in report["partitions"]} == lags
    assert report["lag"] == 0
    assert report["held_events"] == metrics[("focus_projector_held_events", ())] == 1
    assert report["dead_letters"] == {"malformed-json": 1.0} == {
        dict(k[1])["reason"]: v for k, v in metrics.items()
        if k[0] == "focus_projector_dead_letters_total"}
    assert report["projector_health"]["status"] == "ok"
    assert report["freshness"] is not None
    if broker_kind == "apache" or report["members"] is not None:  # tansu may not describe
        assert len(report["members"]) == 1, report


def test_the_verdict_is_burrows() -> None:
    def part(n: int, position: int, lag: int, idle: float | None) -> Partition:
        return Partition(n, position + lag, position, lag, idle, None)

    window = 60.0
    # caught up, whatever the idle time: ok
    assert judge({0: 10}, [part(0, 10, 0, 9999)], 0, window, ["a"]) == "ok"
    # lag, position moving: ok; moving but lag grew: warn
    assert judge({0: 10}, [part(0, 20, 5, 0.1)], 5, window, ["a"]) == "ok"
    assert judge({0: 10}, [part(0, 20, 50, 0.1)], 5, window, ["a"]) == "warn"
    # lag, position unchanged for longer than the window: stall (not within the window)
    assert judge({0: 10}, [part(0, 10, 5, 61)], 5, window, ["a"]) == "stall"
    assert judge({0: 10}, [part(0, 10, 5, 30)], 5, window, ["a"]) == "ok"
    # lag and nobody in the group: stop
    assert judge({0: 10}, [part(0, 10, 5, 61)], 5, window, []) == "stop"

"""End to end: `focus dev` as the README starts it, then the original spec's flow over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from focus_sessions.embedded import free_port
from tests.support.infra import chosen_broker


@pytest.fixture
def dev_stack(tmp_path):
    """``focus dev`` in a subprocess, on free ports, in its own data folder, with the broker
    ``FOCUS_TEST_BROKER`` names (tansu unless set)."""
    port = free_port()
    env = {**os.environ, "FOCUS_DATA_DIR": str(tmp_path / ".focus"), "FOCUS_API_PORT": str(port)}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "FOCUS_JWT_SECRET"):
        env.pop(name, None)  # the embedded default, as on a fresh machine
    out = (tmp_path / "dev.out").open("w+")
    command = [sys.executable, "-m", "focus_sessions.cli", "dev", "--broker", chosen_broker()]
    proc = subprocess.Popen(command, env=env,
                            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + 120
    token = None
    while token is None and time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "dev.out").read_text()
        match = re.search(r"export TOKEN=(\S+)", (tmp_path / "dev.out").read_text())
        token = match[1] if match else None
        time.sleep(0.2)
    assert token, (tmp_path / "dev.out").read_text()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15,
                          headers={"Authorization": f"Bearer {token}"})
    yield client, proc, tmp_path
    client.close()
    if proc.poll() is None:  # SIGTERM lets `focus dev` stop its children and servers
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_start_interrupt_end_then_read_sessions_and_analytics_over_http(dev_stack):
    http, proc, folder = dev_stack
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    # two sessions: one completed after 25 minutes with two interruptions, one abandoned at 10
    first = http.post("/sessions", json={"user_id": "dev-user", "duration_minutes": 25})
    assert first.status_code == 201, first.text
    sid = first.json()["session_id"]
    for _ in range(2):
        assert http.post(f"/sessions/{sid}/interruptions", json={}).status_code in (200, 201)
    started = datetime.fromisoformat(first.json()["started_at"])
    ended = http.put(f"/sessions/{sid}", json={
        "ended_at": (started + timedelta(minutes=25)).isoformat(), "completed": True})
    assert ended.status_code == 200, ended.text
    assert ended.json()["completed"] is True and ended.json()["interruptions"] == 2

    second = http.post("/sessions", json={"user_id": "dev-user", "duration_minutes": 50})
    sid2 = second.json()["session_id"]
    started2 = datetime.fromisoformat(second.json()["started_at"])
    assert http.put(f"/sessions/{sid2}", json={
        "ended_at": (started2 + timedelta(minutes=10)).isoformat(), "completed": False,
    }).status_code == 200

    listed = http.get("/users/dev-user/sessions", params={"limit": 10}).json()
    assert [s["session_id"] for s in listed["sessions"]] == [sid2, sid]  # newest first

    analytics = http.get("/users/dev-user/analytics").json()
    assert analytics["sessions_started"] == 2 and analytics["sessions_ended"] == 2
    assert analytics["completion_rate"] == 0.5
    assert analytics["total_focus_minutes"] == pytest.approx(35.0)
    assert analytics["avg_duration_minutes"] == pytest.approx(17.5)
    assert analytics["interruptions_total"] == 2
    assert analytics["freshness"]["positions"]
    assert t0 < datetime.fromisoformat(analytics["last_session_at"])

    # Ctrl-C stops every child and the embedded servers, and removes the state file
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, (folder / "dev.out").read_text()
    assert "stopping" in (folder / "dev.out").read_text()
    assert not (folder / ".focus" / "dev.json").exists()


def test_the_dev_stack_serves_its_contract_and_docs(dev_stack):
    http, _, _ = dev_stack
    document = http.get("/asyncapi").json()
    assert document["asyncapi"] == "3.0.0"
    assert len(document["channels"]) == 2
    assert http.get("/docs").status_code == 200
    assert "bearer" in str(http.get("/openapi.json").json()["components"]["securitySchemes"])

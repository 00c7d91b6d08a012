"""The longest session is 24 h (contracts.events.MAX_SESSION): an end or interruption more than
that after the start is 422 naming the field, and a session older than that needs the time
given explicitly (omitted, it would mean now)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.api_harness import (
    SERVICE,
    Api,
    seed_session,
    seeded_api,
)


@pytest.fixture(scope="module")
async def api(postgres_url: str, kafka_bootstrap: str) -> AsyncIterator[Api]:
    async with seeded_api(postgres_url, kafka_bootstrap, wait_ms=50, open_session={},
                          old_session={"minutes_ago": 25 * 60}) as a:
        yield a


def _only_error(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    return error  # type: ignore[no-any-return]


async def _started_at(api: Api, sid: str) -> datetime:
    r = await api.client.get(f"/sessions/{sid}", headers=api.user("alice"))
    return datetime.fromisoformat(r.json()["started_at"])


async def test_an_end_more_than_24_hours_after_the_start_is_422(api: Api) -> None:
    sid = api.open_session  # type: ignore[attr-defined]
    t0 = await _started_at(api, sid)
    late = (t0 + timedelta(hours=24, seconds=1)).isoformat()
    error = _only_error(await api.client.put(f"/sessions/{sid}", json={"ended_at": late},
                                             headers=SERVICE))
    assert error["loc"] == ["body", "ended_at"]
    assert "24 h" in error["msg"]


async def test_an_interruption_more_than_24_hours_after_the_start_is_422(api: Api) -> None:
    sid = api.open_session  # type: ignore[attr-defined]
    t0 = await _started_at(api, sid)
    late = (t0 + timedelta(hours=24, seconds=1)).isoformat()
    error = _only_error(await api.client.post(
        f"/sessions/{sid}/interruptions", json={"interrupted_at": late}, headers=SERVICE))
    assert error["loc"] == ["body", "interrupted_at"]
    assert "24 h" in error["msg"]


@pytest.mark.parametrize(("method", "suffix", "field"), [
    ("PUT", "", "ended_at"), ("POST", "/interruptions", "interrupted_at")])
async def test_a_session_older_than_24_hours_needs_an_explicit_time(
    api: Api, method: str, suffix: str, field: str
) -> None:
    sid = api.old_session  # type: ignore[attr-defined]
    error = _only_error(await api.client.request(method, f"/sessions/{sid}{suffix}", json={},
                                                 headers=SERVICE))
    assert error["loc"] == ["body", field]
    assert "required" in error["msg"]
    # a time within 24 h of the start is taken
    t0 = await _started_at(api, sid)
    inside = (t0 + timedelta(hours=23)).isoformat()
    r = await api.client.request(method, f"/sessions/{sid}{suffix}", json={field: inside},
                                 headers=SERVICE)
    assert r.status_code == 202, r.text  # published; no projector runs in this module


async def test_exactly_24_hours_after_the_start_is_allowed(api: Api) -> None:
    sid = seed_session(api.settings.database_url or "", "alice", minutes_ago=60)
    t0 = await _started_at(api, sid)
    r = await api.client.post(f"/sessions/{sid}/interruptions",
                              json={"interrupted_at": (t0 + timedelta(hours=24)).isoformat()},
                              headers=SERVICE)
    assert r.status_code == 202, r.text


"""Start, interrupt and end sessions over HTTP; read them back through the real projector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.api_harness import SERVICE, Api


@pytest.fixture
def api(projected_api: Api) -> Api:
    return projected_api


async def test_start_interrupt_end_then_read_sessions_and_analytics(api: Api) -> None:
    alice = api.user("alice")
    # alice starts a 25-minute session: the answer is the projected session (read-your-writes)
    started = await api.client.post("/sessions", json={"user_id": "alice"}, headers=alice)
    assert started.status_code == 201, started.text
    session = started.json()
    sid = session["session_id"]
    assert started.headers["location"] == f"/sessions/{sid}"
    assert session["duration_minutes"] == 25
    assert session["ended_at"] is None
    assert session["freshness"]["projected_through"] is not None

    # she is interrupted once...
    t0 = datetime.fromisoformat(session["started_at"])
    hit = await api.client.post(f"/sessions/{sid}/interruptions",
                                json={"reason": "phone"}, headers=alice)
    assert hit.status_code == 201, hit.text
    assert hit.json()["interruptions"] == 1

    # ... and ends it 30 minutes after the start, completed, the timer counting 2 interruptions
    end = await api.client.put(f"/sessions/{sid}", headers=alice, json={
        "ended_at": (t0 + timedelta(minutes=30)).isoformat(), "completed": True,
        "interruptions": 2})
    assert end.status_code == 200, end.text
    ended = end.json()
    assert ended["completed"] is True
    assert ended["interruptions"] == 2  # max(events, reported)
    assert ended["focus_minutes"] == pytest.approx(30)

    # a second session, ended after 10 minutes without saying: not completed (plan was 25)
    second = await api.client.post("/sessions", json={"user_id": "alice", "duration_minutes": 25},
                                   headers=SERVICE)
    sid2 = second.json()["session_id"]
    t2 = datetime.fromisoformat(second.json()["started_at"])
    end2 = await api.client.put(f"/sessions/{sid2}", headers=SERVICE,
                                json={"ended_at": (t2 + timedelta(minutes=10)).isoformat()})
    assert end2.json()["completed"] is False

    page = (await api.client.get("/users/alice/sessions", headers=alice)).json()
    assert [s["session_id"] for s in page["sessions"]] == [sid2, sid]
    assert page["next_cursor"] is None

    stats = (await api.client.get("/users/alice/analytics", headers=alice)).json()
    assert stats["sessions_started"] == 2
    assert stats["sessions_ended"] == 2
    assert stats["sessions_completed"] == 1
    assert stats["completion_rate"] == 0.5
    assert stats["total_focus_minutes"] == pytest.approx(40)
    assert stats["avg_duration_minutes"] == pytest.approx(20)
    assert stats["interruptions_total"] == 2
    assert stats["interruptions_per_session"] == 1.0
    assert stats["last_session_at"] == second.json()["started_at"]
    assert stats["daily"] is None


async def test_pages_follow_the_cursor_newest_first(api: Api) -> None:
    ids = []
    for _ in range(5):
        r = await api.client.post("/sessions", json={"user_id": "bob"}, headers=SERVICE)
        assert r.status_code == 201
        ids.append(r.json()["session_id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/users/bob/sessions", params=params,
                                     headers=api.user("bob"))).json()
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


async def test_daily_buckets_follow_the_requested_time_zone(api: Api) -> None:
    carol = api.user("carol")
    r = await api.client.post("/sessions", headers=carol,
                              json={"user_id": "carol", "time_zone": "Pacific/Kiritimati"})
    started = datetime.fromisoformat(r.json()["started_at"])
    local_day = (started.astimezone(UTC) + timedelta(hours=14)).date()  # UTC+14, no DST
    stats = (await api.client.get("/users/carol/analytics", headers=carol,
                                  params={"from": str(local_day - timedelta(days=1)),
                                          "to": str(local_day + timedelta(days=1))})).json()
    daily = stats["daily"]
    assert daily["time_zone"] == "Pacific/Kiritimati"  # the user's own zone, from her session
    assert [d["sessions_started"] for d in daily["days"]] == [0, 1, 0]
    assert daily["days"][1]["day"] == str(local_day)
    utc = (await api.client.get("/users/carol/analytics", headers=carol,
                                params={"tz": "UTC", "from": str(started.date()),
                                        "to": str(started.date())})).json()
    assert utc["daily"]["days"][0]["sessions_started"] == 1


async def test_unknown_user_has_empty_analytics_not_an_error(api: Api) -> None:
    r = await api.client.get("/users/nobody/analytics", headers=api.user("nobody"))
    assert r.status_code == 200
    body = r.json()
    assert body["sessions_started"] == 0
    assert body["completion_rate"] is None
    assert body["avg_duration_minutes"] is None

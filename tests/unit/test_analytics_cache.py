"""The analytics cache and the change notices it follows: pure, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from focus_sessions.api import models
from focus_sessions.api.cache import AnalyticsCache
from focus_sessions.projections import notify
from focus_sessions.projections.notify import Moved, Notice
from focus_sessions.projections.queries import Freshness, Position, UserTotals

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
TOPIC = "focus.session.events"
START = Freshness(T0, [Position(0, 10, T0), Position(1, 4, None)])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def online_cache(capacity: int = 10, ttl: float = 60.0, clock: Clock | None = None
                 ) -> AnalyticsCache:
    cache = AnalyticsCache(capacity, ttl, topic=TOPIC, clock=clock or Clock())
    cache.go_online(START)
    return cache


def analytics(user: str, started: int = 3, fresh: Freshness = START) -> models.AnalyticsOut:
    return models.analytics(user, UserTotals(started, 2, 1, Decimal(3000), 75, 4, T0), fresh)


def changed(*users: str, positions: tuple[Moved, ...] = ()) -> Notice:
    return notify.parse(notify.batch_notice("public", TOPIC, positions, users))


def cached(cache: AnalyticsCache, user: str, started: int = 3) -> None:
    assert cache.store(cache.ticket(user), user, analytics(user, started))


# -- notices ---------------------------------------------------------------------------------


def test_a_batch_notice_reads_back_as_the_positions_and_users_it_names() -> None:
    payload = notify.batch_notice("public", TOPIC, [Moved(2, 41, T0), Moved(3, 7, None)],
                                  ["alice", "bob"])
    assert notify.parse(payload) == Notice(
        "public", False, TOPIC, (Moved(2, 41, T0), Moved(3, 7, None)),
        frozenset({"alice", "bob"}))


def test_a_batch_of_too_many_users_for_one_notification_says_any_user() -> None:
    users = [f"user-{i:06d}" for i in range(2000)]
    payload = notify.batch_notice("public", TOPIC, [Moved(0, 1, T0)], users)
    assert len(payload.encode()) <= notify.MAX_PAYLOAD
    notice = notify.parse(payload)
    assert notice.users is None
    assert notice.positions == (Moved(0, 1, T0),)


def test_a_payload_that_is_not_a_notice_reads_as_a_flush_of_the_live_tables() -> None:
    for payload in ("", "not json", '{"schema": "public"}', '{"positions": 1}'):
        assert notify.parse(payload) == Notice("public", True)
    assert notify.parse(notify.flush_notice("shadow")) == Notice("shadow", True)


# -- the cache -------------------------------------------------------------------------------


def test_a_hit_is_the_very_json_the_route_would_answer() -> None:
    cache = online_cache()
    cached(cache, "alice")
    body = cache.get("alice")
    assert body is not None
    assert json.loads(body) == json.loads(analytics("alice").model_dump_json())


def test_a_notice_naming_the_user_drops_the_entry_and_others_stay() -> None:
    cache = online_cache()
    cached(cache, "alice")
    cached(cache, "bob")
    assert not cache.apply(changed("alice"))
    assert cache.get("alice") is None
    assert cache.get("bob") is not None


def test_a_read_that_raced_a_notice_of_its_user_is_not_kept() -> None:
    cache = online_cache()
    ticket = cache.ticket("alice")
    # the projector commits a change of alice while her read is on its way
    cache.apply(changed("alice"))
    assert not cache.store(ticket, "alice", analytics("alice"))
    assert cache.get("alice") is None
    assert cache.refused == 1


def test_a_read_that_raced_a_notice_of_other_users_is_kept() -> None:
    cache = online_cache()
    ticket = cache.ticket("alice")
    cache.apply(changed("bob", "carol"))
    assert cache.store(ticket, "alice", analytics("alice"))


def test_a_notice_of_any_user_drops_everything_and_voids_every_read_in_flight() -> None:
    cache = online_cache()
    cached(cache, "alice")
    ticket = cache.ticket("bob")
    cache.apply(changed(*[f"user-{i:06d}" for i in range(2000)]))
    assert cache.get("alice") is None
    assert not cache.store(ticket, "bob", analytics("bob"))
    assert len(cache) == 0


def test_a_flush_takes_the_cache_offline_until_positions_are_read_again() -> None:
    cache = online_cache()
    cached(cache, "alice")
    assert cache.apply(notify.parse(notify.flush_notice("public"))) is True
    assert not cache.online
    assert cache.get("alice") is None
    assert cache.ticket("alice") is None
    later = Freshness(T0 + timedelta(hours=1), [Position(0, 3, T0 + timedelta(hours=1))])
    cache.go_online(later)  # positions may move back after a swap: they are read, not merged
    cached(cache, "alice")
    body = cache.get("alice")
    assert body is not None
    assert json.loads(body)["freshness"]["positions"] == [
        {"partition": 0, "next_offset": 3, "last_event_time": "2025-03-01T10:00:00Z"}]


def test_a_lost_listener_serves_and_keeps_nothing() -> None:
    cache = online_cache()
    cached(cache, "alice")
    ticket = cache.ticket("bob")
    cache.go_offline()
    assert cache.get("alice") is None
    assert not cache.store(ticket, "bob", analytics("bob"))


def test_notices_of_another_schema_or_topic_change_nothing() -> None:
    cache = online_cache()
    cached(cache, "alice")
    assert not cache.apply(notify.parse(notify.flush_notice("focus_shadow_1")))
    assert not cache.apply(notify.parse(notify.batch_notice(
        "focus_shadow_1", TOPIC, [Moved(0, 99, T0)], ["alice"])))
    cache.apply(notify.parse(notify.batch_notice("public", "other.topic", [], ["alice"])))
    assert cache.online
    assert cache.get("alice") is not None


def test_hits_report_the_positions_the_notices_brought_never_going_back() -> None:
    cache = online_cache()
    cached(cache, "alice")
    later = T0 + timedelta(minutes=5)
    cache.apply(changed("bob", positions=(Moved(0, 25, later), Moved(1, 9, T0))))
    # a notice delivered late, of an earlier batch, moves nothing back
    cache.apply(changed("carol", positions=(Moved(0, 20, T0 - timedelta(minutes=1)),)))
    body = cache.get("alice")
    assert body is not None
    fresh = json.loads(body)["freshness"]
    assert fresh["projected_through"] == "2025-03-01T09:05:00Z"
    assert [(p["partition"], p["next_offset"], p["last_event_time"]) for p in fresh["positions"]
            ] == [(0, 25, "2025-03-01T09:05:00Z"), (1, 9, "2025-03-01T09:00:00Z")]


def test_an_entry_lives_at_most_the_ttl() -> None:
    clock = Clock()
    cache = online_cache(ttl=5.0, clock=clock)
    cached(cache, "alice")
    clock.now += 4.9
    assert cache.get("alice") is not None
    clock.now += 0.2
    assert cache.get("alice") is None
    assert len(cache) == 0


def test_a_full_cache_lets_its_oldest_entry_go() -> None:
    cache = online_cache(capacity=2)
    for user in ("alice", "bob", "carol"):
        cached(cache, user)
    assert cache.get("alice") is None
    assert cache.get("bob") is not None
    assert cache.get("carol") is not None


def test_forget_drops_an_entry_and_the_read_in_flight() -> None:
    cache = online_cache()
    cached(cache, "alice")
    ticket = cache.ticket("alice")
    cache.forget("alice")
    assert cache.get("alice") is None
    assert not cache.store(ticket, "alice", analytics("alice"))


@pytest.mark.parametrize(("capacity", "online"), [(0, True), (10, False)],
                         ids=["capacity 0", "never online"])
def test_a_cache_that_is_off_or_not_yet_online_takes_no_tickets(capacity: int,
                                                                 online: bool) -> None:
    cache = AnalyticsCache(capacity, 60.0, topic=TOPIC)
    if online:
        cache.go_online(START)
    assert cache.ticket("alice") is None
    assert not cache.store(None, "alice", analytics("alice"))
    assert len(cache) == 0

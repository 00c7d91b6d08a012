"""The load simulator: reproducible bytes, valid events, and a realistic mix."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime
from functools import cache
from typing import Any

import pytest

from focus_sessions.contracts.codec import decode, encode
from focus_sessions.contracts.events import (
    ENDED_V1,
    ENDED_V2,
    INTERRUPTED_V1,
    STARTED_V1,
    WIRE_TYPES,
)
from focus_sessions.producers.simulate import Profile, Simulation, generate


@cache
def population(ended_v1_share: float = 0.0) -> tuple[tuple[bytes, bytes], ...]:
    # 400 users, 8,000 sessions: large enough for shares to settle, fast enough for unit tests.
    return tuple(generate(400, 8000, seed=2024, profile=Profile(ended_v1_share=ended_v1_share)))


def sessions(pairs: tuple[tuple[bytes, bytes], ...]) -> dict[str, list[dict[str, Any]]]:
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, value in pairs:
        event = json.loads(value)
        by_session[event["subject"]].append(event)
    return by_session


def test_the_same_seed_gives_byte_identical_events_ids_included() -> None:
    first = list(generate(50, 500, seed=7))
    again = list(generate(50, 500, seed=7))
    assert first == again


def test_a_simulation_iterated_twice_gives_the_same_stream() -> None:
    simulation = Simulation(20, 100, seed=3)
    assert list(simulation) == list(simulation)
    assert simulation.sessions_done == 100


def test_another_seed_gives_other_events() -> None:
    first = {value for _, value in generate(50, 500, seed=7)}
    other = {value for _, value in generate(50, 500, seed=8)}
    assert not first & other


def test_every_event_decodes_and_is_exactly_what_the_codec_would_write() -> None:
    pairs = population(0.5)
    for key, value in pairs:
        event = WIRE_TYPES[json.loads(value)["type"]].model_validate_json(value)
        assert encode(event) == value
        assert key == event.data.user_id.encode()  # type: ignore[attr-defined]
        decode(value)  # subject matches session id; v1 ends upcast


def test_event_ids_and_session_ids_are_unique() -> None:
    pairs = population()
    ids = [json.loads(v)["id"] for _, v in pairs]
    assert len(ids) == len(set(ids))
    assert len(sessions(pairs)) == 8000


def test_each_session_starts_once_ends_at_most_once_and_interruptions_fall_inside() -> None:
    for events in sessions(population()).values():
        types = Counter(e["type"] for e in events)
        assert events[0]["type"] == STARTED_V1
        assert types[STARTED_V1] == 1
        assert types[ENDED_V2] <= 1
        started = datetime.fromisoformat(events[0]["data"]["started_at"])
        ended = [datetime.fromisoformat(e["data"]["ended_at"]) for e in events
                 if e["type"] == ENDED_V2]
        for event in events:
            if event["type"] == INTERRUPTED_V1:
                at = datetime.fromisoformat(event["data"]["interrupted_at"])
                assert started < at
                assert not ended or at < ended[0]


def test_each_users_events_are_in_time_order() -> None:
    last: dict[bytes, str] = {}
    for key, value in population():
        at = json.loads(value)["time"]
        assert at >= last.get(key, "")
        last[key] = at


def test_mix_looks_like_real_pomodoro_use() -> None:
    pairs = population()
    events = [json.loads(v) for _, v in pairs]
    starts = [e["data"] for e in events if e["type"] == STARTED_V1]
    ends = [e["data"] for e in events if e["type"] == ENDED_V2]
    planned = Counter(s["duration_minutes"] for s in starts)
    assert set(planned) == {15, 25, 50}
    assert 0.65 < planned[25] / len(starts) < 0.85
    assert min(planned[15], planned[50]) / len(starts) > 0.05
    outcomes = Counter(e["outcome"] for e in ends)
    assert 0.15 < outcomes["abandoned"] / len(starts) < 0.25
    assert 0.005 < outcomes["cancelled"] / len(starts) < 0.04
    assert 0.005 < 1 - len(ends) / len(starts) < 0.04  # some sessions never end
    assert 3.5 < len(events) / len(starts) < 4.5  # about four events per session
    zones = Counter(s["time_zone"] for s in starts)
    assert len(zones) >= 8
    assert zones[None] > 0


def test_users_differ_in_how_often_they_are_interrupted() -> None:
    starts: Counter[bytes] = Counter()
    interruptions: Counter[bytes] = Counter()
    for key, value in population():
        kind = json.loads(value)["type"]
        starts[key] += kind == STARTED_V1
        interruptions[key] += kind == INTERRUPTED_V1
    rates = sorted(interruptions[user] / n for user, n in starts.items() if n >= 10)
    assert rates[len(rates) // 10] * 2 < rates[-len(rates) // 10]  # the spread is real


def test_ended_v1_share_mixes_versions() -> None:
    kinds = Counter(json.loads(v)["type"] for _, v in population(0.5))
    share = kinds[ENDED_V1] / (kinds[ENDED_V1] + kinds[ENDED_V2])
    assert 0.45 < share < 0.55
    assert ENDED_V1 not in Counter(json.loads(v)["type"] for _, v in population())


def test_progress_counters_follow_the_iteration() -> None:
    simulation = Simulation(10, 40, seed=1)
    pairs = list(simulation)
    assert simulation.sessions_done == 40
    assert simulation.events == len(pairs)


@pytest.mark.parametrize(("users", "sessions_"), [(0, 10), (5, -1)])
def test_nonsense_sizes_are_refused(users: int, sessions_: int) -> None:
    with pytest.raises(ValueError, match="at least one user"):
        Simulation(users, sessions_, seed=1)


def test_no_sessions_is_an_empty_stream() -> None:
    assert list(generate(3, 0, seed=1)) == []

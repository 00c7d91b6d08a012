"""The replay's memory decisions, without servers: sizes, how many events a worker holds, and
which interrupted runs may be continued."""

from __future__ import annotations

import pytest

from focus_sessions.consumers.replay import bulk, checkpoint, rss
from focus_sessions.consumers.replay.bulk import BulkSpec, Worker
from focus_sessions.consumers.replay.memory import ShadowState
from focus_sessions.producers import events as ev
from focus_sessions.settings import ProjectorSettings, parse_size
from tests.unit.histories import T0

MiB = 1 << 20


@pytest.mark.parametrize(("text", "size"), [
    ("1GiB", 1 << 30), ("512MiB", 512 * MiB), ("800MB", 800 * 10**6), ("1048576", MiB),
    (" 2 gib ", 2 << 30), ("1.5GiB", 3 << 29), ("1", 1),
])
def test_sizes_are_read_as_people_write_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1 TB", "-1GiB", "GiB"])
def test_a_size_that_is_not_one_is_refused_by_the_setting(text):
    with pytest.raises(ValueError, match="not a size"):
        ProjectorSettings(focus_replay_memory=text)


def test_the_default_budget_is_one_gibibyte():
    assert ProjectorSettings().replay_memory_bytes == 1 << 30


class Pipe:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)


def worker(limit: int, monkeypatch: pytest.MonkeyPatch, base: int = 40 * MiB) -> Worker:
    monkeypatch.setattr(rss, "rss", lambda pid=None: base)
    spec = BulkSpec("kafka:9092", "postgresql://", "t", "focus_shadow", 0, (0,), {0: 10},
                    generation=1, memory_limit=limit)
    return Worker(spec, None, checkpoint.WorkerCheckpoint(0), ShadowState(),  # type: ignore[arg-type]
                  Pipe())


def hold(w: Worker, events: int) -> None:
    for n in range(events):
        start = ev.started(f"user-{n % 7}", T0)
        w.state.add(start, 0, n)  # type: ignore[arg-type]


def test_a_worker_first_holds_what_an_assumed_size_per_event_fills(monkeypatch):
    w = worker(300 * MiB, monkeypatch)
    assert w.cap == int(260 * MiB * bulk.HEADROOM) // bulk.EVENT_BYTES
    assert worker(0, monkeypatch).cap == bulk.MIN_HELD  # no room at all: the floor


def test_over_its_share_a_worker_flushes_early_and_holds_fewer_next_time(monkeypatch):
    w = worker(300 * MiB, monkeypatch)
    hold(w, 5000)
    monkeypatch.setattr(rss, "rss", lambda pid=None: 280 * MiB)
    assert not w._full()  # under its share
    monkeypatch.setattr(rss, "rss", lambda pid=None: 320 * MiB)
    w.checked = 0
    assert w._full()  # over it: flush now
    assert w.cap == 5000
    w._calibrate()  # 5,000 events took 280 MiB: hold ~0.85 x 260/280 of them next time
    assert w.cap == int(5000 * bulk.HEADROOM * 260 / 280)


def test_well_under_its_share_a_worker_holds_more_next_time_by_a_quarter_at_most(monkeypatch):
    w = worker(300 * MiB, monkeypatch)
    w.cap = 4000
    hold(w, 4000)
    monkeypatch.setattr(rss, "rss", lambda pid=None: 60 * MiB)  # 20 MiB for 4,000 events
    w._calibrate()
    assert w.cap == 5000
    monkeypatch.setattr(rss, "rss", lambda pid=None: 250 * MiB)  # between: unchanged
    w._calibrate()
    assert w.cap == 5000


def test_a_run_continues_only_with_its_own_topic_and_users():
    run = checkpoint.Run("t", ["bo", "al"], {0: 5}, [[0]], {}, "bulk", 1)
    assert checkpoint.run_matches(run, "t", frozenset({"al", "bo"})) is None
    assert "topic" in (checkpoint.run_matches(run, "other", frozenset({"al", "bo"})) or "")
    assert "--users al,bo" in (checkpoint.run_matches(run, "t", None) or "")
    everyone = checkpoint.Run("t", None, {0: 5}, [[0]], {}, "bulk", 1)
    assert checkpoint.run_matches(everyone, "t", None) is None
    assert "(all users)" in (checkpoint.run_matches(everyone, "t", frozenset({"al"})) or "")

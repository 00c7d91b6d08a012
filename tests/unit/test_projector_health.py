"""The projector's health verdict: from its heartbeat, never from lag alone (Burrow's STALL and
STOP; Marten's lesson that lag 0 may only mean nobody looked)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from focus_sessions.consumers.health import Heartbeat, Status, judge, judge_all
from focus_sessions.consumers.metrics import ProjectorMetrics
from focus_sessions.telemetry import heartbeats

WINDOW = 60.0
NOW = 1_000_000.0


def test_an_idle_projector_with_no_lag_stays_healthy_however_long_nothing_arrives() -> None:
    # polled a moment ago; last commit an hour ago; nothing to do
    beat = Heartbeat(polled_at=NOW - 0.1, progress_at=NOW - 0.1, lag=0)
    assert judge(beat, NOW, WINDOW).status is Status.OK


def test_a_projector_that_stopped_polling_is_stopped_whatever_its_last_lag() -> None:
    for lag in (0, 5):
        beat = Heartbeat(polled_at=NOW - 61, progress_at=NOW - 61, lag=lag)
        verdict = judge(beat, NOW, WINDOW)
        assert verdict.status is Status.STOP and not verdict.healthy
        assert "no poll for 61.0 s" in verdict.detail


def test_lag_without_a_commit_for_the_window_is_a_stall() -> None:
    # polling (the loop lives) but the batch never commits: PostgreSQL down, retrying
    beat = Heartbeat(polled_at=NOW - 0.5, progress_at=NOW - 61, lag=120)
    verdict = judge(beat, NOW, WINDOW)
    assert verdict.status is Status.STALL
    assert "lag 120" in verdict.detail


def test_lag_that_just_appeared_after_an_idle_hour_is_not_a_stall() -> None:
    # progress is a commit *or a moment without lag*: the idle hour kept it fresh
    beat = Heartbeat(polled_at=NOW - 0.1, progress_at=NOW - 1.0, lag=500)
    assert judge(beat, NOW, WINDOW).healthy


def test_the_window_is_inclusive_up_to_its_length() -> None:
    beat = Heartbeat(polled_at=NOW - WINDOW, progress_at=NOW - WINDOW, lag=1)
    assert judge(beat, NOW, WINDOW).healthy


def test_one_stopped_worker_of_several_makes_the_unit_unhealthy() -> None:
    beats = [Heartbeat(NOW - 0.1, NOW - 0.1, 0, "11"), Heartbeat(NOW - 90, NOW - 90, 0, "12")]
    verdicts = judge_all(beats, NOW, WINDOW, started_at=NOW - 3600)
    assert [(v.worker, v.status) for v in verdicts] == [("11", Status.OK), ("12", Status.STOP)]


def test_no_heartbeat_is_starting_within_the_window_and_stopped_after_it() -> None:
    assert judge_all([], NOW, WINDOW, started_at=NOW - 5)[0].healthy
    late = judge_all([], NOW, WINDOW, started_at=NOW - 61)[0]
    assert late.status is Status.STOP and "no heartbeat" in late.detail


def test_heartbeats_are_read_from_the_projector_gauges_lag_summed_over_partitions() -> None:
    metrics = ProjectorMetrics(CollectorRegistry())
    (beat,) = heartbeats(metrics.registry)  # from the start: not a poll at 1970
    assert beat.polled_at > NOW and beat.lag == 0
    metrics.last_progress.set(NOW - 2)
    metrics.partitions({0: (3, 1.5), 1: (4, 2.0)}, gone=[2], polled_at=NOW - 1,
                       caught_up=False, now=NOW)
    (beat,) = heartbeats(metrics.registry)
    assert (beat.polled_at, beat.progress_at, beat.lag) == (NOW - 1, NOW - 2, 7)
    metrics.partitions({0: (0, 0.0)}, gone=[1], polled_at=NOW, caught_up=True, now=NOW)
    (beat,) = heartbeats(metrics.registry)
    assert (beat.progress_at, beat.lag) == (NOW, 0)  # caught up is progress; revoked reads 0

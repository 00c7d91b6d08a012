"""The pure fold: one session's events -> its row and each event's status."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from focus_sessions.producers import events as ev
from focus_sessions.projections.fold import History, Status, apply, derive, extend
from tests.unit.histories import T0, minutes, pomodoro


def fold(events):
    history = History()
    for event in events:
        history = apply(history, event)
    return derive(history)


def test_start_focus_session_creates_an_open_row_with_the_planned_duration():
    start = ev.started("ada", T0, duration_minutes=50, time_zone="Asia/Tokyo")
    result = fold([start])
    row = result.row
    assert row is not None
    assert (row.user_id, row.started_at, row.duration_minutes) == ("ada", T0, 50)
    assert row.ended_at is None and row.completed is False and row.focus_seconds is None
    assert row.created_at == start.time and row.time_zone == "Asia/Tokyo"
    assert result.status == {start.id.int: Status.APPLIED}


def test_end_focus_session_records_actual_elapsed_time_not_the_plan():
    result = fold(pomodoro(interruptions_at=(), end_at=23.5))
    row = result.row
    assert row is not None
    assert row.ended_at == minutes(23.5) and row.completed is True
    assert row.focus_seconds == Decimal("1410")
    assert row.duration_minutes == 25  # the plan stays as the spec has it


def test_track_interruptions_takes_the_larger_of_events_and_the_timer_count():
    assert fold(pomodoro(interruptions_at=(3, 7, 9), reported=1)).row.interruptions == 3
    assert fold(pomodoro(interruptions_at=(3,), reported=4)).row.interruptions == 4
    assert fold(pomodoro(interruptions_at=(3,), end_at=None)).row.interruptions == 1


def test_end_before_start_is_held_until_start_arrives():
    start, interruption, end = pomodoro()
    held = fold([end, interruption])
    assert held.row is None
    assert set(held.status.values()) == {Status.HELD}
    # ... then the start arrives: everything applies
    applied = fold([end, interruption, start])
    assert applied.row is not None and applied.row.ended_at == minutes(25)
    assert set(applied.status.values()) == {Status.APPLIED}


def test_a_duplicate_event_id_changes_nothing():
    events = pomodoro()
    once = fold(events)
    history, known = extend(History(), events + events[:2])
    assert known == 2
    assert derive(history) == once


def test_earliest_end_wins_and_the_later_is_superseded():
    start, _, end = pomodoro()
    earlier = ev.ended("ada", start.data.session_id, minutes(20), completed=False)
    result = fold([start, end, earlier])
    assert result.row.ended_at == minutes(20) and result.row.completed is False
    assert result.status[end.id.int] is Status.SUPERSEDED
    assert result.status[earlier.id.int] is Status.APPLIED


def test_ends_at_the_same_instant_are_settled_by_the_smaller_event_id():
    start = pomodoro(end_at=None, interruptions_at=())[0]
    sid = start.data.session_id
    a = ev.ended("ada", sid, minutes(25), completed=True, event_id=UUID(int=1))
    b = ev.ended("ada", sid, minutes(25), completed=False, event_id=UUID(int=2))
    for order in ([start, a, b], [b, start, a]):
        result = fold(order)
        assert result.row.end_event_id == a.id and result.row.completed is True


def test_an_end_before_the_start_is_a_contradiction():
    start = pomodoro(end_at=None, interruptions_at=())[0]
    bad = ev.ended("ada", start.data.session_id, minutes(-1))
    result = fold([start, bad])
    assert result.status[bad.id.int] is Status.CONTRADICTION
    assert "before started_at" in result.reasons[bad.id.int]
    assert result.row.ended_at is None


def test_an_interruption_outside_the_session_is_a_contradiction():
    start, _, end = pomodoro()
    late = ev.interrupted("ada", start.data.session_id, minutes(30))
    early = ev.interrupted("ada", start.data.session_id, minutes(-2))
    result = fold([start, end, late, early])
    assert result.status[late.id.int] is Status.CONTRADICTION
    assert result.status[early.id.int] is Status.CONTRADICTION
    assert "outside the session" in result.reasons[late.id.int]
    assert result.row.interruptions == 0


def test_events_of_another_user_for_the_same_session_are_contradictions():
    start = pomodoro(end_at=None, interruptions_at=())[0]
    sid = start.data.session_id
    foreign = [ev.interrupted("eve", sid, minutes(2)), ev.ended("eve", sid, minutes(25))]
    result = fold([start, *foreign])
    assert all(result.status[e.id.int] is Status.CONTRADICTION for e in foreign)
    assert "differs from the start" in result.reasons[foreign[0].id.int]


def test_an_earlier_start_for_the_same_session_supersedes_a_later_one():
    late_start = ev.started("ada", minutes(1))
    sid = late_start.data.session_id
    early_start = ev.started("ada", T0, session_id=sid)
    result = fold([late_start, early_start])
    assert result.row.started_at == T0
    assert result.status[late_start.id.int] is Status.SUPERSEDED

"""Replay's in-memory fold gives exactly what the live projector's batches give (pure)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from focus_sessions.consumers.replay.memory import ShadowState, build
from focus_sessions.contracts.codec import decode, encode
from focus_sessions.producers import events as ev
from focus_sessions.projections.batch import Located, plan
from focus_sessions.projections.fold import derive
from focus_sessions.projections.readmodels import daily, user_totals, weekly
from focus_sessions.projections.readmodels.sessions import event_record, session_record
from tests.support.stream import stream
from tests.unit.histories import T0, minutes


def wire(n: int, seed: int) -> list:
    """A simulated log, decoded as the projector decodes it (v1 ends upcast to v2)."""
    return [decode(encode(e)) for e in stream(n, users=12, seed=seed)]


def live_fold(events: list, cuts: list[int]) -> tuple[dict, dict, dict, dict]:
    """The live projector's path: batches planned against prior histories, deltas summed."""
    histories: dict = {}
    rows: dict = {}
    statuses: dict = {}
    users: dict = {}
    weeks: dict = {}
    days: dict = {}
    bounds = [0, *sorted(cuts), len(events)]
    for lo, hi in itertools.pairwise(bounds):
        batch = [Located(e, 0, lo + i) for i, e in enumerate(events[lo:hi])]
        prior = {e.data.session_id: histories[e.data.session_id] for e in events[lo:hi]
                 if e.data.session_id in histories}
        result = plan(prior, batch)
        for row in result.rows:
            before = prior.get(row.session_id)
            weekly.accumulate(weeks, weekly.delta(derive(before).row if before else None, row))
            rows[row.session_id] = row
        histories.update(result.histories)
        for new in result.new_events:
            statuses[new.located.event.id] = new.status.value
        for _, eid, status in result.status_changes:
            statuses[eid] = status.value
        daily.MODEL.merge(days, result.rollups[daily.MODEL.name])
        for user, d in result.rollups[user_totals.MODEL.name].items():
            total = users.setdefault(user, [0, 0, 0, 0, 0, 0])
            for i, v in enumerate((d.sessions_started, d.sessions_ended, d.sessions_completed,
                                   d.focus_seconds, d.planned_minutes, d.interruptions)):
                total[i] += v
    return rows, statuses, users, weeks, list(daily.MODEL.records(days))


def replay_fold(events: list) -> tuple[dict, dict, dict, dict, list]:
    state = ShadowState()
    for i, e in enumerate(events):
        state.add(e, 0, i)
    out = build(state, event_record, session_record)
    rows = {r[0]: r for r in out.sessions}
    statuses = {r[1]: r[4] for r in out.events}
    users = {r[0]: list(r[1:7]) for r in out.rollups.records(user_totals.MODEL)}
    return (rows, statuses, users, dict(out.rollups.sums[weekly.MODEL.name]),
            list(out.rollups.records(daily.MODEL)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 400), max_size=6),
       shuffle=st.booleans())
def test_replay_fold_equals_the_live_batches_for_any_order_and_batching(seed, cuts, shuffle):
    events = wire(400, seed)
    if shuffle:  # arrival order never matters (guarantee 2), so replay may not depend on it
        random.Random(seed).shuffle(events)
    cuts = [c for c in cuts if c < len(events)]
    live_rows, live_status, live_users, live_weeks, live_days = live_fold(events, cuts)
    rows, statuses, users, weeks, days = replay_fold(events)
    assert len(rows) > 50
    assert rows == live_rows
    assert statuses == live_status
    assert users == live_users
    assert weeks == live_weeks == weekly.rollup(rows.values())
    assert days == live_days == daily.MODEL.expected(rows.values())[daily.USERS.name]


def test_a_duplicate_is_stored_once_where_the_log_first_held_it():
    start = decode(encode(ev.started("ada", T0)))
    state = ShadowState()
    assert state.add(start, 2, 10) is True
    assert state.add(start, 2, 99) is False  # a producer retry, later in the log
    (record,) = build(state, event_record, session_record).events
    assert record[-2:] == (2, 10)
    assert state.duplicates == 1


def test_a_week_starts_on_monday_in_the_users_time_zone():
    sunday_night_utc = datetime(2026, 3, 8, 23, 30, tzinfo=UTC)  # Monday 00:30 in Paris
    paris = derive_row(ev.started("ada", sunday_night_utc, time_zone="Europe/Paris"))
    utc = derive_row(ev.started("ada", sunday_night_utc))
    tokyo = derive_row(ev.started("ada", sunday_night_utc - timedelta(hours=12),
                                  time_zone="Asia/Tokyo"))  # Sunday 20:30 local
    assert weekly.week_start(paris) == date(2026, 3, 9)
    assert weekly.week_start(utc) == date(2026, 3, 2)
    assert weekly.week_start(tokyo) == date(2026, 3, 2)


def test_an_end_that_an_earlier_start_contradicts_leaves_the_week():
    start = ev.started("ada", minutes(30), time_zone="Europe/Paris")
    sid = start.data.session_id
    end = ev.ended("ada", sid, minutes(55))
    earlier = ev.started("ada", minutes(60 * 24 * 7 + 10), session_id=sid)  # a later start...
    before = derive_history([start, end])
    # ... is superseded; an earlier one moves the session (and its end stays valid)
    after = derive_history([start, end, earlier])
    assert after == before
    # 21:00 UTC on Sunday, 22:00 in Paris: the week before, and 12 h 55 min before the end
    moved = derive_history([ev.started("ada", minutes(-60 * 12), session_id=sid), end])
    change = weekly.delta(before, moved)
    assert sum(d.sessions_ended for d in change.values()) == 0
    assert len(change) == 2  # out of one week, into the one before
    wrong = derive_history([ev.started("ada", minutes(70), session_id=sid), end])
    assert weekly.contribution(wrong) is None  # its only end is before its start: not ended
    assert weekly.delta(before, wrong) == {
        ("ada", weekly.week_start(before)): -weekly.contribution(before)[1]}


def derive_row(start):
    return derive_history([start])


def derive_history(events):
    from focus_sessions.projections.fold import History, extend

    return derive(extend(History(), [decode(encode(e)) for e in events])[0]).row


def test_an_event_record_holds_what_rebuilds_the_event_for_either_decoder():
    from focus_sessions.projections import wire as fast
    from focus_sessions.projections.readmodels.sessions import (
        SESSION_EVENT_COLUMNS,
        event_from_record,
    )

    sid = ev.started("ada", T0).data.session_id
    # every value distinct (recorded times later than the facts), so no column can stand in
    # for another
    late = {"time": minutes(60), "source": "urn:test:recorder"}
    for event in (ev.started("ada", T0, session_id=sid, step_id=uuid4(), duration_minutes=40,
                             time_zone="Europe/Paris", **late),
                  ev.interrupted("ada", sid, minutes(3), reason="phone", **late),
                  ev.ended("ada", sid, minutes(25), reported_interruptions=2, focus_quality=4,
                           **late),
                  ev.ended_v1("ada", sid, minutes(26), completed=False, interruptions=1,
                              **late)):
        expected = decode(encode(event))  # the contract's event (a v1 end upcast to v2)
        for decoded in (expected, fast.decode_message(b"ada", encode(event))):
            record = event_record(decoded, "applied", 3, 7)
            columns = dict(zip(SESSION_EVENT_COLUMNS, record, strict=True))
            assert (columns["status"], columns["kafka_partition"], columns["kafka_offset"]) == (
                "applied", 3, 7)
            assert event_from_record(columns) == expected


def test_a_flush_carries_open_sessions_once_and_writes_ended_ones():
    state = ShadowState()
    done = ev.started("ada", T0)
    state.add(done, 0, 0)
    state.add(ev.ended("ada", done.data.session_id, T0 + timedelta(minutes=25)), 0, 1)
    running = ev.started("ada", T0 + timedelta(hours=1))
    state.add(running, 0, 2)
    held = ev.ended("bob", uuid4(), T0)  # an end whose start has not come: open too
    state.add(held, 1, 0)
    carried = state.take_open()
    assert set(carried.sessions) == {running.data.session_id.int, held.data.session_id.int}
    assert list(state.sessions) == [done.data.session_id.int]
    assert carried.held() == 2 and state.held() == 2
    assert carried.events == 0  # counted where they came
    # still open at the next flush: written then, not carried twice
    assert carried.take_open().sessions == {}

"""Batches: any arrival order, any duplicates, any batch boundaries -> the same tables."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from focus_sessions.producers import events as ev
from focus_sessions.projections.batch import Located, Plan, plan
from focus_sessions.projections.fold import History, SessionRow, Status
from focus_sessions.projections.readmodels import user_totals
from tests.unit.histories import minutes, pomodoro


class Store:
    """What the repository keeps, in memory: histories, rows, rollups, statuses."""

    def __init__(self) -> None:
        self.histories: dict = {}
        self.rows: dict = {}
        self.status: dict = {}
        self.rollups: dict = defaultdict(lambda: defaultdict(Decimal))
        self.dead: list = []

    def project(self, events) -> Plan:
        sessions = {e.data.session_id for e in events}
        prior = {s: self.histories[s] for s in sessions if s in self.histories}
        result = plan(prior, [Located(e, 0, i) for i, e in enumerate(events)])
        self.histories.update(result.histories)
        for new in result.new_events:
            key = (new.located.event.data.session_id, new.located.event.id)
            assert key not in self.status, "an event is stored twice"
            self.status[key] = new.status
        for sid, eid, status in result.status_changes:
            self.status[(sid, eid)] = status
        for row in result.rows:
            self.rows[row.session_id] = row
        for user, d in result.rollups[user_totals.MODEL.name].items():
            r = self.rollups[user]
            for name in (
                "sessions_started",
                "sessions_ended",
                "sessions_completed",
                "focus_seconds",
                "planned_minutes",
                "interruptions",
            ):
                r[name] += getattr(d, name)
        self.dead += result.contradictions
        return result


def recompute(rows: list[SessionRow]) -> dict:
    out: dict = defaultdict(lambda: defaultdict(Decimal))
    for row in rows:
        r = out[row.user_id]
        r["sessions_started"] += 1
        r["planned_minutes"] += row.duration_minutes
        r["interruptions"] += row.interruptions
        if row.ended_at is not None:
            r["sessions_ended"] += 1
            r["sessions_completed"] += row.completed
            r["focus_seconds"] += row.focus_seconds
    return out


def as_plain(rollups) -> dict:
    """Rollups as plain dicts; a zero sum and a missing one mean the same."""
    plain = {u: {k: v for k, v in r.items() if v} for u, r in rollups.items()}
    return {u: r for u, r in plain.items() if r}  # a user with nothing left has no rollup


def test_calculate_analytics_rollups_equal_a_recomputation_from_the_rows():
    store = Store()
    store.project(
        pomodoro("ada", end_at=25)
        + pomodoro("ada", end_at=10, completed=False)
        + pomodoro("bob", end_at=None)
    )
    ada = store.rollups["ada"]
    assert ada["sessions_started"] == 2 and ada["sessions_ended"] == 2
    assert ada["sessions_completed"] == 1
    assert ada["focus_seconds"] == Decimal(35 * 60)
    assert as_plain(store.rollups) == as_plain(recompute(list(store.rows.values())))


def test_a_held_end_is_applied_in_a_later_batch_when_its_start_arrives():
    start, interruption, end = pomodoro()
    store = Store()
    first = store.project([end, interruption])
    assert first.rows == [] and {n.status for n in first.new_events} == {Status.HELD}
    second = store.project([start])
    assert {c[2] for c in second.status_changes} == {Status.APPLIED}
    assert store.rows[start.data.session_id].ended_at == end.data.ended_at


def test_a_contradiction_found_later_is_reported_once_without_its_bytes():
    start, end = pomodoro(interruptions_at=())
    store = Store()
    store.project([end])  # held
    from datetime import timedelta

    from focus_sessions.producers import events as ev

    late_start = ev.started(
        "ada", end.data.ended_at + timedelta(minutes=1), session_id=start.data.session_id
    )
    result = store.project([late_start])
    assert [c.event.id for c in result.contradictions] == [end.id]
    assert result.contradictions[0].located is None


sessions = st.lists(
    st.builds(
        pomodoro,
        user=st.sampled_from(["ada", "bob"]),
        interruptions_at=st.lists(st.floats(-3, 30), max_size=3).map(tuple),
        end_at=st.one_of(st.none(), st.floats(-2, 60)),
        completed=st.booleans(),
        reported=st.one_of(st.none(), st.integers(0, 4)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(sessions=sessions, data=st.data())
def test_any_order_any_duplicates_any_batching_gives_identical_rows_and_rollups(sessions, data):
    events = [e for s in sessions for e in s]
    reference = Store()
    reference.project(events)

    # the same events, shuffled, some repeated, cut into random batches
    stream = data.draw(
        st.permutations(events + data.draw(st.lists(st.sampled_from(events), max_size=len(events))))
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    store = Store()
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        store.project(stream[lo:hi])

    assert store.rows == reference.rows
    assert store.status == reference.status
    assert as_plain(store.rollups) == as_plain(reference.rollups)
    assert as_plain(store.rollups) == as_plain(recompute(list(store.rows.values())))


def test_a_session_won_by_another_users_earlier_start_moves_between_their_rollups():
    # ben's start arrives first; cat's earlier start for the same session wins it later
    bens = pomodoro("ben", end_at=25)
    sid = bens[0].data.session_id
    cats = ev.started("cat", minutes(-10), session_id=sid)
    store = Store()
    store.project(bens)
    moved = store.project([cats])
    deltas = moved.rollups[user_totals.MODEL.name]
    assert deltas["ben"].sessions_started == -1 and deltas["ben"].recompute_last
    assert deltas["cat"].sessions_started == 1
    assert as_plain(store.rollups) == as_plain(recompute(list(store.rows.values())))
    assert store.rows[sid].user_id == "cat"


def test_histories_returned_by_a_plan_include_every_touched_session():
    events = pomodoro()
    result = plan({}, [Located(e, 0, i) for i, e in enumerate(events)])
    assert isinstance(result.histories[events[0].data.session_id], History)
    assert len(result.histories[events[0].data.session_id]) == 3

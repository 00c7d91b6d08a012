"""The projector against the real broker and PostgreSQL: the seed's cases and guarantees 1-4."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from focus_sessions.contracts import topics as t
from focus_sessions.migrate import migrate
from focus_sessions.producers import events as ev
from focus_sessions.projections.fold import History, derive, extend
from tests.support.projection import (
    dead_letters,
    publish,
    rollup_mismatches,
    running_projector,
    settings_for,
    wait_caught_up,
)
from tests.unit.histories import T0, minutes


def query(url: str, sql: str, *params):
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


async def test_start_end_interruptions_and_analytics_from_the_rollup(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    ada_1 = ev.started("ada", T0, duration_minutes=25)
    ada_2 = ev.started("ada", minutes(60), duration_minutes=50)
    sid_1, sid_2 = ada_1.data.session_id, ada_2.data.session_id
    async with running_projector(s):
        sent = await publish(kafka_bootstrap, s.focus_events_topic, [
            ada_1,
            ev.interrupted("ada", sid_1, minutes(4), reason="phone"),
            ev.interrupted("ada", sid_1, minutes(9)),
            ev.ended("ada", sid_1, minutes(25), completed=True),      # 25 min, completed
            ada_2,
            ev.ended_v1("ada", sid_2, minutes(90), completed=False),  # 30 min, abandoned (v1)
            ev.started("ada", minutes(200)),                          # still running
        ])
        await wait_caught_up(fresh_database, fresh_topics, sent)

    rows = query(fresh_database, "SELECT session_id, ended_at IS NOT NULL, completed,"
                 " interruptions, duration_minutes FROM focus_sessions WHERE session_id"
                 " = ANY(%s) ORDER BY started_at", [sid_1, sid_2])
    assert rows == [(sid_1, True, True, 2, 25), (sid_2, True, False, 0, 50)]
    (stats,) = query(fresh_database, "SELECT sessions_started, sessions_ended,"
                     " sessions_completed, total_focus_seconds, total_interruptions"
                     " FROM focus_user_stats WHERE user_id = 'ada'")
    assert stats == (3, 2, 1, Decimal(55 * 60), 2)
    # the seed's analytics, from the rollup: average 27.5 min, completion 50 %, total 55 min
    avg_minutes = stats[3] / stats[1] / 60
    assert (avg_minutes, stats[2] / stats[1]) == (Decimal("27.5"), 0.5)
    assert rollup_mismatches(fresh_database) == []


async def test_one_event_delivered_three_times_counts_once(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    start = ev.started("bob", T0)
    sid = start.data.session_id
    interruption = ev.interrupted("bob", sid, minutes(3))
    async with running_projector(s):
        # right away, and again after the session ended
        sent = await publish(kafka_bootstrap, s.focus_events_topic,
                             [start, interruption, interruption, ev.ended("bob", sid, minutes(25))])
        sent += await publish(kafka_bootstrap, s.focus_events_topic, [interruption])
        await wait_caught_up(fresh_database, fresh_topics, sent)
    # ... and once more after the projector restarted
    sent += await publish(kafka_bootstrap, s.focus_events_topic, [interruption, start])
    async with running_projector(s) as projector:
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
        assert projector.stats.duplicates == 2
    assert query(fresh_database, "SELECT interruptions FROM focus_sessions") == [(1,)]
    assert query(fresh_database, "SELECT sessions_started, total_interruptions"
                 " FROM focus_user_stats") == [(1, 1)]
    assert query(fresh_database, "SELECT count(*) FROM session_events") == [(3,)]


async def test_an_end_that_arrives_before_its_start_is_held_then_applied(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    start = ev.started("cy", T0)
    end = ev.ended("cy", start.data.session_id, minutes(25))
    async with running_projector(s):
        sent = await publish(kafka_bootstrap, s.focus_events_topic, [end])
        await wait_caught_up(fresh_database, fresh_topics, sent)
        assert query(fresh_database, "SELECT status FROM session_events") == [("held",)]
        assert query(fresh_database, "SELECT count(*) FROM focus_sessions") == [(0,)]
        sent += await publish(kafka_bootstrap, s.focus_events_topic, [start])
        await wait_caught_up(fresh_database, fresh_topics, sent)
    assert query(fresh_database, "SELECT ended_at FROM focus_sessions") == [(minutes(25),)]
    assert query(fresh_database, "SELECT DISTINCT status FROM session_events") == [("applied",)]


async def test_a_session_row_the_stored_events_do_not_explain_is_overwritten_not_a_crash(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # New sessions' rows are COPYed in; a row put there by hand makes that COPY fail. The
    # batch is then applied again with upserts, and the row becomes the events' row.
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    start = ev.started("dee", T0, duration_minutes=30)
    sid = start.data.session_id
    migrate(fresh_database)
    with psycopg.connect(fresh_database) as conn:
        conn.execute("INSERT INTO focus_sessions (session_id, user_id, started_at,"
                     " duration_minutes, start_event_id) VALUES (%s, 'dee', %s, 90, %s)",
                     (sid, minutes(-60), uuid4()))
    async with running_projector(s) as projector:
        sent = await publish(kafka_bootstrap, s.focus_events_topic,
                             [start, ev.ended("dee", sid, minutes(30))])
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
        assert projector.stats.batches >= 1
    assert query(fresh_database, "SELECT started_at, duration_minutes, ended_at,"
                 " start_event_id FROM focus_sessions") == [
        (T0, 30, minutes(30), start.id)]
    assert query(fresh_database, "SELECT count(*) FROM session_events") == [(2,)]


async def test_poison_goes_to_the_dead_letter_topic_and_the_stream_moves_on(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    start = ev.started("dee", T0)
    invalid = ev.started("dee", T0).model_dump(mode="json")
    invalid["data"]["duration_minutes"] = 500
    unknown = {**ev.started("dee", T0).model_dump(mode="json"), "type": "focus.session.paused.v1"}
    import json

    after = ev.started("dee", minutes(30))
    async with running_projector(s) as projector:
        sent = await publish(kafka_bootstrap, s.focus_events_topic, [
            start,
            (b"dee", b"{not json"),
            (b"dee", json.dumps(unknown).encode()),
            (b"dee", json.dumps(invalid).encode()),
            ev.ended("dee", start.data.session_id, minutes(-5)),  # ends before it started
            after,
        ])
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
        assert projector.stats.dead_letters == 4
    letters = await dead_letters(kafka_bootstrap, s.focus_dlq_topic, expected=4)
    reasons = [dict(r.headers)[t.DLQ_REASON].decode() for r in letters]
    assert reasons == ["malformed-json", "unknown-type", "invalid", "contradiction"]
    details = [dict(r.headers)[t.DLQ_DETAIL].decode() for r in letters]
    assert "focus.session.paused.v1" in details[1]
    assert details[2].startswith("data.duration_minutes")
    assert "before started_at" in details[3]
    assert letters[0].value == b"{not json"
    assert dict(letters[0].headers)[t.DLQ_ORIGINAL_SIZE] == b"9"  # the bytes travel once
    # the events after the poison were projected
    assert query(fresh_database, "SELECT count(*) FROM focus_sessions") == [(2,)]
    assert query(fresh_database, "SELECT status FROM session_events WHERE kind = 'ended'") == [
        ("contradiction",)]


async def test_a_message_keyed_by_another_user_is_refused(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    from focus_sessions.contracts.codec import encode

    async with running_projector(s):
        sent = await publish(kafka_bootstrap, s.focus_events_topic,
                             [(b"mallory", encode(ev.started("eve", T0)))])
        await wait_caught_up(fresh_database, fresh_topics, sent)
    (letter,) = await dead_letters(kafka_bootstrap, s.focus_dlq_topic, expected=1)
    assert dict(letter.headers)[t.DLQ_REASON] == b"key-mismatch"
    assert query(fresh_database, "SELECT count(*) FROM focus_sessions") == [(0,)]


def _session(user: str, interruptions: list[float], end: float | None, completed: bool):
    start = ev.started(user, T0)
    sid = start.data.session_id
    events = [start] + [ev.interrupted(user, sid, minutes(m)) for m in interruptions]
    if end is not None:
        events.append(ev.ended(user, sid, minutes(end), completed=completed))
    return events


histories = st.lists(
    st.tuples(st.lists(st.floats(-2, 40), max_size=3), st.one_of(st.none(), st.floats(-1, 50)),
              st.booleans()),
    min_size=1, max_size=3,
)


async def test_any_arrival_order_with_duplicates_converges_on_the_real_stack(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # One projector, tiny batches, many hypothesis examples: each example uses a fresh user,
    # publishes a permutation of its sessions' events with duplicates, and compares the
    # projected rows with the pure fold of the same set of events.
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics, focus_batch_max_records=3)
    async with running_projector(s):

        @settings(max_examples=12, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(shape=histories, data=st.data())
        def check(shape, data):
            user = f"u-{uuid4().hex[:12]}"
            sessions = [_session(user, *spec) for spec in shape]
            events = [e for s_ in sessions for e in s_]
            extra = data.draw(st.lists(st.sampled_from(events), max_size=len(events)))
            stream = data.draw(st.permutations(events + extra))
            sent = loop.run_until_complete(publish(kafka_bootstrap, s.focus_events_topic, stream))
            loop.run_until_complete(wait_caught_up(fresh_database, fresh_topics, sent))
            expected = sorted(
                (r for r in (derive(extend(History(), x)[0]).row for x in sessions) if r),
                key=lambda r: r.session_id,
            )
            got = query(fresh_database, "SELECT * FROM focus_sessions WHERE user_id = %s"
                        " ORDER BY session_id", user)
            assert [tuple(r) for r in expected] == [tuple(g) for g in got]

        import asyncio

        loop = asyncio.new_event_loop()
        try:
            await asyncio.to_thread(check)
        finally:
            loop.close()
    assert rollup_mismatches(fresh_database) == []


async def test_a_step_id_owned_by_another_service_is_kept_without_a_foreign_key(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # micro_steps lives in another service's database: the step may not exist here (or not
    # yet), and the projection must still record the fact rather than fail or drop it.
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    step = uuid4()
    async with running_projector(s):
        sent = await publish(kafka_bootstrap, s.focus_events_topic,
                             [ev.started("fay", T0, step_id=step)])
        await wait_caught_up(fresh_database, fresh_topics, sent)
    assert query(fresh_database, "SELECT step_id FROM focus_sessions") == [(step,)]
    assert query(fresh_database, "SELECT count(*) FROM information_schema.table_constraints"
                 " WHERE table_name = 'focus_sessions' AND constraint_type = 'FOREIGN KEY'"
                 ) == [(0,)]
    # the seed's index on step_id is still there for joins on the analytics side
    assert query(fresh_database, "SELECT indexname FROM pg_indexes WHERE tablename ="
                 " 'focus_sessions' AND indexname = 'idx_focus_step'") == [("idx_focus_step",)]

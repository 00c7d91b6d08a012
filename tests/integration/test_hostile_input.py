"""Guarantee 4 against the real broker and PostgreSQL: no input stops the projector.

Each reproduction of issue 16 ends as a row or a dead letter with a reason, and the events after
it, on its partition and on others, are projected. The property test at the end throws generated
hostile records at one projector, then replays the same log and compares.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID, uuid4, uuid5

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from focus_sessions.consumers.replay.follow import ReplayOptions
from focus_sessions.consumers.replay.replayer import Replayer
from focus_sessions.contracts import topics as t
from focus_sessions.contracts.events import WIRE_TYPES, CloudEvent
from focus_sessions.contracts.schema import event_schema
from focus_sessions.migrate import migrate
from focus_sessions.producers import events as ev
from focus_sessions.projections.verify import verify
from tests.support.projection import (
    dead_letters,
    positions,
    publish,
    rollup_mismatches,
    running_projector,
    settings_for,
    snapshot,
    wait_caught_up,
)
from tests.unit.histories import T0, minutes


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def raw(event: CloudEvent, *, key: str | None = None, **changes: Any) -> tuple[bytes, bytes]:
    """``event`` as JSON with some fields replaced (``data__reason=...`` for a data field)."""
    body = event.model_dump(mode="json")
    for name, value in changes.items():
        if name.startswith("data__"):
            body["data"][name.removeprefix("data__")] = value
        else:
            body[name] = value
    user = key if key is not None else body["data"]["user_id"]
    return user.encode(), json.dumps(body).encode()


def reasons(letters: list[Any]) -> list[str]:
    return [dict(r.headers)[t.DLQ_REASON].decode() for r in letters]


def sentinels(n: int = 6) -> list[CloudEvent]:
    """Valid starts of fresh users: with six users, most partitions get one."""
    return [ev.started(f"sentinel-{uuid4().hex[:10]}", T0) for _ in range(n)]


def projected(url: str, events: list[CloudEvent]) -> set[Any]:
    ids = [e.data.session_id for e in events]  # type: ignore[attr-defined]
    return {sid for (sid,) in query(url, "SELECT session_id FROM focus_sessions"
                                         " WHERE session_id = ANY(%s)", ids)}


async def test_a_nul_character_in_a_reason_or_a_source_is_a_dead_letter_not_a_crash(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    start = ev.started("ada", T0)
    sid = start.data.session_id
    after = sentinels()
    async with running_projector(s):
        sent = await publish(kafka_bootstrap, s.focus_events_topic, [
            start,
            raw(ev.interrupted("ada", sid, minutes(3)), data__reason="a\u0000b"),
            raw(ev.interrupted("ada", sid, minutes(4)), source="urn:x\u0000"),
            ev.interrupted("ada", sid, minutes(5), reason="fine"),
            *after,
        ])
        await wait_caught_up(fresh_database, fresh_topics, sent)
    letters = await dead_letters(kafka_bootstrap, s.focus_dlq_topic, expected=2)
    assert reasons(letters) == ["invalid", "invalid"]
    details = [dict(r.headers)[t.DLQ_DETAIL].decode() for r in letters]
    assert details[0].startswith("data.reason") and "NUL" in details[0]
    assert details[1].startswith("source") and "NUL" in details[1]
    assert query(fresh_database, "SELECT interruptions FROM focus_sessions WHERE session_id"
                 " = %s", sid) == [(1,)]
    assert projected(fresh_database, after) == {e.data.session_id for e in after}


async def test_times_the_schema_cannot_hold_or_a_timer_cannot_mean_are_refused(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    start = ev.started("bea", T0)
    sid = start.data.session_id
    after = sentinels()
    async with running_projector(s):
        sent = await publish(kafka_bootstrap, s.focus_events_topic, [
            start,
            # once accepted and counted; the session's next end then crashed the history load
            raw(ev.interrupted("bea", sid, minutes(3)),
                data__interrupted_at="9999-12-31T23:59:59-14:00"),
            raw(ev.interrupted("bea", sid, minutes(3)), time="0001-01-01T00:00:00+23:59"),
            # 74 years long: once a NumericValueOutOfRange on focus_seconds
            raw(ev.ended("bea", sid, minutes(25)), data__ended_at="2100-01-01T00:00:00Z"),
            ev.interrupted("bea", sid, minutes(25 * 60)),  # 25 h after the start
            ev.ended("bea", sid, minutes(30)),
            *after,
        ])
        await wait_caught_up(fresh_database, fresh_topics, sent)
    letters = await dead_letters(kafka_bootstrap, s.focus_dlq_topic, expected=4)
    assert reasons(letters) == ["invalid", "invalid", "contradiction", "contradiction"]
    details = [dict(r.headers)[t.DLQ_DETAIL].decode() for r in letters]
    assert details[0].startswith("data.interrupted_at") and "2200-01-01" in details[0]
    assert details[1].startswith("time")
    assert "more than 24 h after started_at" in details[2]
    assert "outside the session" in details[3]
    assert query(fresh_database, "SELECT ended_at, interruptions, focus_seconds FROM"
                 " focus_sessions WHERE session_id = %s", sid) == [(minutes(30), 0, 1800)]
    assert projected(fresh_database, after) == {e.data.session_id for e in after}
    assert rollup_mismatches(fresh_database) == []


async def test_a_record_too_big_for_a_dead_letter_travels_as_its_digest_once(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # a ~600 KB value once made a letter over the producer's 1 MB (value + a header copy):
    # retried forever, every partition waiting, the batch's other letters re-sent each time
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    big = json.dumps({"type": "focus.session.started.v1", "padding": "x" * 600_000}).encode()
    after = sentinels()
    async with running_projector(s) as projector:
        sent = await publish(kafka_bootstrap, s.focus_events_topic, [
            (b"cy", b"{not json"), (b"cy", big), (b"cy", b"[1, 2"), *after])
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
        assert projector.stats.retries == 0
    letters = await dead_letters(kafka_bootstrap, s.focus_dlq_topic, expected=4, timeout=5)
    assert len(letters) == 3  # each once
    big_letter = letters[1]
    headers = dict(big_letter.headers)
    assert big_letter.value == b"" and headers[t.DLQ_OMITTED] == b"value"
    assert headers[t.DLQ_ORIGINAL_SIZE] == str(len(big)).encode()
    assert [r.value for r in (letters[0], letters[2])] == [b"{not json", b"[1, 2"]
    assert projected(fresh_database, after) == {e.data.session_id for e in after}


async def test_one_event_id_in_two_sessions_or_two_facts_is_settled_by_content(
    kafka_bootstrap, fresh_database, fresh_topics
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    shared = uuid4()
    one = ev.started("dan", T0, event_id=shared)
    two = ev.started("dan", minutes(60), event_id=shared)  # another session, same id
    sid = one.data.session_id
    first = ev.interrupted("dan", sid, minutes(3))
    same_fact = first.model_copy(update={"time": minutes(9)})  # a resend, envelope differs
    other_fact = ev.interrupted("dan", sid, minutes(7), event_id=first.id)
    async with running_projector(s) as projector:
        # one batch: this once raised UniqueViolation on session_events_pkey, and the
        # projector exited
        sent = await publish(kafka_bootstrap, s.focus_events_topic,
                             [one, two, first, same_fact, other_fact])
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
        assert projector.stats.duplicates == 1
        later = ev.interrupted("dan", sid, minutes(8), event_id=first.id)  # next batch
        sent += await publish(kafka_bootstrap, s.focus_events_topic, [later])
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
    letters = await dead_letters(kafka_bootstrap, s.focus_dlq_topic, expected=2)
    assert reasons(letters) == ["contradiction", "contradiction"]
    assert "already names another interrupted event" in dict(letters[0].headers)[
        t.DLQ_DETAIL].decode()
    assert [json.loads(r.value)["data"]["interrupted_at"] for r in letters] == [
        "2026-03-02T09:07:00Z", "2026-03-02T09:08:00Z"]
    assert query(fresh_database, "SELECT session_id, interruptions FROM focus_sessions"
                 " ORDER BY started_at") == [(sid, 1), (two.data.session_id, 0)]
    assert query(fresh_database, "SELECT count(*) FROM session_events") == [(3,)]
    # both sessions count; verify points the reused id out to the operator
    async with await psycopg.AsyncConnection.connect(fresh_database) as conn:
        report = await verify(conn, topic=fresh_topics.events)
    assert report.ok and report.reused_ids == 1
    assert report.reused_examples == [
        f"event {shared} in sessions {', '.join(sorted(map(str, (sid, two.data.session_id))))}"]


async def test_a_session_an_earlier_start_of_another_user_wins_moves_between_rollups(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # found by the property test below: the rollup delta was booked to the new owner only
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    bens = ev.started("ben", minutes(10))
    sid = bens.data.session_id
    async with running_projector(s):
        sent = await publish(kafka_bootstrap, s.focus_events_topic,
                             [bens, ev.ended("ben", sid, minutes(35))])
        await wait_caught_up(fresh_database, fresh_topics, sent)
        sent += await publish(kafka_bootstrap, s.focus_events_topic,
                              [ev.started("cat", T0, session_id=sid)])
        await wait_caught_up(fresh_database, fresh_topics, sent)
    assert query(fresh_database, "SELECT user_id FROM focus_sessions WHERE session_id = %s",
                 sid) == [("cat",)]
    assert rollup_mismatches(fresh_database) == []
    # ben's end now contradicts cat's start; ben has no session left, so no rollup (as replay)
    assert query(fresh_database, "SELECT user_id, sessions_started, sessions_ended FROM"
                 " focus_user_stats ORDER BY user_id") == [("cat", 1, 0)]


async def test_an_event_postgresql_refuses_is_isolated_recorded_and_skipped_by_replay(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # Whatever validation misses: here a constraint added by hand stands for any data error
    # the contract did not foresee. The batch is bisected down to the one event.
    migrate(fresh_database)
    with psycopg.connect(fresh_database) as conn:
        conn.execute("ALTER TABLE session_events ADD CONSTRAINT no_forbidden"
                     " CHECK (reason IS DISTINCT FROM 'forbidden')")
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics)
    starts = [ev.started(f"eve-{n}", T0) for n in range(40)]
    bad = ev.interrupted("eve-7", starts[7].data.session_id, minutes(2), reason="forbidden")
    ends = [ev.ended(e.data.user_id, e.data.session_id, minutes(25)) for e in starts]
    after = sentinels()
    async with running_projector(s) as projector:
        sent = await publish(kafka_bootstrap, s.focus_events_topic,
                             [*starts, bad, *ends, *after])
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
        assert projector.stats.unstorable == 1
        assert projector.stats.retries == 0
    (letter,) = await dead_letters(kafka_bootstrap, s.focus_dlq_topic, expected=1)
    headers = dict(letter.headers)
    assert headers[t.DLQ_REASON] == b"unstorable"
    assert b"CheckViolation" in headers[t.DLQ_DETAIL] and b"no_forbidden" in headers[t.DLQ_DETAIL]
    assert json.loads(letter.value)["id"] == str(bad.id)
    ledger = query(fresh_database, "SELECT event_id, session_id FROM unstorable_events")
    assert ledger == [(bad.id, starts[7].data.session_id)]
    assert query(fresh_database, "SELECT count(*), sum(interruptions) FROM focus_sessions"
                 " WHERE ended_at IS NOT NULL") == [(40, 0)]
    assert projected(fresh_database, after) == {e.data.session_id for e in after}

    # the replay's shadow tables lack the hand-made constraint: only the record of what the
    # live projector skipped makes it skip the same event
    live = snapshot(fresh_database)
    replayer = Replayer(ReplayOptions(kafka_bootstrap, fresh_database, fresh_topics.events,
                                      workers=2), migrate)
    report = await replayer.run()
    assert report.swapped and report.dead_letters == 1
    assert snapshot(fresh_database) == live
    assert query(fresh_database, "SELECT event_id FROM unstorable_events") == [(bad.id,)]


# -- generated hostile input --------------------------------------------------------------

#: Event ids are derived from the user and a small number, so a user's records reuse a few.
ID_SPACE = UUID("9b3f7c1e-0d2a-4c57-8e61-3a5b9d0f2c48")
EDGE_TIMES = [
    "1969-12-31T23:59:59.999999Z", "1970-01-01T00:00:00Z", "1970-01-01T00:30:00+01:00",
    "2199-12-31T23:59:59.999999Z", "2200-01-01T00:00:00Z", "2199-12-31T23:00:00-14:00",
    "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59.9999999Z",
    "2026-03-02T09:00:00.123456789+05:30", "2026-03-02T09:10:00Z", "2026-03-03T09:00:01Z",
    "2026-03-02T09:00:00", "not a time", "",
]
VALID_TIMES = ["1970-01-01T00:00:00Z", "2199-12-31T23:59:59.999999Z", "2026-03-02T09:00:00Z",
               "2026-03-02T09:10:00+01:00", "2026-03-02T09:20:00.5Z", "2026-03-03T09:00:01Z"]
TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\u0000", "a\u0000b", "\ud800", "\udfff x", "é😀", "\u001b[31m", "x" * 501,
                     "y" * 300_000]),
)
NUMBERS = st.one_of(st.integers(), st.sampled_from(
    [5, 25, 90, 4, 91, -1, 2**31, 2**63, 10**30, 1e308, 0.5, "25", None, True]))
JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)


def edge_values(schema: dict[str, Any], sessions: list[str]) -> st.SearchStrategy[Any]:
    """Values for one property of a published JSON Schema: mostly valid ones (at its bounds
    too), sometimes one past a bound it states (lengths, ranges, patterns, formats,
    constants) or hostile text."""
    valid, invalid = valid_values(schema, sessions), invalid_values(schema, sessions)
    return st.integers(0, 19).flatmap(lambda n: invalid if n == 0 else valid)


def valid_values(schema: dict[str, Any], sessions: list[str]) -> st.SearchStrategy[Any]:
    if "anyOf" in schema:
        return st.one_of(*(valid_values(s, sessions) for s in schema["anyOf"]))
    kind, fmt = schema.get("type"), schema.get("format")
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum", 0), schema.get("maximum", 10_000))
    if fmt == "uuid":
        return st.sampled_from(sessions)
    if fmt == "date-time":
        return st.sampled_from(VALID_TIMES)
    if schema.get("pattern", "").startswith("^[A-Za-z"):  # the user id
        return st.sampled_from(["ann", "ben", "cat", "u" * schema["maxLength"]])
    if schema.get("maxLength") == 64:  # the time zone
        return st.sampled_from(["Europe/Paris", "UTC", "Asia/Kolkata"])
    return st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                   min_size=schema.get("minLength", 0),
                   max_size=min(schema.get("maxLength", 40), 40))


def invalid_values(schema: dict[str, Any], sessions: list[str]) -> st.SearchStrategy[Any]:
    if "anyOf" in schema:
        return st.one_of(*(invalid_values(s, sessions) for s in schema["anyOf"]
                           if s.get("type") != "null"))
    kind, fmt = schema.get("type"), schema.get("format")
    if "const" in schema or "enum" in schema:
        return st.sampled_from(["other", 1, None])
    if kind == "boolean":
        return st.sampled_from([0, "true", None])
    if kind == "integer":
        lo, hi = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63)
        return st.sampled_from([lo - 1, hi + 1, 2**31, 2**63, -(2**63) - 1, 10**30, 1e308, 0.5,
                                str(lo), None])
    if fmt == "uuid":
        return st.sampled_from(["0" * 36, "not-a-uuid", "\u0000", 42])
    if fmt == "date-time":
        return st.sampled_from(EDGE_TIMES)
    return st.one_of(TEXTS, st.just("z" * (schema.get("maxLength", 40) + 1)), st.just(None))


@st.composite
def hostile_event(draw: st.DrawFn, sessions: list[str]) -> tuple[bytes, bytes]:
    """An event drawn from one published JSON Schema
    (:func:`focus_sessions.contracts.schema.event_schema`),
    each property valid or at or past one of the bounds the schema states.

    Event ids are reused within a user's records only: a user's records share a partition,
    so which of two facts under one id came first is the log's order, the same live and on
    replay (two users' records under one id and session may be settled differently by a
    replay, which reads partitions in parallel: docs/replay.md)."""
    wire = draw(st.sampled_from(sorted(WIRE_TYPES)))
    envelope = event_schema(wire)
    (data_schema,) = envelope["$defs"].values()
    data: dict[str, Any] = {}
    for name, prop in data_schema["properties"].items():
        if name in data_schema["required"] or draw(st.booleans()):
            data[name] = draw(edge_values(prop, sessions))
    if draw(st.integers(0, 9)) == 0:
        data["extra"] = draw(JSON)  # additionalProperties: false
    if draw(st.integers(0, 19)) == 0:
        data = {"deep": json.loads("[" * 300 + "]" * 300)}
    body: dict[str, Any] = {}
    for name, prop in envelope["properties"].items():
        if name != "data" and (name in envelope["required"] or draw(st.booleans())):
            body[name] = draw(edge_values(prop, sessions))
    body["type"] = wire if draw(st.integers(0, 9)) else body.get("type")
    body["subject"] = data.get("session_id") if draw(st.integers(0, 9)) else body.get("subject")
    user = data.get("user_id") if isinstance(data.get("user_id"), str) else "ann"
    if draw(st.booleans()):  # one of the user's few ids: duplicates, same or other content
        body["id"] = str(uuid5(ID_SPACE, f"{user!r}\n{draw(st.integers(0, 3))}"))
    elif draw(st.integers(0, 9)):  # any other id, still the user's own: hypothesis repeats
        body["id"] = str(uuid5(ID_SPACE, f"{user!r}\n{draw(st.uuids())}"))  # values it drew
    elif body.get("id") in sessions:  # a valid edge value is one of the shared session ids
        body["id"] = str(uuid5(ID_SPACE, f"{user!r}\n{body['id']}"))
    body["data"] = data
    key = user if draw(st.integers(0, 9)) else "other"  # "other": a key-mismatch
    return key.encode("utf-8", "surrogatepass"), json.dumps(body).encode()


def records(sessions: list[str]) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    record = st.one_of(
        hostile_event(sessions),
        st.tuples(st.binary(max_size=8), st.binary(max_size=300)),
        st.tuples(st.just(b"ann"), JSON.map(lambda v: json.dumps(v).encode())),
    )
    return st.lists(record, min_size=1, max_size=8)


async def test_generated_hostile_records_never_stop_the_projector_and_replay_agrees(
    kafka_bootstrap, fresh_database, fresh_topics
):
    # One projector, small batches, many examples: each publishes generated records, then
    # valid sentinels, which must be projected. Afterwards every record is accounted for (a
    # row of session_events, a dead letter, or a counted duplicate) and a replay of the whole
    # log equals the live tables.
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics, focus_batch_max_records=7)
    sessions = [str(uuid4()) for _ in range(5)]
    published: list[tuple[int, int]] = []
    async with running_projector(s) as projector:

        @settings(max_examples=50, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(batch=records(sessions))
        def check(batch: list[tuple[bytes, bytes]]) -> None:
            marks = sentinels()
            sent = loop.run_until_complete(
                publish(kafka_bootstrap, s.focus_events_topic, [*batch, *marks]))
            published.extend(sent)
            loop.run_until_complete(wait_caught_up(fresh_database, fresh_topics, sent))
            assert projected(fresh_database, marks) == {e.data.session_id for e in marks}

        loop = asyncio.new_event_loop()
        try:
            await asyncio.to_thread(check)
        finally:
            loop.close()
        await wait_caught_up(fresh_database, fresh_topics, published, projector=projector)
        duplicates = projector.stats.duplicates
        lettered = projector.stats.dead_letters

    stored = set(query(fresh_database, "SELECT kafka_partition, kafka_offset FROM session_events"))
    letters = await dead_letters(kafka_bootstrap, s.focus_dlq_topic, expected=lettered)
    origins = {(int(h[t.DLQ_ORIGINAL_PARTITION]), int(h[t.DLQ_ORIGINAL_OFFSET]))
               for h in (dict(r.headers) for r in letters)}
    assert len(set(published) - stored - origins) == duplicates
    # the generated records reached both ends: rows (not only the sentinels') and letters
    assert query(fresh_database, "SELECT count(*) > 0 FROM session_events"
                 " WHERE user_id NOT LIKE %s", "sentinel-%") == [(True,)]
    assert len(origins) >= 25
    ends = {p: max(o for q, o in published if q == p) + 1 for p, _ in published}
    stored_positions = positions(fresh_database, fresh_topics.events)
    assert {p: stored_positions[p] for p in ends} == ends
    assert rollup_mismatches(fresh_database) == []

    live = snapshot(fresh_database)
    report = await Replayer(ReplayOptions(kafka_bootstrap, fresh_database, fresh_topics.events,
                                          workers=2), migrate).run()
    assert report.swapped
    assert snapshot(fresh_database) == live

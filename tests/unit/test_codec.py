"""Decoding at the edge: valid bytes become the newest event shape; bad bytes say why."""

from __future__ import annotations

import hashlib
import json
import random
from uuid import UUID

import pytest

from focus_sessions.consumers.backoff import Backoff
from focus_sessions.consumers.dlq import contradiction_letter, dead_letter
from focus_sessions.contracts import topics
from focus_sessions.contracts.codec import PoisonEvent, decode, encode
from focus_sessions.contracts.events import ENDED_V2, EndedEvent, StartedEvent
from focus_sessions.producers import events as ev
from focus_sessions.projections.batch import Contradiction, Located
from tests.unit.histories import T0, minutes


def test_a_started_event_round_trips_through_bytes():
    start = ev.started("ada", T0, duration_minutes=50, time_zone="Europe/Berlin")
    assert decode(encode(start)) == start


def test_ended_v1_is_upcast_to_v2_keeping_its_id_and_meaning():
    start = ev.started("ada", T0)
    old = ev.ended_v1("ada", start.data.session_id, minutes(25), completed=False, interruptions=2)
    new = decode(encode(old))
    assert isinstance(new, EndedEvent) and new.type == ENDED_V2
    assert new.id == old.id
    assert (new.data.outcome, new.data.reported_interruptions) == ("abandoned", 2)
    assert new.data.completed is False and new.data.focus_quality is None


@pytest.mark.parametrize(
    ("raw", "reason", "says"),
    [
        (b"{not json", "malformed-json", "Invalid JSON"),
        (b"", "empty", "no value"),
        (None, "empty", "no value"),
        (b"[1, 2]", "not-an-event", "CloudEvents"),
        (b'{"specversion": "1.0"}', "not-an-event", "'type'"),
        (b'{"type": "focus.session.paused.v1"}', "unknown-type", "focus.session.paused.v1"),
        (b'{"type": "focus.session.started.v9"}', "unknown-type", "is not one of"),
    ],
)
def test_undecodable_bytes_are_poison_with_a_reason(raw, reason, says):
    with pytest.raises(PoisonEvent) as caught:
        decode(raw)
    assert caught.value.reason == reason
    assert says in caught.value.detail


def _mutated(**data_changes) -> bytes:
    body = json.loads(encode(ev.started("ada", T0)))
    body["data"].update(data_changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"duration_minutes": 4}, "data.duration_minutes"),
        ({"duration_minutes": 91}, "data.duration_minutes"),
        ({"user_id": ""}, "data.user_id"),
        ({"user_id": "x" * 256}, "data.user_id"),
        ({"user_id": "has space"}, "data.user_id"),
        ({"started_at": "2026-03-02T09:00:00"}, "data.started_at"),  # no time zone
        ({"session_id": "not-a-uuid"}, "data.session_id"),
        ({"time_zone": "Mars/Olympus"}, "data.time_zone"),
    ],
)
def test_invalid_fields_are_poison_naming_the_field(change, field):
    with pytest.raises(PoisonEvent) as caught:
        decode(_mutated(**change))
    assert caught.value.reason == "invalid"
    assert caught.value.detail.startswith(field)


def test_subject_must_name_the_session():
    body = json.loads(encode(ev.started("ada", T0)))
    body["subject"] = "something-else"
    with pytest.raises(PoisonEvent, match="subject"):
        decode(json.dumps(body).encode())


@pytest.mark.parametrize("spelling", [
    str.upper,  # the same UUID, upper case
    lambda s: s.replace("-", ""),  # hex without hyphens
    lambda s: "{" + s + "}",
    lambda s: "urn:uuid:" + s,
    lambda s: s[:8] + s[9:13] + "-" + s[8] + s[13:],  # a hyphen moved, same length
    lambda s: s[:-1] + "-",  # a hyphen too many, one digit lost
    lambda s: s + " ",
    lambda s: s[:35],
])
def test_subject_must_be_the_session_id_exactly_as_str_writes_it(spelling):
    # The hot-path check compares hex digits and hyphen positions instead of str(UUID); it
    # must refuse every other spelling of the same UUID, as the plain comparison did.
    sid = UUID("0f6b2c3e-9d4a-4e1b-8c7d-2a5f6e7d8c9b")  # has letters: upper case differs
    body = json.loads(encode(ev.started("ada", T0, session_id=sid)))
    body["subject"] = spelling(body["data"]["session_id"])
    assert body["subject"] != body["data"]["session_id"]
    with pytest.raises(PoisonEvent, match="subject"):
        decode(json.dumps(body).encode())


def test_planned_minutes_default_to_25():
    body = json.loads(encode(ev.started("ada", T0)))
    del body["data"]["duration_minutes"]
    event = decode(json.dumps(body).encode())
    assert isinstance(event, StartedEvent) and event.data.duration_minutes == 25


def test_a_dead_letter_keeps_the_original_bytes_and_says_where_from_and_why():
    letter = dead_letter(
        reason="invalid",
        detail="data.user_id: too short",
        topic="t",
        partition=3,
        offset=42,
        key=b"ada",
        value=b"{...}",
    )
    headers = dict(letter.headers)
    assert letter.value == b"{...}" and letter.key == b"ada"
    assert headers[topics.DLQ_REASON] == b"invalid"
    # the bytes travel once, as the value; the headers identify them
    assert b"{...}" not in headers.values()
    assert headers[topics.DLQ_ORIGINAL_SIZE] == b"5"
    assert headers[topics.DLQ_ORIGINAL_SHA256] == hashlib.sha256(b"{...}").hexdigest().encode()
    assert topics.DLQ_OMITTED not in headers
    assert (headers[topics.DLQ_ORIGINAL_PARTITION], headers[topics.DLQ_ORIGINAL_OFFSET]) == (
        b"3",
        b"42",
    )


def test_a_value_too_large_for_the_topic_travels_as_its_size_and_digest():
    big = b"x" * 600_000  # with a copy in a header, this letter was once over Kafka's 1 MB
    letter = dead_letter(reason="invalid", detail="too long", topic="t", partition=1, offset=7,
                         key=b"ada", value=big, max_original=512 * 1024)
    headers = dict(letter.headers)
    assert letter.value == b""
    assert headers[topics.DLQ_OMITTED] == b"value"
    assert headers[topics.DLQ_ORIGINAL_SIZE] == b"600000"
    assert headers[topics.DLQ_ORIGINAL_SHA256] == hashlib.sha256(big).hexdigest().encode()
    assert (headers[topics.DLQ_ORIGINAL_PARTITION], headers[topics.DLQ_ORIGINAL_OFFSET]) == (
        b"1", b"7")
    assert letter.key == b"ada" and headers[topics.DLQ_ORIGINAL_KEY] == b"ada"
    assert sum(len(v) for _, v in letter.headers) < 10_000


def test_a_huge_key_and_detail_are_left_out_or_clipped():
    key = b"k" * 5000
    letter = dead_letter(reason="invalid", detail="\u00e9" * 3000, topic="t", partition=0,
                         offset=0, key=key, value=b"{}")
    headers = dict(letter.headers)
    assert letter.key is None and topics.DLQ_ORIGINAL_KEY not in headers
    assert headers[topics.DLQ_ORIGINAL_KEY_SHA256] == hashlib.sha256(key).hexdigest().encode()
    assert headers[topics.DLQ_OMITTED] == b"key"
    assert letter.value == b"{}"
    detail = headers[topics.DLQ_DETAIL]
    assert len(detail) <= 4000 and detail.decode() == "\u00e9" * (len(detail) // 2)


def test_a_letter_is_named_by_its_origin_and_reason():
    one = dead_letter(reason="invalid", detail="a", topic="t", partition=2, offset=9, key=None,
                      value=b"v")
    again = dead_letter(reason="invalid", detail="b", topic="t", partition=2, offset=9,
                        key=None, value=b"v")
    other = dead_letter(reason="unstorable", detail="a", topic="t", partition=2, offset=9,
                        key=None, value=b"v")
    assert one.origin == again.origin != other.origin


def test_a_contradiction_found_later_is_rebuilt_from_the_stored_event():
    end = ev.ended("ada", ev.started("ada", T0).data.session_id, minutes(5))
    rebuilt = contradiction_letter(Contradiction(end, "ends before it started", None), "t")
    assert decode(rebuilt.value) == end
    assert ("focus.dlq.rebuilt", b"true") in rebuilt.headers
    fresh = contradiction_letter(Contradiction(end, "why", Located(end, 1, 7, b"raw")), "t")
    assert fresh.value == b"raw" and ("focus.dlq.rebuilt", b"true") not in fresh.headers


def test_backoff_grows_exponentially_with_equal_jitter_up_to_a_cap():
    # equal jitter: retry n waits uniform(c/2, c), c = min(cap, base * 2**(n-1))
    backoff, rng = Backoff(base=0.1, cap=2.0), random.Random(7)
    for attempt in range(1, 40):
        ceiling = min(2.0, 0.1 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed


def test_a_message_must_be_keyed_by_its_user():
    from focus_sessions.contracts.codec import decode_message

    start = ev.started("ada", T0)
    assert decode_message(b"ada", encode(start)) == start
    assert decode_message(None, encode(start)) == start  # unkeyed: nothing to contradict
    with pytest.raises(PoisonEvent) as caught:
        decode_message(b"bob", encode(start))
    assert caught.value.reason == "key-mismatch"

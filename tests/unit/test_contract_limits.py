"""The contract accepts only what the read models can store and a timer can mean (guarantee 4).

The same rules hold in the API's request bodies (they use the same types) and in the projector
(both decoders; the session-length rule in the fold, which knows the start).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from focus_sessions.contracts import schema
from focus_sessions.contracts.codec import PoisonEvent, encode
from focus_sessions.contracts.codec import decode_message as contract_decode
from focus_sessions.contracts.events import EARLIEST, ENDED_V2, INTERRUPTED_V1, LATEST, MAX_SESSION
from focus_sessions.producers import events as ev
from focus_sessions.projections import wire
from focus_sessions.projections.fold import History, Status, derive, extend
from tests.unit.histories import T0, minutes

START = ev.started("ada", T0)
SID = START.data.session_id


def with_fields(event: object, **changes: object) -> bytes:
    body = json.loads(encode(event))  # type: ignore[arg-type]
    for name, value in changes.items():
        if name.startswith("data__"):
            body["data"][name.removeprefix("data__")] = value
        else:
            body[name] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize("decode", [contract_decode, wire.decode_message])
@pytest.mark.parametrize(("field", "value"), [
    ("data__reason", "a\u0000b"), ("source", "urn:\u0000"), ("data__reason", "\u0000")])
def test_a_nul_in_text_is_invalid_naming_the_field(decode, field, value):
    raw = with_fields(ev.interrupted("ada", SID, minutes(3)), **{field: value})
    with pytest.raises(PoisonEvent) as refused:
        decode(b"ada", raw)
    assert refused.value.reason == "invalid"
    assert refused.value.detail.startswith(field.replace("data__", "data."))
    assert "NUL" in refused.value.detail


@pytest.mark.parametrize("decode", [contract_decode, wire.decode_message])
@pytest.mark.parametrize(("at", "ok"), [
    ("1970-01-01T00:00:00Z", True), ("1969-12-31T23:59:59.999999Z", False),
    ("1970-01-01T00:30:00+01:00", False), ("2199-12-31T23:59:59.999999Z", True),
    ("2200-01-01T00:00:00Z", False), ("2199-12-31T23:00:00-14:00", False),
    ("0001-01-01T00:00:00+23:59", False), ("9999-12-31T23:59:59-14:00", False),
])
@pytest.mark.parametrize("field", ["time", "data__interrupted_at"])
def test_every_time_lies_in_the_documented_range(decode, at, ok, field):
    raw = with_fields(ev.interrupted("ada", SID, minutes(3)), **{field: at})
    if ok:
        event = decode(b"ada", raw)
        assert str(event.id) == json.loads(raw)["id"]
        assert EARLIEST <= (event.time if field == "time" else event.data.interrupted_at) < LATEST
    else:
        with pytest.raises(PoisonEvent) as refused:
            decode(b"ada", raw)
        assert refused.value.reason == "invalid"
        assert "2200-01-01T00:00:00Z" in refused.value.detail


def test_an_end_or_interruption_past_the_longest_session_is_a_contradiction():
    limit = T0 + MAX_SESSION
    last_end = ev.ended("ada", SID, limit)
    too_late = ev.ended("ada", SID, limit + timedelta(microseconds=1))
    late_interruption = ev.interrupted("ada", SID, limit + timedelta(minutes=1))
    derived = derive(extend(History(), [START, too_late, late_interruption])[0])
    assert derived.status[too_late.id.int] is Status.CONTRADICTION
    assert "more than 24 h after started_at" in derived.reasons[too_late.id.int]
    assert derived.status[late_interruption.id.int] is Status.CONTRADICTION  # open session
    assert derived.row is not None and derived.row.ended_at is None
    ok = derive(extend(History(), [START, last_end, too_late])[0])
    assert ok.row is not None and ok.row.focus_seconds == 24 * 3600
    assert ok.status[last_end.id.int] is Status.APPLIED


def test_the_published_schemas_state_the_rules():
    interrupted = schema.event_schema(INTERRUPTED_V1)
    text = json.dumps(interrupted)
    assert "1970-01-01T00:00:00Z (inclusive) and 2200-01-01T00:00:00Z (exclusive)" in text
    data = interrupted["$defs"]["SessionInterruptedV1"]["properties"]
    assert data["reason"]["anyOf"][0]["pattern"] == "^[^\\u0000]*$"
    assert "at most 24 h after started_at" in data["interrupted_at"]["description"]
    assert interrupted["properties"]["source"]["pattern"] == "^[^\\u0000]*$"
    ended = schema.event_schema(ENDED_V2)["$defs"]["SessionEndedV2"]["properties"]
    assert "at most 24 h after it" in ended["ended_at"]["description"]

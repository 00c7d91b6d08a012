"""The projection's fast decoder gives exactly the contract's answers.

:mod:`focus_sessions.projections.wire` decodes with msgspec and falls back to
:mod:`focus_sessions.contracts.codec` (pydantic)
for whatever msgspec refuses. These tests hold the two to one contract: on valid events, near-
valid spellings and plain garbage, both return equal events or both refuse with the same reason.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from focus_sessions.contracts import events as contract
from focus_sessions.contracts.codec import PoisonEvent, encode
from focus_sessions.contracts.codec import decode_message as contract_decode
from focus_sessions.producers import events as ev
from focus_sessions.projections import wire
from tests.unit.histories import T0, minutes

SID = uuid4()
_BASES: list[dict[str, Any]] = [
    json.loads(encode(e))
    for e in (
        ev.started("ada", T0, session_id=SID),
        ev.started("ada", T0, session_id=SID, duration_minutes=90, time_zone="Asia/Kolkata",
                   step_id=uuid4()),
        ev.interrupted("ada", SID, minutes(3)),
        ev.interrupted("ada", SID, minutes(3), reason="phone"),
        ev.ended("ada", SID, minutes(25), completed=True, reported_interruptions=1),
        ev.ended("ada", SID, minutes(20), completed=False, focus_quality=4),
        ev.ended_v1("ada", SID, minutes(25), completed=True, interruptions=0),
        ev.ended_v1("ada", SID, minutes(9), completed=False),
    )
]
_FIELDS = sorted({k for b in _BASES for k in b} | {"extra"})
_DATA_FIELDS = sorted({k for b in _BASES for k in b["data"]} | {"completed", "extra"})

_DATETIMES = st.sampled_from([
    "2026-03-02T09:00:00Z", "2026-03-02T09:00:00.5Z", "2026-03-02T09:00:00.123456Z",
    "2026-03-02T09:00:00.1234567Z", "2026-03-02T09:00:00.9999995Z",
    "2026-03-02T09:00:00.000000001Z",
    "2026-03-02t09:00:00z", "2026-03-02 09:00:00Z", "2026-03-02T09:00Z", "2026-03-02T09:00:00",
    "2026-03-02T09:00:00+01:00", "2026-03-02T09:00:00+0100", "2026-03-02T09:00:00+01",
    "2026-03-02T09:00:00-00:00", "2026-03-02T09:00:00+23:59", "2026-03-02T09:00:00+24:00",
    "2026-03-02T23:59:60Z", "2026-02-30T09:00:00Z", "2026-03-02T09:00:00,5Z", "2026-03-02",
    "20260302T090000Z", "1772442000", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
    # the contract's range, [1970-01-01, 2200-01-01) UTC, at its edges and offsets
    "1969-12-31T23:59:59.999999Z", "1970-01-01T00:00:00Z", "1970-01-01T00:30:00+01:00",
    "1971-01-01T00:00:00+23:59", "2199-12-31T23:59:59.999999Z", "2200-01-01T00:00:00Z",
    "2199-12-31T23:00:00-14:00", "2198-12-31T23:00:00-14:00", "9999-12-31T23:59:59-14:00",
]) | st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat)
_UUIDS = st.uuids().flatmap(lambda u: st.sampled_from([
    str(u), str(u).upper(), u.hex, f"{{{u}}}", f"urn:uuid:{u}", str(u)[:-1], str(SID),
    str(SID).upper(), SID.hex,
]))
_STRINGS = st.sampled_from([
    "", "ada", "ada\n", "ada ", "ADA", "a" * 255, "a" * 256, "a/b", "é", "\ud800", "\x00",
    "a\x00b", "\x01", "\udc00z",
    "focus.session.started.v1", "focus.session.ended.v1", "focus.session.ended.v2",
    "focus.session.interrupted.v1", "focus.session.paused.v1", "1.0", "1.1", "application/json",
    "text/plain", "Europe/Paris", "Mars/Olympus", "UTC", "", "completed", "abandoned", "cancelled",
    "done", "25", "true", "r" * 500, "r" * 501, "t" * 64, "t" * 65,
]) | st.text(max_size=8)
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-1, 10_001), st.sampled_from([0, 1, 4, 5, 6, 90, 91]),
    st.integers(), st.floats(allow_nan=False), st.sampled_from([25.0, 25.5, 1e400]),
    _DATETIMES, _UUIDS, _STRINGS, st.builds(list), st.builds(dict),
)

_mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(_FIELDS), _VALUES),
    st.tuples(st.just("set-data"), st.sampled_from(_DATA_FIELDS), _VALUES),
    st.tuples(st.just("drop"), st.sampled_from(_FIELDS), st.none()),
    st.tuples(st.just("drop-data"), st.sampled_from(_DATA_FIELDS), st.none()),
    st.tuples(st.just("duplicate"), st.sampled_from(_FIELDS), _VALUES),
)


def _message(base: dict[str, Any], mutations: list[tuple[str, str, Any]]) -> bytes:
    body = json.loads(json.dumps(base))
    duplicates = []
    for op, name, value in mutations:
        target = body["data"] if op.endswith("-data") and isinstance(body.get("data"), dict) \
            else body
        if op.startswith("set"):
            target[name] = value
        elif op.startswith("drop"):
            target.pop(name, None)
        else:
            duplicates.append(f", {json.dumps(name)}: {json.dumps(value, allow_nan=True)}")
    text = json.dumps(body, allow_nan=True)
    return (text[:-1] + "".join(duplicates) + "}").encode("utf-8", "surrogatepass")


def _outcome(decode: Any, key: bytes | None, value: bytes) -> tuple[Any, ...]:
    try:
        event = decode(key, value)
    except PoisonEvent as poison:
        return ("poison", poison.reason, poison.detail)
    return ("event", _fields(event))


def _fields(obj: Any) -> dict[str, Any]:
    """Every field of an event of either kind, times with their offsets."""
    if isinstance(obj, msgspec.Struct):
        out = msgspec.structs.asdict(obj)
        tag = type(obj).__struct_config__.tag
        if tag is not None:
            out["type"] = tag
    else:
        out = {name: getattr(obj, name) for name in type(obj).model_fields}
    for name, value in out.items():
        if isinstance(value, datetime):
            out[name] = (value, value.utcoffset())
        elif isinstance(value, msgspec.Struct | contract.SessionEndedV2 | contract.SessionStartedV1
                        | contract.SessionInterruptedV1):
            out[name] = _fields(value)
    return out


@settings(max_examples=1500, deadline=None)
@given(
    base=st.sampled_from(_BASES),
    mutations=st.lists(_mutation, max_size=2),
    key=st.sampled_from([None, b"ada", None, b"ada", b"bob", b""]),
)
def test_the_fast_decoder_answers_exactly_as_the_contract(base, mutations, key):
    value = _message(base, mutations)
    fast = _outcome(wire.decode_message, key, value)
    assert fast == _outcome(contract_decode, key, value)
    event(fast[1] if fast[0] == "poison" else "valid")


@pytest.mark.parametrize("base", _BASES, ids=lambda b: b["type"])
def test_valid_events_take_the_fast_path(base):
    event = wire.decode_message(b"ada", json.dumps(base).encode())
    assert isinstance(event, wire.Started | wire.Interrupted | wire.Ended)
    assert wire.decode_message(None, wire.encode(event)) == event  # round trip


@pytest.mark.parametrize(
    ("value", "reason"),
    [(None, "empty"), (b"", "empty"), (b"{", "malformed-json"),
     (b'{"type": "focus.session.paused.v1"}', "unknown-type")],
)
def test_what_msgspec_refuses_the_contract_explains(value, reason):
    with pytest.raises(PoisonEvent) as caught:
        wire.decode_message(None, value)
    assert caught.value.reason == reason


def test_sub_microsecond_times_are_truncated_as_the_contract_does():
    # msgspec would round .9999995 up to the next second; the contract truncates
    body = json.loads(json.dumps(_BASES[0]))
    body["time"] = "2026-03-02T09:00:00.9999995Z"
    event = wire.decode_message(None, json.dumps(body).encode())
    assert event.time.second == 0 and event.time.microsecond == 999_999


def test_an_escaped_sub_microsecond_fraction_is_truncated_as_the_contract_does():
    # "\u002e" is a ".": the bytes hold no ".9999995" for the fast path's check to see
    body = json.loads(json.dumps(_BASES[0]))
    body["time"] = "2026-03-02T09:00:00.9999995Z"
    value = json.dumps(body).encode().replace(b":00.9999995Z", b":00\\u002e9999995Z")
    assert b".9999995" not in value
    decoded = wire.decode_message(None, value)
    assert decoded.time == contract_decode(None, value).time
    assert decoded.time.second == 0 and decoded.time.microsecond == 999_999


def test_contract_events_are_encoded_by_the_contract():
    event = ev.started("ada", T0)
    assert wire.encode(event) == encode(event)


@pytest.mark.parametrize(
    ("mirror", "model"),
    [
        (wire.StartedData, contract.SessionStartedV1),
        (wire.InterruptedData, contract.SessionInterruptedV1),
        (wire.EndedV1Data, contract.SessionEndedV1),
        (wire.EndedData, contract.SessionEndedV2),
        (wire.Started, contract.StartedEvent),
        (wire.Interrupted, contract.InterruptedEvent),
        (wire.Ended, contract.EndedEvent),
    ],
)
def test_the_mirror_has_the_contracts_fields_and_required_fields(mirror, model):
    info = msgspec.inspect.type_info(mirror)
    fields = {f.name: f.required for f in info.fields}
    if info.tag_field is not None:
        fields[info.tag_field] = False  # the tag: a defaulted literal in the contract
    assert fields == {name: f.is_required() for name, f in model.model_fields.items()}


def test_a_session_seen_before_still_gets_its_subject_and_key_checked(monkeypatch):
    monkeypatch.setattr(wire, "_SESSIONS", {})
    sid = uuid4()
    start = json.loads(encode(ev.started("ada", T0, session_id=sid)))
    wire.decode_message(b"ada", json.dumps(start).encode())  # remembers the session's subject
    remembered = wire._SESSIONS
    assert remembered == {sid.int: (str(sid), sid)}
    for subject in (str(sid).upper(), sid.hex, str(uuid4())):
        with pytest.raises(PoisonEvent, match=r"subject must equal data\.session_id"):
            wire.decode_message(b"ada", json.dumps({**start, "subject": subject}).encode())
    with pytest.raises(PoisonEvent) as caught:
        wire.decode_message(b"bob", json.dumps(start).encode())
    assert caught.value.reason == "key-mismatch"


def test_the_remembered_sessions_and_strings_are_bounded(monkeypatch):
    monkeypatch.setattr(wire, "_SESSIONS", {})
    monkeypatch.setattr(wire, "_STRINGS", {})
    monkeypatch.setattr(wire, "_USERS", {})
    monkeypatch.setattr(wire, "_CACHE_MAX", 2)
    for n in range(5):
        start = ev.started(f"user-{n}", T0)
        assert wire.decode_message(f"user-{n}".encode(), encode(start)).id == start.id
        assert len(wire._SESSIONS) <= 2
        assert len(wire._STRINGS) <= 2
        assert len(wire._USERS) <= 2


@pytest.mark.parametrize("user", ["ada\n", "a/b", "a b", "é", ""])
def test_user_ids_the_contract_refuses_are_refused_for_its_reason(monkeypatch, user):
    monkeypatch.setattr(wire, "_USERS", {})
    body = json.loads(encode(ev.started("ada", T0)))
    body["data"]["user_id"] = user
    value = json.dumps(body).encode()
    with pytest.raises(PoisonEvent) as ours:
        wire.decode_message(None, value)
    with pytest.raises(PoisonEvent) as theirs:
        contract_decode(None, value)
    assert (ours.value.reason, str(ours.value)) == (theirs.value.reason, str(theirs.value))
    assert wire._USERS == {}  # only ids found valid are remembered


def test_events_of_one_session_share_their_repeated_values():
    sid = uuid4()
    start, end = (wire.decode_message(b"ada", encode(e)) for e in (
        ev.started("ada", T0, session_id=sid), ev.ended("ada", sid, minutes(25), completed=True)))
    assert start.data.session_id is end.data.session_id
    assert start.subject is end.subject
    assert start.source is end.source
    assert start.data.user_id is end.data.user_id
    assert (start.subject, start.data.user_id) == (str(sid), "ada")


def test_every_event_has_a_kind_subclasses_and_both_decoders_included():
    class Resumed(contract.InterruptedEvent):  # a subclass: not in the exact-type table
        pass

    interrupted = ev.interrupted("ada", SID, minutes(3))
    assert wire.kind_of(Resumed.model_construct(**dict(interrupted))) == "interrupted"
    for value in (encode(ev.started("ada", T0, session_id=SID)), encode(interrupted),
                  encode(ev.ended_v1("ada", SID, minutes(25), completed=True))):
        assert wire.kind_of(wire.decode_message(None, value)) == wire.kind_of(
            contract_decode(None, value))
    with pytest.raises(TypeError, match="not an event"):
        wire.kind_of(object())  # type: ignore[arg-type]

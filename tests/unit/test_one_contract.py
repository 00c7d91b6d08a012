"""One contract: the pydantic models of :mod:`focus_sessions.contracts.events`, and every place
that restates
them for speed — the fast decoder's mirror, the ``session_events`` row mapping, the simulator's
JSON and the ``ended`` upcaster — held to them by tests that fail when a field is added to the
contract and not to that place. What to change when an event type evolves:
``docs/producing.md#evolving-event-types``.

The expected fields always come from the models' ``model_fields``, never from a list here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, get_args
from uuid import UUID

import msgspec
import pytest

from focus_sessions.contracts import events as contract
from focus_sessions.contracts.codec import decode_message, encode, upcast_ended_data
from focus_sessions.contracts.events import WIRE_TYPES, CloudEvent
from focus_sessions.producers.simulate import Profile, generate
from focus_sessions.projections import wire
from focus_sessions.projections.fold import fact
from focus_sessions.projections.readmodels.sessions import (
    SESSION_EVENT_COLUMNS,
    event_from_record,
    event_record,
)

#: The newest version of each event type: what the fold sees and ``session_events`` stores.
NEWEST: tuple[type[CloudEvent], ...] = get_args(contract.Event)

_SID = UUID("0b9a3c4e-58a1-4c0e-9d2f-6f1e2a3b4c5d")
_T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
#: One valid value per field name, each distinct from the others of its type and from the
#: field's default, so a row mapping that drops a field or swaps two columns is caught.
_SAMPLES: dict[str, Any] = {
    # the envelope
    "specversion": "1.0",
    "id": UUID("7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"),
    "source": "urn:test:one-contract",
    "time": _T0 + timedelta(hours=2),  # recorded later than it happened
    "subject": str(_SID),
    "datacontenttype": "application/json",
    # the data
    "session_id": _SID,
    "user_id": "ada",
    "step_id": UUID("3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7"),
    "duration_minutes": 50,
    "started_at": _T0,
    "time_zone": "Asia/Kolkata",
    "interrupted_at": _T0 + timedelta(minutes=3),
    "reason": "phone",
    "ended_at": _T0 + timedelta(minutes=50),
    "completed": False,
    "interruptions": 2,
    "outcome": "cancelled",
    "reported_interruptions": 3,
    "focus_quality": 4,
}
#: Another value for each required data field (an optional one is tried at its default).
_OTHERS: dict[str, Any] = {
    "session_id": UUID("1c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5"),
    "user_id": "bob",
    "started_at": _T0 + timedelta(seconds=1),
    "interrupted_at": _T0 + timedelta(minutes=4),
    "ended_at": _T0 + timedelta(minutes=51),
    "completed": True,
    "outcome": "completed",
}


def _data_model(cls: type[CloudEvent]) -> type[contract._Frozen]:
    data = cls.model_fields["data"].annotation
    assert isinstance(data, type) and issubclass(data, contract._Frozen)
    return data


def _sample_fields(model: type[contract._Frozen]) -> dict[str, Any]:
    fields = {}
    for name, info in model.model_fields.items():
        if name in ("type", "data"):
            continue
        if name not in _SAMPLES:
            pytest.fail(
                f"{model.__name__}.{name} is new to the contract: give it a value in _SAMPLES, "
                "then follow docs/producing.md#evolving-event-types (the row mapping, the "
                "mirror, the simulator)")
        value = _SAMPLES[name]
        if not info.is_required() and info.get_default() == value and name not in (
                "specversion", "datacontenttype"):  # one allowed value: the default
            pytest.fail(f"the sample of {model.__name__}.{name} is its default: a mapping "
                        "that drops the field would go unnoticed")
        fields[name] = value
    return fields


def _sample(cls: type[CloudEvent]) -> CloudEvent:
    """A valid event of ``cls`` with every field set, envelope and data."""
    data = _data_model(cls).model_validate(_sample_fields(_data_model(cls)))
    return cls.model_validate({**_sample_fields(cls), "data": data})


def _fields(model: Any) -> dict[str, Any]:
    return {name: getattr(model, name) for name in type(model).model_fields}


@pytest.mark.parametrize("cls", NEWEST, ids=lambda c: c.__name__)
def test_every_field_of_the_newest_events_survives_the_session_events_row(cls):
    event = _sample(cls)
    record = event_record(event, "applied", 3, 42)
    assert len(record) == len(SESSION_EVENT_COLUMNS)
    rebuilt = event_from_record(dict(zip(SESSION_EVENT_COLUMNS, record, strict=True)))
    assert type(rebuilt) is cls
    lost = "event_record must store it and event_from_record rebuild it"
    assert _fields(rebuilt.data) == _fields(event.data), lost
    assert {**_fields(rebuilt), "data": None} == {**_fields(event), "data": None}, lost


@pytest.mark.parametrize("cls", NEWEST, ids=lambda c: c.__name__)
def test_the_fast_decoders_events_make_the_same_row_as_the_contracts(cls):
    event = _sample(cls)
    mirrored = wire.decode_message(b"ada", encode(event))
    assert isinstance(mirrored, msgspec.Struct)  # the fast path, not the fallback
    assert event_record(mirrored, "applied", 3, 42) == event_record(event, "applied", 3, 42)


@pytest.mark.parametrize("cls", NEWEST, ids=lambda c: c.__name__)
def test_every_data_field_is_part_of_an_events_fact(cls):
    # one id with another value in any data field is a contradiction, not a duplicate
    event = _sample(cls)
    data: Any = event.data  # type: ignore[attr-defined]
    for name, info in type(data).model_fields.items():
        other = info.get_default() if not info.is_required() else _OTHERS.get(name)
        assert other is not None or not info.is_required(), f"add a value for {name} to _OTHERS"
        changed = event.model_copy(update={"data": data.model_copy(update={name: other})})
        assert fact(changed) != fact(event), f"projections.fold.fact must include {name}"


def test_the_one_upcaster_fills_every_field_of_the_newest_ended():
    v1 = contract.SessionEndedV1.model_validate(_sample_fields(contract.SessionEndedV1))
    assert set(upcast_ended_data(v1, dict)) == set(contract.SessionEndedV2.model_fields)


def test_both_decoders_upcast_an_ended_v1_alike():
    v1 = _sample(contract.EndedEventV1)
    ours, theirs = wire.decode_message(b"ada", encode(v1)), decode_message(b"ada", encode(v1))
    assert isinstance(ours, wire.Ended) and isinstance(theirs, contract.EndedEvent)
    assert msgspec.structs.asdict(ours.data) == _fields(theirs.data)
    assert (theirs.data.outcome, theirs.data.reported_interruptions) == ("abandoned", 2)


def _mirrors() -> dict[str, type[msgspec.Struct]]:
    """The fast decoder's struct for each ``type`` it decodes, by its tag."""
    union = msgspec.inspect.type_info(wire._decoder.type)
    assert isinstance(union, msgspec.inspect.UnionType)
    found = {}
    for member in union.types:
        assert isinstance(member, msgspec.inspect.StructType)
        found[member.cls.__struct_config__.tag] = member.cls
    return found


def _required(mirror: type[msgspec.Struct]) -> dict[str, bool]:
    info = msgspec.inspect.type_info(mirror)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: f.required for f in info.fields}


def _data_mirror(mirror: type[msgspec.Struct]) -> type[msgspec.Struct]:
    info = msgspec.inspect.type_info(mirror)
    assert isinstance(info, msgspec.inspect.StructType)
    data = next(f.type for f in info.fields if f.name == "data")
    assert isinstance(data, msgspec.inspect.StructType)
    return data.cls


def test_every_type_on_the_wire_has_a_mirror_with_the_contracts_fields():
    mirrors = _mirrors()
    assert set(mirrors) == set(WIRE_TYPES)
    for name, cls in WIRE_TYPES.items():
        # the mirror's tag is the contract's defaulted ``type`` literal
        envelope = {n: f.is_required() for n, f in cls.model_fields.items() if n != "type"}
        assert _required(mirrors[name]) == envelope, name
        data = {n: f.is_required() for n, f in _data_model(cls).model_fields.items()}
        assert _required(_data_mirror(mirrors[name])) == data, name


@cache
def _simulated() -> dict[str, list[tuple[bytes, bytes]]]:
    by_type: dict[str, list[tuple[bytes, bytes]]] = {}
    for key, value in generate(40, 400, seed=5, profile=Profile(ended_v1_share=0.5)):
        by_type.setdefault(json.loads(value)["type"], []).append((key, value))
    return by_type


@pytest.mark.parametrize("type_", sorted(WIRE_TYPES))
def test_the_simulator_writes_every_field_of_the_contract(type_):
    # The simulator formats JSON with f-strings, not through the models: a field the contract
    # gains without a default fails decoding here; one with a default is missing from the
    # fields set.
    cls = WIRE_TYPES[type_]
    written = _simulated().get(type_)
    assert written, f"producers/simulate.py never writes {type_}"
    for key, value in written:
        event: Any = decode_message(key, value)
        if event.type != type_:  # upcast: look at the version the simulator wrote
            event = cls.model_validate_json(value)
        assert event.model_fields_set == set(cls.model_fields), value
        assert event.data.model_fields_set == set(_data_model(cls).model_fields), value

"""The published contract: JSON Schemas per event type, checked against examples and CloudEvents."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker

from focus_sessions.contracts.codec import PoisonEvent, decode
from focus_sessions.contracts.events import WIRE_TYPES
from focus_sessions.contracts.schema import (
    event_schema,
    event_schemas,
    example_event,
    write_event_schemas,
)
from focus_sessions.producers.simulate import Profile, generate

SHARED_SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "schemas"
needs_shared = pytest.mark.skipif(
    not SHARED_SCHEMAS.is_dir(),
    reason=f"official schemas not found at {SHARED_SCHEMAS} (a clone outside the workspace)",
)

formats = FormatChecker()


def _rfc3339(value: object) -> bool:
    # jsonschema checks date-time only with an optional package; this is the same rule.
    if not isinstance(value, str) or "T" not in value.upper():
        return False
    return datetime.fromisoformat(value.replace("z", "Z")).tzinfo is not None


def _uuid(value: object) -> bool:
    return not isinstance(value, str) or bool(UUID(value))


formats.checks("date-time", raises=ValueError)(_rfc3339)
formats.checks("uuid", raises=ValueError)(_uuid)


def validator(wire_type: str) -> Draft202012Validator:
    return Draft202012Validator(event_schema(wire_type), format_checker=formats)


def simulated_events() -> list[dict[str, Any]]:
    pairs = generate(users=20, sessions=60, seed=11, profile=Profile(ended_v1_share=0.5))
    return [json.loads(value) for _, value in pairs]


def test_every_wire_type_has_a_schema_that_checks_its_own_envelope() -> None:
    schemas = event_schemas()
    assert set(schemas) == set(WIRE_TYPES)
    for wire_type, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert schema["properties"]["type"]["const"] == wire_type
        assert {"specversion", "id", "source", "type", "time", "subject", "data"} <= set(
            schema["required"]
        )


@pytest.mark.parametrize("wire_type", sorted(WIRE_TYPES))
def test_schema_accepts_the_example_and_simulated_events_of_its_type(wire_type: str) -> None:
    check = validator(wire_type)
    examples = [example_event(wire_type).model_dump(mode="json")]
    examples += [e for e in simulated_events() if e["type"] == wire_type]
    assert len(examples) > 1
    for example in examples:
        check.validate(example)


def test_schema_rejects_events_of_other_types() -> None:
    for wire_type in WIRE_TYPES:
        for other in WIRE_TYPES:
            if other != wire_type:
                example = example_event(other).model_dump(mode="json")
                assert not validator(wire_type).is_valid(example)


def _mutated(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(event))
    *parents, last = path.split(".")
    target = copy
    for part in parents:
        target = target[part]
    if value is _DROP:
        del target[last]
    else:
        target[last] = value
    return copy


_DROP = object()
INVALID = [
    ("focus.session.started.v1", "data.duration_minutes", 4),
    ("focus.session.started.v1", "data.duration_minutes", 91),
    ("focus.session.started.v1", "data.user_id", ""),
    ("focus.session.started.v1", "data.user_id", "has space"),
    ("focus.session.started.v1", "data.user_id", "x" * 256),
    ("focus.session.started.v1", "data.started_at", "2025-03-03T09:00:00"),  # no offset
    ("focus.session.started.v1", "data.session_id", "not-a-uuid"),
    ("focus.session.started.v1", "data.colour", "red"),  # unknown field
    ("focus.session.started.v1", "specversion", "0.3"),
    ("focus.session.started.v1", "id", _DROP),
    ("focus.session.started.v1", "data", _DROP),
    ("focus.session.interrupted.v1", "data.interrupted_at", "yesterday"),
    ("focus.session.interrupted.v1", "data.reason", "x" * 501),
    ("focus.session.interrupted.v1", "time", "2025-03-03 09:00"),
    ("focus.session.ended.v1", "data.completed", _DROP),
    ("focus.session.ended.v1", "data.interruptions", -1),
    ("focus.session.ended.v2", "data.outcome", "finished"),
    ("focus.session.ended.v2", "data.focus_quality", 6),
    ("focus.session.ended.v2", "data.reported_interruptions", 10_001),
    ("focus.session.ended.v2", "datacontenttype", "text/plain"),
]


@pytest.mark.parametrize(("wire_type", "path", "value"), INVALID)
def test_schema_rejects_what_the_decoder_rejects(wire_type: str, path: str, value: Any) -> None:
    # A producer that passes the schema must never be dead-lettered, and vice versa here.
    event = _mutated(example_event(wire_type).model_dump(mode="json"), path, value)
    assert not validator(wire_type).is_valid(event)
    with pytest.raises(PoisonEvent):
        decode(json.dumps(event).encode())


STRICTER_THAN_THE_DECODER = [
    ("data.duration_minutes", "25"),  # pydantic's lax mode would coerce the string
    ("specversion", _DROP),  # the decoder defaults it; CloudEvents requires it
    ("type", _DROP),  # required on the wire: the decoder needs it to pick the model
]


@pytest.mark.parametrize(("path", "value"), STRICTER_THAN_THE_DECODER)
def test_schema_is_stricter_than_the_decoder_where_producers_benefit(path: str, value: Any) -> None:
    event = _mutated(example_event("focus.session.started.v1").model_dump(mode="json"), path, value)
    assert not validator("focus.session.started.v1").is_valid(event)


@needs_shared
def test_every_event_is_valid_cloudevents_json() -> None:
    cloudevents = json.loads((SHARED_SCHEMAS / "cloudevents.json").read_text())
    check = Draft7Validator(cloudevents, format_checker=formats)
    events = [example_event(t).model_dump(mode="json") for t in WIRE_TYPES]
    for event in events + simulated_events():
        check.validate(event)


@needs_shared
def test_the_cloudevents_check_catches_a_broken_envelope() -> None:
    cloudevents = json.loads((SHARED_SCHEMAS / "cloudevents.json").read_text())
    broken = example_event("focus.session.started.v1").model_dump(mode="json")
    broken["time"] = "not a time"
    del broken["specversion"]
    assert len(list(Draft7Validator(cloudevents, format_checker=formats).iter_errors(broken))) == 2


def test_write_event_schemas_writes_one_file_per_type(tmp_path: Path) -> None:
    paths = write_event_schemas(tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(f"{t}.schema.json" for t in WIRE_TYPES)
    for path in paths:
        wire_type = path.name.removesuffix(".schema.json")
        assert json.loads(path.read_text()) == json.loads(json.dumps(event_schema(wire_type)))

"""The published contract: a JSON Schema per event type, generated from
:mod:`focus_sessions.contracts.events`.

A service in any language validates what it sends against these schemas (JSON Schema 2020-12).
They are stricter than the decoder where that helps producers: ``specversion`` and ``type`` are
required, UUIDs and RFC 3339 times carry a ``pattern`` as well as a ``format`` (many validators
do not assert formats). Two rules a schema cannot state are written in its description:
``subject`` equals ``data.session_id``, and the Kafka key is ``data.user_id``.
The AsyncAPI document for the topics is built in :mod:`focus_sessions.contracts.asyncapi`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from focus_sessions.contracts import events as ev

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
#: RFC 3339 date-time with a mandatory offset (``Z`` or ``+hh:mm``).
RFC3339_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)

#: Envelope attributes a producer must send (CloudEvents requires ``specversion`` and ``type``).
_REQUIRED_ENVELOPE = ["specversion", "id", "source", "type", "time", "subject", "data"]

_HOURS = f"{ev.MAX_SESSION.total_seconds() / 3600:g}"
_ENVELOPE_NOTES = {
    "id": "Unique per event (UUID): the dedupe key. A retry of the same fact reuses it.",
    "source": "URI reference naming the emitting service, e.g. urn:my-timer-service "
    "(1-255 characters, no NUL).",
    "time": f"When the fact happened (RFC 3339 with an offset, {ev.TIME_RANGE_TEXT}).",
    "subject": "The session id: must equal data.session_id.",
}
_DATA_NOTES = {
    "duration_minutes": "Planned length in minutes (5-90, default 25); not the elapsed time.",
    "time_zone": "The user's IANA time zone (e.g. Europe/Berlin), for daily/weekly buckets.",
    "user_id": "Opaque user id; also the Kafka message key.",
    "started_at": f"RFC 3339 with an offset, {ev.TIME_RANGE_TEXT}.",
    "interrupted_at": f"RFC 3339 with an offset, {ev.TIME_RANGE_TEXT}; within the session: "
    f"not before started_at, not after ended_at, at most {_HOURS} h after started_at "
    "(else the event is a contradiction).",
    "ended_at": f"RFC 3339 with an offset, {ev.TIME_RANGE_TEXT}; not before started_at and at "
    f"most {_HOURS} h after it (else the event is a contradiction).",
    "reason": "Short free text (at most 500 characters, no NUL).",
}


class ContractJsonSchema(GenerateJsonSchema):
    """pydantic's generator, plus patterns for UUIDs and offset-carrying RFC 3339 times."""

    def uuid_schema(self, schema: core_schema.UuidSchema) -> JsonSchemaValue:
        return {**super().uuid_schema(schema), "pattern": UUID_PATTERN}

    def datetime_schema(self, schema: core_schema.DatetimeSchema) -> JsonSchemaValue:
        return {**super().datetime_schema(schema), "pattern": RFC3339_PATTERN}


def annotate(model: type[BaseModel], schema: dict[str, Any]) -> dict[str, Any]:
    """Make the envelope fields required and add the notes a schema cannot express itself."""
    props = schema["properties"]
    if issubclass(model, ev.CloudEvent):
        schema["required"] = [name for name in _REQUIRED_ENVELOPE if name in props]
        notes = _ENVELOPE_NOTES
        wire_type = props["type"]["const"]
        schema["description"] = (
            f"CloudEvents 1.0 structured JSON for `{wire_type}`. Publish it to the events topic "
            "with the Kafka key set to data.user_id (UTF-8); subject must equal data.session_id."
        )
    else:
        notes = _DATA_NOTES
    for name, note in notes.items():
        if name in props:
            props[name]["description"] = note
    return schema


def event_schema(wire_type: str) -> dict[str, Any]:
    """A standalone JSON Schema (2020-12) for one ``type`` from :data:`WIRE_TYPES`."""
    model = ev.WIRE_TYPES[wire_type]
    schema = model.model_json_schema(schema_generator=ContractJsonSchema)
    for name, sub in schema.get("$defs", {}).items():
        annotate(getattr(ev, name), sub)
    annotate(model, schema)
    schema["title"] = wire_type
    schema["examples"] = [example_event(wire_type).model_dump(mode="json")]
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": f"urn:focus-sessions:schema:{wire_type}",
            **schema}


def event_schemas() -> dict[str, dict[str, Any]]:
    """Every wire type's JSON Schema, by ``type``."""
    return {wire_type: event_schema(wire_type) for wire_type in ev.WIRE_TYPES}


_SESSION = UUID("8f0c6c0e-6a43-4d4e-9c7a-2f4b1d6a9e11")
_AT = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def example_event(wire_type: str) -> ev.CloudEvent:
    """A fixed, valid example of each wire type (one session: started, interrupted, ended)."""
    envelope: dict[str, Any] = {
        "source": "urn:example:timer-app", "subject": str(_SESSION), "type": wire_type,
    }
    common = {"session_id": _SESSION, "user_id": "user-42"}
    data: dict[str, Any]
    if wire_type == ev.STARTED_V1:
        at = _AT
        data = {**common, "duration_minutes": 25, "started_at": at, "time_zone": "Europe/Berlin",
                "step_id": UUID("0b7e7d1c-2f7a-4c41-8a52-6d1f9a3c5b20")}
    elif wire_type == ev.INTERRUPTED_V1:
        at = _AT.replace(minute=11, second=30)
        data = {**common, "interrupted_at": at, "reason": "phone call"}
    elif wire_type == ev.ENDED_V1:
        at = _AT.replace(minute=25)
        data = {**common, "ended_at": at, "completed": True, "interruptions": 1}
    else:
        at = _AT.replace(minute=25)
        data = {**common, "ended_at": at, "outcome": "completed", "reported_interruptions": 1,
                "focus_quality": 4}
    suffix = sorted(ev.WIRE_TYPES).index(wire_type)
    envelope["id"] = UUID(f"5e1c3a2b-0d4f-4e6a-8b7c-9d0e1f2a3b4{suffix}")
    return ev.WIRE_TYPES[wire_type].model_validate({**envelope, "time": at, "data": data})


def schema_file_name(wire_type: str) -> str:
    return f"{wire_type}.schema.json"


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` as stable, human-readable JSON (sorted keys are not used: the order
    pydantic gives is the reading order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_event_schemas(out_dir: Path) -> list[Path]:
    """Write ``<type>.schema.json`` for every wire type into ``out_dir``; return the paths."""
    return [
        write_json(out_dir / schema_file_name(wire_type), schema)
        for wire_type, schema in event_schemas().items()
    ]

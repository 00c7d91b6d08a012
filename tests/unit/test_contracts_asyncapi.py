"""The AsyncAPI 3.0 document: valid against the official schema, complete, self-consistent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from jsonschema import Draft7Validator
from typer.testing import CliRunner

from focus_sessions import cli_produce
from focus_sessions.contracts import topics
from focus_sessions.contracts.asyncapi import asyncapi_document
from focus_sessions.contracts.events import WIRE_TYPES
from focus_sessions.contracts.schema import example_event

SHARED_SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "schemas"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are published: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@pytest.mark.skipif(not SHARED_SCHEMAS.is_dir(),
                    reason=f"official schemas not found at {SHARED_SCHEMAS}")
def test_document_is_valid_asyncapi_3() -> None:
    official = json.loads((SHARED_SCHEMAS / "asyncapi-3.0.0.json").read_text())
    errors = list(Draft7Validator(official).iter_errors(asyncapi_document()))
    assert not errors, [e.message[:300] for e in errors]


def test_every_reference_resolves() -> None:
    document = asyncapi_document()
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        _resolve(document, ref)


def test_events_channel_carries_one_message_per_wire_type_keyed_by_user() -> None:
    document = asyncapi_document(events_topic="t.events", dlq_topic="t.events.dlq")
    channel = document["channels"]["sessionEvents"]
    assert channel["address"] == "t.events"
    messages = [_resolve(document, m["$ref"]) for m in channel["messages"].values()]
    assert sorted(m["name"] for m in messages) == sorted(WIRE_TYPES)
    for message in messages:
        assert "user_id" in message["bindings"]["kafka"]["key"]["description"]


def test_message_payload_schemas_accept_their_examples() -> None:
    document = asyncapi_document()
    # Payloads point into components/schemas: validate against the whole document as root.
    for message in document["components"]["messages"].values():
        if message["name"] not in WIRE_TYPES:
            continue
        schema = {**document, **_resolve(document, message["payload"]["$ref"])}
        check = Draft7Validator(schema)
        check.validate(example_event(message["name"]).model_dump(mode="json"))
        other = next(t for t in WIRE_TYPES if t != message["name"])
        assert not check.is_valid(example_event(other).model_dump(mode="json"))


def test_dead_letter_channel_documents_its_headers() -> None:
    document = asyncapi_document(dlq_topic="t.events.dlq")
    channel = document["channels"]["deadLetters"]
    assert channel["address"] == "t.events.dlq"
    (ref,) = channel["messages"].values()
    headers = _resolve(document, _resolve(document, ref["$ref"])["headers"]["$ref"])
    names = {topics.DLQ_REASON, topics.DLQ_DETAIL, topics.DLQ_ORIGINAL_TOPIC,
             topics.DLQ_ORIGINAL_PARTITION, topics.DLQ_ORIGINAL_OFFSET,
             topics.DLQ_ORIGINAL_KEY, topics.DLQ_ORIGINAL_SIZE, topics.DLQ_ORIGINAL_SHA256,
             topics.DLQ_OMITTED}
    assert names <= set(headers["properties"])
    assert topics.DLQ_REASON in headers["required"]
    assert topics.DLQ_ORIGINAL_KEY not in headers["required"]  # events may lack a key


def test_operations_cover_publishing_projecting_and_dead_lettering() -> None:
    operations = asyncapi_document()["operations"]
    assert {(o["action"], o["channel"]["$ref"]) for o in operations.values()} == {
        ("send", "#/channels/sessionEvents"),
        ("receive", "#/channels/sessionEvents"),
        ("send", "#/channels/deadLetters"),
    }


def test_schema_command_writes_schemas_and_asyncapi(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOCUS_EVENTS_TOPIC", "custom.events")
    app = typer.Typer()
    cli_produce.register(app)
    result = CliRunner().invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted([*(f"{t}.schema.json" for t in WIRE_TYPES), "asyncapi.json"])
    document = json.loads((tmp_path / "asyncapi.json").read_text())
    assert document["channels"]["sessionEvents"]["address"] == "custom.events"

"""The AsyncAPI 3.0 document for the events topic and its dead-letter topic.

Built from the same pydantic models as the JSON Schemas (:mod:`focus_sessions.contracts.schema`),
one message per
wire type, so the two can never disagree. Written by hand rather than by FastStream: FastStream
documents one union payload per channel and no headers, while the dead-letter channel's value is
its headers.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from focus_sessions.contracts import events as ev
from focus_sessions.contracts import topics
from focus_sessions.contracts.schema import ContractJsonSchema, annotate, example_event

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
_COMPONENT_REF = "#/components/schemas/{model}"

#: Dead-letter reasons the projector writes today; consumers should accept others too.
DLQ_REASONS = ["malformed-json", "unknown-type", "not-an-event", "invalid", "empty",
               "key-mismatch", "contradiction", "unstorable"]
DLQ_REBUILT = topics.DLQ_REBUILT


def _message_name(wire_type: str) -> str:
    # focus.session.ended.v2 -> sessionEndedV2
    _, noun, verb, version = wire_type.split(".")
    return f"{noun}{verb.capitalize()}{version.upper()}"


def _text(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def dead_letter_headers() -> dict[str, Any]:
    """Headers on every dead letter (values are UTF-8 text except the original key/value)."""
    return {
        "type": "object",
        "description": "Why the projector refused an event and where it came from.",
        "properties": {
            topics.DLQ_REASON: _text("Short stable code.", examples=DLQ_REASONS),
            topics.DLQ_DETAIL: _text("Human-readable explanation (at most 4000 bytes).",
                                     maxLength=4000),
            topics.DLQ_ORIGINAL_TOPIC: _text("Topic the event was read from."),
            topics.DLQ_ORIGINAL_PARTITION: _text(
                "Its partition, as decimal text; -1 when the event was rebuilt.",
                pattern=r"^-?\d+$"),
            topics.DLQ_ORIGINAL_OFFSET: _text(
                "Its offset, as decimal text; -1 when the event was rebuilt.",
                pattern=r"^-?\d+$"),
            topics.DLQ_ORIGINAL_KEY: _text("The original key bytes (the user id); absent when "
                                           "the event had no key, or one too long to carry."),
            topics.DLQ_ORIGINAL_SIZE: _text("Length of the original value in bytes, as decimal "
                                            "text.", pattern=r"^\d+$"),
            topics.DLQ_ORIGINAL_SHA256: _text("SHA-256 of the original value, lowercase hex.",
                                              pattern="^[0-9a-f]{64}$"),
            topics.DLQ_ORIGINAL_KEY_SHA256: _text(
                "SHA-256 of an original key too long to carry (over 1024 bytes).",
                pattern="^[0-9a-f]{64}$"),
            topics.DLQ_OMITTED: _text(
                "What was too large to carry: the message value is then empty (the original "
                "value is over FOCUS_DLQ_MAX_ORIGINAL_BYTES) and/or the key is left out; the "
                "original topic, partition and offset say where the bytes still are.",
                enum=["value", "key", "value,key"]),
            DLQ_REBUILT: _text("'true' when the original bytes were no longer at hand and the "
                               "value was re-encoded from the stored event.", enum=["true"]),
        },
        "required": [topics.DLQ_REASON, topics.DLQ_DETAIL, topics.DLQ_ORIGINAL_TOPIC,
                     topics.DLQ_ORIGINAL_PARTITION, topics.DLQ_ORIGINAL_OFFSET,
                     topics.DLQ_ORIGINAL_SIZE, topics.DLQ_ORIGINAL_SHA256],
    }


def _user_key() -> dict[str, Any]:
    # Inline, not a $ref: the 0.5.0 binding's key is oneOf(Reference, schema), and a bare
    # {"$ref": ...} matches both.
    return _text("data.user_id, UTF-8: every event of a user goes to one partition, in order.",
                 minLength=1, maxLength=255)


def _schemas() -> dict[str, Any]:
    models = [(model, "validation") for model in ev.WIRE_TYPES.values()]
    _, top = models_json_schema(
        models, ref_template=_COMPONENT_REF, schema_generator=ContractJsonSchema  # type: ignore[arg-type]
    )
    schemas: dict[str, Any] = top["$defs"]
    for name, schema in schemas.items():
        annotate(getattr(ev, name), schema)
    schemas["DeadLetterHeaders"] = dead_letter_headers()
    return schemas


def _event_message(wire_type: str) -> dict[str, Any]:
    model = ev.WIRE_TYPES[wire_type]
    example = example_event(wire_type)
    return {
        "name": wire_type,
        "title": wire_type,
        "summary": (model.model_fields["data"].annotation.__doc__ or "").split("\n")[0],
        "contentType": "application/json",
        "payload": {"$ref": _COMPONENT_REF.format(model=model.__name__)},
        "bindings": {"kafka": {"key": _user_key(),
                               "bindingVersion": KAFKA_BINDING}},
        "examples": [{"name": "example", "payload": example.model_dump(mode="json")}],
    }


def asyncapi_document(
    *,
    events_topic: str = topics.EVENTS_TOPIC,
    dlq_topic: str = topics.DEAD_LETTER_TOPIC,
    partitions: int = 6,
    consumer_group: str = "focus-projector",
    server: str = "kafka:9092",
    version: str = "0.1.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as JSON-ready dicts (topic names as deployed)."""
    names = {wire_type: _message_name(wire_type) for wire_type in ev.WIRE_TYPES}
    event_refs = [{"$ref": f"#/channels/sessionEvents/messages/{n}"} for n in names.values()]
    kafka_topic = {"kafka": {"topic": events_topic, "partitions": partitions,
                             "bindingVersion": KAFKA_BINDING}}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Focus Sessions events",
            "version": version,
            "description": (
                "Facts about Pomodoro focus sessions (started, interrupted, ended) as CloudEvents "
                "1.0 structured JSON. Key every message by data.user_id. Types are versioned in "
                "their name; unknown types go to the dead-letter topic, never dropped."),
        },
        "defaultContentType": "application/json",
        "servers": {"kafka": {"host": server, "protocol": "kafka",
                              "description": "Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)."}},
        "channels": {
            "sessionEvents": {
                "address": events_topic,
                "title": "Focus session events (the log of record)",
                "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names.values()},
                "bindings": kafka_topic,
            },
            "deadLetters": {
                "address": dlq_topic,
                "title": "Dead letters: events the projector refused, with the reason",
                "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
                "bindings": {"kafka": {"topic": dlq_topic, "bindingVersion": KAFKA_BINDING}},
            },
        },
        "operations": {
            "publishSessionEvent": {
                "action": "send", "channel": {"$ref": "#/channels/sessionEvents"},
                "summary": "Timer services publish one event per fact (acks=all).",
                "messages": event_refs,
            },
            "projectSessionEvents": {
                "action": "receive", "channel": {"$ref": "#/channels/sessionEvents"},
                "summary": "Projector replicas share the partitions in one consumer group.",
                "messages": event_refs,
                "bindings": {"kafka": {"groupId": {"type": "string", "enum": [consumer_group]},
                                       "bindingVersion": KAFKA_BINDING}},
            },
            "sendDeadLetter": {
                "action": "send", "channel": {"$ref": "#/channels/deadLetters"},
                "summary": "The projector parks an event it cannot apply; the partition moves on.",
                "messages": [{"$ref": "#/channels/deadLetters/messages/deadLetter"}],
            },
        },
        "components": {
            "schemas": _schemas(),
            "messages": {
                **{names[t]: _event_message(t) for t in ev.WIRE_TYPES},
                "deadLetter": {
                    "name": "dead-letter",
                    "title": "Dead letter",
                    "summary": "The refused event's original key and value; headers say why.",
                    "contentType": "application/octet-stream",
                    "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
                    "payload": _text("The original value bytes (usually CloudEvents JSON), "
                                     "unchanged; empty when they were too large to carry "
                                     "(header focus.dlq.original-omitted)."),
                    "bindings": {"kafka": {"key": _user_key(),
                                           "bindingVersion": KAFKA_BINDING}},
                },
            },
        },
    }

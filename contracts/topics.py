"""Topic names (defaults; deployments may override them through settings)."""

EVENTS_TOPIC = "focus.session.events"
DEAD_LETTER_TOPIC = "focus.session.events.dlq"

#: Headers set on every dead letter, so a reader can act without opening the value.
DLQ_REASON = "focus.dlq.reason"
DLQ_DETAIL = "focus.dlq.detail"
DLQ_ORIGINAL_TOPIC = "focus.dlq.original-topic"
DLQ_ORIGINAL_PARTITION = "focus.dlq.original-partition"
DLQ_ORIGINAL_OFFSET = "focus.dlq.original-offset"
DLQ_ORIGINAL_KEY = "focus.dlq.original-key"
#: The original value's length in bytes and its SHA-256 (hex): on every letter, so a letter
#: whose bytes were left out (too large) still identifies them.
DLQ_ORIGINAL_SIZE = "focus.dlq.original-size"
DLQ_ORIGINAL_SHA256 = "focus.dlq.original-sha256"
#: SHA-256 of an original key too long to carry (then ``focus.dlq.original-key`` is absent).
DLQ_ORIGINAL_KEY_SHA256 = "focus.dlq.original-key-sha256"
#: ``value``, ``key`` or ``value,key``: what was too large to carry (the letter's value is then
#: empty); the topic, partition and offset say where the original still is.
DLQ_OMITTED = "focus.dlq.original-omitted"
#: ``true`` when the original bytes were no longer at hand and the value was re-encoded.
DLQ_REBUILT = "focus.dlq.rebuilt"

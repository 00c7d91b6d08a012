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
DLQ_ORIGINAL_VALUE = "focus.dlq.original-value"

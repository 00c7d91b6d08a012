"""Dead letters: the event's original bytes plus headers that say why it was refused."""

from __future__ import annotations

from dataclasses import dataclass

from contracts import topics
from projections.batch import Contradiction
from projections.wire import encode


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def dead_letter(
    *,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
) -> DeadLetter:
    """A dead letter keeps the original key and value, and says where it came from and why."""
    original = value or b""
    headers = [
        (topics.DLQ_REASON, reason.encode()),
        (topics.DLQ_DETAIL, detail.encode()[:4000]),
        (topics.DLQ_ORIGINAL_TOPIC, topic.encode()),
        (topics.DLQ_ORIGINAL_PARTITION, str(partition).encode()),
        (topics.DLQ_ORIGINAL_OFFSET, str(offset).encode()),
        (topics.DLQ_ORIGINAL_VALUE, original),
    ]
    if key is not None:
        headers.append((topics.DLQ_ORIGINAL_KEY, key))
    return DeadLetter(key, original, headers)


def contradiction_letter(item: Contradiction, topic: str) -> DeadLetter:
    """A contradiction found now; if its event came in an earlier batch, its bytes are rebuilt
    from the stored fields (header ``focus.dlq.rebuilt: true``)."""
    loc = item.located
    letter = dead_letter(
        reason="contradiction",
        detail=item.reason,
        topic=topic,
        partition=loc.partition if loc else -1,
        offset=loc.offset if loc else -1,
        key=item.event.data.user_id.encode(),
        value=loc.raw if loc and loc.raw is not None else encode(item.event),
    )
    if loc is None or loc.raw is None:
        letter.headers.append(("focus.dlq.rebuilt", b"true"))
    return letter

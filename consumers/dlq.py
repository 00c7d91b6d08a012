"""Dead letters: why an event was refused, where it came from, and its original bytes once.

A letter always fits the dead-letter topic: the original value travels as the letter's value
only up to ``max_original`` bytes (and a key up to :data:`MAX_KEY_BYTES`); past that the letter
carries the original's size and SHA-256 digest instead, with header ``focus.dlq.original-omitted``
— the topic, partition and offset say where the bytes still are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from focus_sessions.contracts import topics
from focus_sessions.projections.batch import Contradiction
from focus_sessions.projections.wire import encode

#: Default of ``FOCUS_DLQ_MAX_ORIGINAL_BYTES``: half of Kafka's default message size limit
#: (``max.message.bytes`` 1 MiB), leaving room for the headers.
MAX_ORIGINAL_BYTES = 512 * 1024
#: A key longer than this (a valid event's key is a user id of at most 255 characters) is
#: left out of the letter like an oversized value: its size and digest are sent instead.
MAX_KEY_BYTES = 1024
#: Longest ``focus.dlq.detail`` header, in bytes.
MAX_DETAIL_BYTES = 4000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def origin(self) -> tuple[bytes, ...]:
        """What names this letter's event and reason (a batch retried sends a letter once)."""
        wanted = (topics.DLQ_REASON, topics.DLQ_ORIGINAL_PARTITION, topics.DLQ_ORIGINAL_OFFSET,
                  topics.DLQ_ORIGINAL_SHA256)
        found = dict(self.headers)
        return tuple(found.get(name, b"") for name in wanted)


def dead_letter(
    *,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    max_original: int = MAX_ORIGINAL_BYTES,
) -> DeadLetter:
    """A dead letter: the original key and value (each once, if they fit), where they came
    from and why they were refused."""
    original = value or b""
    headers = [
        (topics.DLQ_REASON, reason.encode()),
        (topics.DLQ_DETAIL, _clip(detail)),
        (topics.DLQ_ORIGINAL_TOPIC, topic.encode()),
        (topics.DLQ_ORIGINAL_PARTITION, str(partition).encode()),
        (topics.DLQ_ORIGINAL_OFFSET, str(offset).encode()),
        (topics.DLQ_ORIGINAL_SIZE, str(len(original)).encode()),
        (topics.DLQ_ORIGINAL_SHA256, hashlib.sha256(original).hexdigest().encode()),
    ]
    omitted = []
    if len(original) > max_original:
        omitted.append(b"value")
        original = b""
    if key is not None and len(key) > MAX_KEY_BYTES:
        omitted.append(b"key")
        headers.append((topics.DLQ_ORIGINAL_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()))
        key = None
    if key is not None:
        headers.append((topics.DLQ_ORIGINAL_KEY, key))
    if omitted:
        headers.append((topics.DLQ_OMITTED, b",".join(omitted)))
    return DeadLetter(key, original, headers)


def _clip(detail: str) -> bytes:
    """At most :data:`MAX_DETAIL_BYTES` of UTF-8, cut on a character boundary."""
    raw = detail.encode(errors="backslashreplace")
    if len(raw) <= MAX_DETAIL_BYTES:
        return raw
    return raw[:MAX_DETAIL_BYTES].decode(errors="ignore").encode()


def contradiction_letter(item: Contradiction, topic: str,
                         max_original: int = MAX_ORIGINAL_BYTES) -> DeadLetter:
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
        max_original=max_original,
    )
    if loc is None or loc.raw is None:
        letter.headers.append((topics.DLQ_REBUILT, b"true"))
    return letter

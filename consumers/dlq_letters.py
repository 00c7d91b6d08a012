"""Dead letters as an operator sees them: what :mod:`focus_sessions.consumers.dlq` writes,
read back from a letter's headers and value, and filtered (pure: no Kafka, no clock).

A letter's headers (:mod:`focus_sessions.contracts.topics`, written by
:func:`focus_sessions.consumers.dlq.dead_letter`) say why and where from; its value is the
original event's bytes, unless they were too large (``focus.dlq.original-omitted``). The user,
session, event id and type are read from those bytes when they parse as JSON, whatever the
reason they were refused; the user falls back to the original Kafka key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from focus_sessions.contracts import topics

#: Headers a redrive adds to each event it publishes: how many times these bytes have gone back
#: (1 on the first redrive), which run sent it, and the letter it came from
#: (``topic:partition:offset`` of the dead-letter topic).
REDRIVE_COUNT = "focus.redrive.count"
REDRIVE_RUN = "focus.redrive.run"
REDRIVE_LETTER = "focus.redrive.letter"


@dataclass(frozen=True, slots=True)
class Letter:
    """One record of the dead-letter topic."""

    partition: int  # of the dead-letter topic
    offset: int
    dead_lettered_at: datetime | None  # the record's timestamp
    value: bytes  # the original bytes (empty when omitted)
    headers: tuple[tuple[str, bytes], ...]
    reason: str
    detail: str
    original_topic: str
    original_partition: int
    original_offset: int
    original_key: bytes | None
    original_size: int
    original_sha256: str
    omitted: frozenset[str]
    rebuilt: bool
    #: ``focus.redrive.count`` carried by the letter (0 when absent: a projector copies no
    #: headers of the record it refused, so the ledger's count is what the loop guard uses).
    redrive_count: int
    user_id: str | None
    session_id: str | None
    event_id: str | None
    event_type: str | None

    @property
    def place(self) -> tuple[int, int]:
        """``(partition, offset)`` in the dead-letter topic: the letter's identity."""
        return self.partition, self.offset

    @property
    def origin(self) -> str:
        return f"{self.original_topic}[{self.original_partition}]@{self.original_offset}"

    def key(self) -> bytes | None:
        """The Kafka key a redrive publishes it with: the event's user (every event of a user
        on one partition), else its original key."""
        return self.user_id.encode() if self.user_id is not None else self.original_key


def parse_letter(partition: int, offset: int, timestamp_ms: int | None, value: bytes | None,
                 headers: Sequence[tuple[str, bytes]]) -> Letter:
    """A letter from one dead-letter record; missing or garbled headers read as unknown."""
    found = dict(headers)

    def text(name: str, default: str = "") -> str:
        raw = found.get(name)
        return default if raw is None else raw.decode(errors="replace")

    def number(name: str, default: int = -1) -> int:
        try:
            return int(text(name, str(default)))
        except ValueError:
            return default

    value = value or b""
    fields = _peek(value)
    found_data = fields.get("data")
    data: dict[str, Any] = found_data if isinstance(found_data, dict) else {}
    original_key = found.get(topics.DLQ_ORIGINAL_KEY)
    user = _text(data.get("user_id"))
    if user is None and original_key is not None:
        user = original_key.decode(errors="replace")
    omitted = frozenset(p for p in text(topics.DLQ_OMITTED).split(",") if p)
    return Letter(
        partition=partition, offset=offset,
        dead_lettered_at=(None if timestamp_ms is None or timestamp_ms < 0 else
                          datetime.fromtimestamp(timestamp_ms / 1000, UTC)),
        value=value, headers=tuple(headers),
        reason=text(topics.DLQ_REASON, "unknown"), detail=text(topics.DLQ_DETAIL),
        original_topic=text(topics.DLQ_ORIGINAL_TOPIC),
        original_partition=number(topics.DLQ_ORIGINAL_PARTITION),
        original_offset=number(topics.DLQ_ORIGINAL_OFFSET),
        original_key=original_key, original_size=number(topics.DLQ_ORIGINAL_SIZE, len(value)),
        original_sha256=text(topics.DLQ_ORIGINAL_SHA256),
        omitted=omitted, rebuilt=text(topics.DLQ_REBUILT) == "true",
        redrive_count=max(0, number(REDRIVE_COUNT, 0)),
        user_id=user, session_id=_text(data.get("session_id")) or _text(fields.get("subject")),
        event_id=_text(fields.get("id")), event_type=_text(fields.get("type")),
    )


def _peek(value: bytes) -> dict[str, Any]:
    """The JSON object in ``value``, or nothing (a letter's bytes may be anything)."""
    if not value.startswith(b"{"):
        return {}
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which letters a command looks at; an empty field lets every letter through."""

    reasons: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    sessions: frozenset[str] = frozenset()
    #: ``(partition, offset)`` places, e.g. from ``focus dlq show 0:12``.
    places: frozenset[tuple[int, int]] = frozenset()
    since: datetime | None = None  # dead-lettered at or after
    until: datetime | None = None  # dead-lettered before

    def matches(self, letter: Letter) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.users and letter.user_id not in self.users:
            return False
        if self.sessions and (letter.session_id or "").lower() not in self.sessions:
            return False
        if self.places and letter.place not in self.places:
            return False
        at = letter.dead_lettered_at
        if self.since is not None and (at is None or at < self.since):
            return False
        return self.until is None or (at is not None and at < self.until)

    def as_dict(self) -> dict[str, object]:
        """The filter as JSON-ready values (a redrive run records what it was given)."""
        return {
            "reasons": sorted(self.reasons), "users": sorted(self.users),
            "sessions": sorted(self.sessions),
            "places": [f"{p}:{o}" for p, o in sorted(self.places)],
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


def letter_filter(*, reasons: Iterable[str] = (), users: Iterable[str] = (),
                  sessions: Iterable[str] = (), places: Iterable[str] = (),
                  since: str | None = None, until: str | None = None,
                  now: datetime) -> LetterFilter:
    """A filter from a command's options (each list may hold comma-separated items); raises
    ValueError saying which value is wrong."""
    return LetterFilter(
        reasons=_items(reasons), users=_items(users),
        sessions=frozenset(s.lower() for s in _items(sessions)),
        places=frozenset(parse_place(p) for p in _items(places)),
        since=parse_time(since, now) if since else None,
        until=parse_time(until, now) if until else None,
    )


def _items(values: Iterable[str]) -> frozenset[str]:
    return frozenset(item.strip() for v in values for item in v.split(",") if item.strip())


def parse_place(text: str) -> tuple[int, int]:
    """``PARTITION:OFFSET`` of a letter (``OFFSET`` alone means partition 0)."""
    part, _, offset = text.rpartition(":")
    try:
        place = (int(part) if part else 0, int(offset))
    except ValueError:
        raise ValueError(f"{text!r} is not PARTITION:OFFSET, e.g. 0:12") from None
    if min(place) < 0:
        raise ValueError(f"{text!r}: partition and offset are not negative")
    return place


_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime) -> datetime:
    """A point in time: ISO 8601 (no zone: UTC), or an age before ``now`` such as ``30m``,
    ``2h``, ``7d``."""
    text = text.strip()
    ago = _AGO.match(text)
    if ago:
        return now - timedelta(**{_UNITS[ago[2]]: float(ago[1])})
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time (2026-01-31T09:00Z) nor an "
                         "age (90s, 30m, 2h, 7d, 1w)") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)

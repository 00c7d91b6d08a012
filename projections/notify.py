"""Change notices: what a committed write changed in the read models, for readers' caches.

Every writer of the live read models sends one ``NOTIFY`` inside its transaction, so PostgreSQL
delivers it exactly when (and only if) the write commits, in commit order:

* the projector, per batch: the positions it moved and the users whose rollup changed
  (:func:`batch_notice`), or ``users: null`` ("any user") when the list would not fit in one
  notification (PostgreSQL caps a payload below 8,000 bytes);
* anything else that rewrites tables or moves positions (a replay's swap, a projector taking
  partitions): a flush (:func:`flush_notice`), after which a reader drops everything it cached
  and reads the positions again.

The API's analytics cache (``focus_sessions.api.cache``) is the reader. A notice names its schema,
so writes into a replay's shadow tables never disturb the live readers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, AsyncCursor

CHANNEL = "focus_projection"
#: PostgreSQL refuses payloads of 8,000 bytes or more; keep a margin for the envelope.
MAX_PAYLOAD = 7_900
_NOTIFY = "SELECT pg_notify(%s, %s)"


@dataclass(frozen=True, slots=True)
class Moved:
    """One partition's position after a batch: ``last_event_time`` is the batch's newest event
    time (the stored one is the greatest of all batches', which a reader keeps by ``max``)."""

    partition: int
    next_offset: int
    last_event_time: datetime | None


@dataclass(frozen=True, slots=True)
class Notice:
    """A parsed notice. ``flush``: drop everything, read positions again. Otherwise ``users``
    changed (``None``: possibly any user) and ``positions`` moved, on ``topic``."""

    schema: str
    flush: bool
    topic: str = ""
    positions: tuple[Moved, ...] = ()
    users: frozenset[str] | None = None


def batch_notice(schema: str, topic: str, moved: Sequence[Moved], users: Iterable[str]) -> str:
    """The payload of one projector batch; ``users: null`` when the names would not fit."""
    positions = [[m.partition, m.next_offset,
                  m.last_event_time.isoformat() if m.last_event_time else None] for m in moved]
    head = {"schema": schema, "topic": topic, "positions": positions}
    listed = list(users)
    payload = ""
    if sum(len(u) + 3 for u in listed) < MAX_PAYLOAD:  # skip dumping a list that cannot fit
        payload = json.dumps({**head, "users": listed}, separators=(",", ":"))
    if not payload or len(payload.encode()) > MAX_PAYLOAD:
        payload = json.dumps({**head, "users": None}, separators=(",", ":"))
    return payload


def flush_notice(schema: str) -> str:
    return json.dumps({"schema": schema, "flush": True}, separators=(",", ":"))


def parse(payload: str) -> Notice:
    """Read a payload of this module; anything else reads as a flush of ``public`` (a reader
    that cannot tell what changed must assume everything did)."""
    try:
        raw: Any = json.loads(payload)
        schema = str(raw["schema"])
        if raw.get("flush"):
            return Notice(schema, True)
        moved = tuple(
            Moved(int(p), int(o), datetime.fromisoformat(t) if t is not None else None)
            for p, o, t in raw["positions"]
        )
        users = raw["users"]
        return Notice(schema, False, str(raw["topic"]), moved,
                      None if users is None else frozenset(map(str, users)))
    except (ValueError, KeyError, TypeError):
        return Notice("public", True)


async def send(conn: AsyncConnection[Any] | AsyncCursor[Any], payload: str) -> None:
    """Queue ``payload`` on :data:`CHANNEL`; delivered when the caller's transaction commits."""
    await conn.execute(_NOTIFY, (CHANNEL, payload))

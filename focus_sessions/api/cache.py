"""The analytics cache: a user's all-time analytics, kept as JSON bytes, coherent with the
projection through the writers' change notices (:mod:`focus_sessions.projections.notify`).

An entry is dropped no later than the listener (:mod:`focus_sessions.api.listener`) reads the
notice of
a commit that changed its user; a flush notice, a lost listener connection or the entry's age
(``ttl_seconds``, for writes that send no notice, such as an edit by hand) drops it too. So an
entry is never staler than the notices the process has not read yet, the same delay a reader of
a replica has. A miss that raced a notice is not stored: :meth:`ticket` is taken before the
read, and :meth:`store` refuses it if a notice dropped that user (or everyone) in between.

The freshness served with a hit is the one the notices have brought: every notice that moved a
position has also dropped the entries it changed, so the data of a live entry is current as of
those positions. It is kept as encoded JSON and spliced into each hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime

from pydantic import BaseModel

from focus_sessions.api import models
from focus_sessions.projections.notify import Notice
from focus_sessions.projections.queries import Freshness, Position

_FRESHNESS_KEY = b',"freshness":'


class Ticket:
    """Identity only: the proof that no notice dropped a user since its read began."""

    __slots__ = ()


class AnalyticsCache:
    """Entries by user id. Bounded: the oldest entry goes first when full. ``capacity`` 0 turns
    the cache off (every read goes to PostgreSQL)."""

    def __init__(self, capacity: int, ttl_seconds: float, *, schema: str = "public",
                 topic: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl = ttl_seconds
        self.schema = schema
        self.topic = topic
        self._clock = clock
        #: user -> (response JSON up to the freshness, expiry on ``clock``)
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._positions: dict[int, Position] = {}
        self._freshness = b""
        #: user -> the ticket of the newest read of it that may still be stored
        self._pending: dict[str, Ticket] = {}
        self.online = False
        #: hits answered by the fast path; plain reads it could not answer (counted by
        #: :meth:`ticket`); reads refused storage because a notice raced them (all exported by
        #: focus_sessions.api.metrics)
        self.hits = self.misses = self.refused = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- the read path -------------------------------------------------------------------

    def get(self, user_id: str) -> bytes | None:
        """The whole response body for ``user_id``, or None (not cached, expired, offline)."""
        found = self._entries.get(user_id)
        if found is None:
            return None
        body, expires = found
        if self._clock() >= expires:
            del self._entries[user_id]
            return None
        return body + self._freshness

    def ticket(self, user_id: str) -> Ticket | None:
        """Taken before a read of ``user_id`` that may be stored; None when the cache cannot
        take one. Any notice that drops the user (or everyone) voids the ticket."""
        if self.capacity <= 0:
            return None
        self.misses += 1  # the route reads it: the fast path did not answer
        if not self.online:
            return None
        if len(self._pending) >= self.capacity:  # reads that failed never came back to store
            self._pending.clear()
        ticket = self._pending[user_id] = Ticket()
        return ticket

    def store(self, ticket: Ticket | None, user_id: str, response: BaseModel) -> bool:
        """Keep ``response`` (an analytics model, read after ``ticket`` was taken) unless a
        notice dropped the user since: then it may predate a change and is refused."""
        if ticket is None:
            return False
        if self._pending.get(user_id) is not ticket:
            self.refused += 1
            return False
        del self._pending[user_id]
        body = response.model_dump_json(by_alias=True, exclude={"freshness"}).encode()
        if user_id not in self._entries and len(self._entries) >= self.capacity:
            del self._entries[next(iter(self._entries))]
        self._entries[user_id] = (body[:-1] + _FRESHNESS_KEY, self._clock() + self.ttl)
        return True

    def forget(self, user_id: str) -> None:
        """Drop one user's entry (a write of this process just saw its event projected)."""
        self._drop((user_id,))

    # -- the listener's side -------------------------------------------------------------

    def go_online(self, freshness: Freshness) -> None:
        """Start serving from empty, at ``freshness`` (read after LISTEN was in place)."""
        self._clear()
        self._positions = {p.partition: p for p in freshness.positions}
        self._encode_freshness()
        self.online = True

    def go_offline(self) -> None:
        """Notices may be lost from here on: serve nothing, keep nothing."""
        self._clear()
        self.online = False

    def apply(self, notice: Notice) -> bool:
        """Act on one notice of this cache's schema. True when the caller must read the
        positions again and call :meth:`go_online` (a flush)."""
        if notice.schema != self.schema:
            return False
        if notice.flush:
            self.go_offline()
            return True
        if notice.topic != self.topic:
            return False
        if notice.users is None:
            self._clear()
        else:
            self._drop(notice.users)
        for moved in notice.positions:
            self._move(moved.partition, moved.next_offset, moved.last_event_time)
        self._encode_freshness()
        return False

    def _drop(self, users: Iterable[str]) -> None:
        entries, pending = self._entries, self._pending
        for user in users:
            entries.pop(user, None)
            pending.pop(user, None)

    def _clear(self) -> None:
        self._entries.clear()
        self._pending.clear()

    def _move(self, partition: int, next_offset: int, event_time: datetime | None) -> None:
        known = self._positions.get(partition)
        if known is not None:
            next_offset = max(next_offset, known.next_offset)
            if known.last_event_time is not None and (
                    event_time is None or known.last_event_time > event_time):
                event_time = known.last_event_time
        self._positions[partition] = Position(partition, next_offset, event_time)

    def _encode_freshness(self) -> None:
        positions = [self._positions[p] for p in sorted(self._positions)]
        times = [p.last_event_time for p in positions if p.last_event_time is not None]
        out = models.freshness(Freshness(max(times) if times else None, positions))
        self._freshness = out.model_dump_json(by_alias=True).encode() + b"}"

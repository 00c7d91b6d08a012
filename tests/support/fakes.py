"""In-memory Kafka and PostgreSQL that drive the real
:class:`focus_sessions.consumers.projector.Projector`.

Fakes, not mocks: they keep state and answer as the real servers do, so a test asserts what
ended up stored and sent, not which calls were made.

- :class:`FakeBroker` holds topics as lists of records per partition. :class:`FakeConsumer`
  (``subscribe``, ``getmany``, ``assignment``, ``seek``, ``commit``) is a member of a
  :class:`FakeGroup`, which shares partitions out eagerly and calls the rebalance listeners.
  :class:`FakeProducer` appends to topics, refuses what is too large and fails on request.
- :class:`MemoryStore` holds the projection's tables in dicts, with transactions (READ
  COMMITTED: a transaction's writes are its own until commit) and row-locked, compare-and-set
  positions; :class:`MemoryRepository` is ``ProjectionRepository``'s interface over it. Rows,
  records and deltas come from the same pure code (:func:`focus_sessions.projections.batch.plan`
  and the row
  mapping of :mod:`focus_sessions.projections.repository`);
  ``tests/unit/test_repository_contract.py`` runs
  one contract against this store and against PostgreSQL.

Each fake takes the failures a test needs (``fail_next``, ``break_writes``, ``refuse``,
``refuse_connections``) and can hold a step open (``hold_next``) so that a rebalance, a stop or a
second projector lands exactly there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Literal, NamedTuple, TypeAlias, TypeVar
from uuid import UUID

import psycopg
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
)
from aiokafka.partitioner import murmur2
from aiokafka.structs import RecordMetadata

from focus_sessions.projections.batch import Plan
from focus_sessions.projections.fold import History, SessionRow, extend
from focus_sessions.projections.readmodels import user_totals, weekly
from focus_sessions.projections.readmodels.sessions import (
    SESSION_EVENT_COLUMNS,
    event_from_record,
    event_record,
)
from focus_sessions.projections.readmodels.user_totals import record as stats_record
from focus_sessions.projections.readmodels.weekly import WeekDelta, WeekKey
from focus_sessions.projections.repository import Advance, Fenced, Unstorable
from focus_sessions.projections.wire import AnyEvent
from tests.support.projection import Message, as_record

Record: TypeAlias = ConsumerRecord[bytes, bytes]

# -- Kafka ---------------------------------------------------------------------------------


class FakeBroker:
    """Topics in memory: records per partition, offsets from 0, nothing ever deleted.

    A topic sent to before it was created gets one partition (as with auto-creation)."""

    def __init__(self, topics: Mapping[str, int] | None = None, *,
                 max_message_bytes: int | None = None) -> None:
        #: The broker's own limit: a larger message's acknowledgement fails.
        self.max_message_bytes = max_message_bytes
        self._logs: dict[str, list[list[Record]]] = {}
        self._groups: dict[str, FakeGroup] = {}
        self._changed = asyncio.Event()
        for name, partitions in (topics or {}).items():
            self.create_topic(name, partitions)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        self._logs[name] = [[] for _ in range(partitions)]

    def append(self, topic: str, value: bytes | None, *, key: bytes | None = None,
               partition: int | None = None, headers: Sequence[tuple[str, bytes]] = ()
               ) -> tuple[int, int]:
        """Append one record; return its ``(partition, offset)``. Without a partition, a key
        chooses one as Kafka's default partitioner does (murmur2); no key means partition 0."""
        if topic not in self._logs:
            self.create_topic(topic)
        log = self._logs[topic]
        if partition is None:
            partition = 0 if key is None else (murmur2(key) & 0x7FFFFFFF) % len(log)
        records = log[partition]
        records.append(ConsumerRecord(
            topic=topic, partition=partition, offset=len(records), timestamp=0,
            timestamp_type=0, key=key, value=value, checksum=None,
            serialized_key_size=-1 if key is None else len(key),
            serialized_value_size=-1 if value is None else len(value),
            headers=tuple(headers)))
        self.changed()
        return partition, len(records) - 1

    def publish(self, topic: str, messages: Iterable[Message], *, partition: int | None = None
                ) -> list[tuple[int, int]]:
        """Append events (keyed by user, as producers must) or raw ``(key, value)`` pairs."""
        placed = []
        for message in messages:
            key, value = as_record(message)
            placed.append(self.append(topic, value, key=key, partition=partition))
        return placed

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, partition by partition, in offset order."""
        return [r for records in self._logs.get(topic, []) for r in records]

    def read(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        return self._logs[tp.topic][tp.partition][offset:offset + limit]

    def partitions(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(len(self._logs.get(topic, [])))]

    def ends(self, topic: str) -> dict[int, int]:
        """The next offset of every partition of ``topic``."""
        return {p: len(records) for p, records in enumerate(self._logs.get(topic, []))}

    def group(self, group_id: str) -> FakeGroup:
        if group_id not in self._groups:
            self._groups[group_id] = FakeGroup(self)
        return self._groups[group_id]

    def consumer(self, group_id: str = "projector") -> FakeConsumer:
        return FakeConsumer(self, self.group(group_id))

    def changed(self) -> None:
        """Wake every consumer waiting in ``getmany`` (records, a seek or a rebalance came)."""
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def change(self) -> asyncio.Event:
        """Set at the next :meth:`changed`."""
        return self._changed


class FakeGroup:
    """A consumer group. Rebalances are eager, as aiokafka's are: every member gives up every
    partition (``on_partitions_revoked``), then each gets its round-robin share, starting at the
    group's committed offset or 0 (``on_partitions_assigned``)."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.members: list[FakeConsumer] = []
        self.committed: dict[TopicPartition, int] = {}
        #: Completed rebalances.
        self.generation = 0
        self._pending = False
        self._lock = asyncio.Lock()

    def join(self, member: FakeConsumer) -> None:
        if member not in self.members:
            self.members.append(member)
        self._ask()

    def leave(self, member: FakeConsumer) -> None:
        if member in self.members:
            self.members.remove(member)
            member.assigned = set()
            self._ask()

    def _ask(self) -> None:
        self._pending = True
        self.broker.changed()

    async def settle(self) -> None:
        """Run the rebalance a join or leave asked for, or wait out the one in progress (a
        member's ``getmany`` returns nothing of its partitions while they move)."""
        while self._pending or self._lock.locked():
            if self._lock.locked():
                async with self._lock:
                    pass
            else:
                await self.rebalance()

    async def rebalance(self) -> None:
        """Share the partitions out again, calling every member's listener (what a join, a leave
        or a missed heartbeat does). A test may call this at any moment."""
        async with self._lock:
            self._pending = False
            members = list(self.members)
            if not members:
                return
            await asyncio.gather(*(m.revoke() for m in members))
            shares: dict[int, list[TopicPartition]] = {id(m): [] for m in members}
            topics = sorted({t for m in members for t in m.topics})
            everything = [tp for t in topics for tp in self.broker.partitions(t)]
            for n, tp in enumerate(everything):
                shares[id(members[n % len(members)])].append(tp)
            self.generation += 1
            await asyncio.gather(*(m.assign(shares[id(m)]) for m in members))
        self.broker.changed()


class FakeConsumer:
    """What the projector uses of ``AIOKafkaConsumer``, as one member of a :class:`FakeGroup`."""

    def __init__(self, broker: FakeBroker, group: FakeGroup) -> None:
        self.broker = broker
        self.group = group
        self.topics: list[str] = []
        self.listener: ConsumerRebalanceListener | None = None
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        #: What each ``getmany`` that returned records returned: partition -> (first, last).
        self.fetches: list[dict[int, tuple[int, int]]] = []
        #: Every offset commit, in order.
        self.commits: list[dict[TopicPartition, int]] = []
        self._polls = 0

    def subscribe(self, topics: Sequence[str],
                  listener: ConsumerRebalanceListener | None = None) -> None:
        """Join the group; partitions arrive with the next rebalance (at the next poll)."""
        self.topics = list(topics)
        self.listener = listener
        self.group.join(self)

    async def stop(self) -> None:
        """Leave the group; the others share its partitions at their next poll."""
        self.group.leave(self)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self.assigned:
            raise IllegalStateError(f"No current assignment for partition {tp}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self.positions[tp] = offset
        self.broker.changed()

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        """Up to ``max_records`` records of the assigned partitions, from their positions;
        waits up to ``timeout_ms`` for some when there are none."""
        await asyncio.sleep(0)  # a poll always yields to the loop, as a real one does
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            await self.group.settle()
            change = self.broker.change  # taken before reading: no wake-up is missed
            drained = self._drain(partitions, max_records)
            if drained:
                self.fetches.append({tp.partition: (rs[0].offset, rs[-1].offset)
                                     for tp, rs in drained.items()})
                return drained
            left = deadline - loop.time()
            if left <= 0:
                return {}
            try:
                await asyncio.wait_for(change.wait(), left)
            except TimeoutError:
                return {}

    def _drain(self, wanted: Sequence[TopicPartition], max_records: int | None
               ) -> dict[TopicPartition, list[Record]]:
        owned = sorted(tp for tp in self.assigned if not wanted or tp in wanted)
        if not owned:
            return {}
        # each poll starts one partition further on, so a small max_records serves them all
        start = self._polls % len(owned)
        self._polls += 1
        left = max_records or 1 << 62
        drained: dict[TopicPartition, list[Record]] = {}
        for tp in owned[start:] + owned[:start]:
            records = self.broker.read(tp, self.positions.get(tp, 0), left)
            if records:
                drained[tp] = records
                self.positions[tp] = records[-1].offset + 1
                left -= len(records)
                if not left:
                    break
        return drained

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Record the group's committed offsets (only for partitions this member holds)."""
        await asyncio.sleep(0)
        chosen = dict(self.positions if offsets is None else offsets)
        for tp in chosen:
            if tp not in self.assigned:
                raise IllegalStateError(f"Partition {tp} is not assigned")
        self.group.committed.update(chosen)
        self.commits.append(chosen)

    async def revoke(self) -> None:
        if self.listener is not None:
            await self.listener.on_partitions_revoked(set(self.assigned))
        self.assigned = set()

    async def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self.assigned = set(partitions)
        self.positions = {tp: self.group.committed.get(tp, 0) for tp in partitions}
        if self.listener is not None:
            await self.listener.on_partitions_assigned(set(partitions))


class FakeProducer:
    """What the projector uses of ``AIOKafkaProducer``: ``send`` returns a future of the
    broker's acknowledgement. A message over ``max_request_size`` is refused by ``send``
    itself, as aiokafka's client-side check does; one over the broker's
    ``max_message_bytes`` fails its acknowledgement."""

    def __init__(self, broker: FakeBroker, *, max_request_size: int = 1024 * 1024) -> None:
        self.broker = broker
        self.max_request_size = max_request_size
        #: Every ``send`` called, failed or not.
        self.attempts = 0
        self._failures: dict[int, tuple[type[KafkaError], bool]] = {}

    def fail_next(self, times: int = 1, *, after: int = 0,
                  error: type[KafkaError] = KafkaTimeoutError, raised: bool = False) -> None:
        """Fail ``times`` sends, after letting the next ``after`` through. Nothing is appended:
        the acknowledgement fails with ``error`` (no answer in time), or with ``raised``
        ``send`` itself raises it (no metadata, a full buffer)."""
        for n in range(after, after + times):
            self._failures[self.attempts + n + 1] = (error, raised)

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Sequence[tuple[str, bytes]] | None = None
                   ) -> asyncio.Future[RecordMetadata]:
        self.attempts += 1
        size = len(value or b"") + len(key or b"")
        if size > self.max_request_size:
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the "
                f"maximum request size you have configured ({self.max_request_size})")
        acknowledged: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        failure = self._failures.pop(self.attempts, None)
        limit = self.broker.max_message_bytes
        if failure is not None:
            error, raised = failure
            if raised:
                raise error("FakeProducer.fail_next")
            acknowledged.set_exception(error("FakeProducer.fail_next"))
        elif limit is not None and size > limit:
            acknowledged.set_exception(MessageSizeTooLargeError(f"{size} > {limit} bytes"))
        else:
            p, offset = self.broker.append(topic, value, key=key, partition=partition,
                                           headers=headers or ())
            acknowledged.set_result(RecordMetadata(topic, p, TopicPartition(topic, p), offset,
                                                   timestamp_ms or 0, 0, 0))
        return acknowledged


# -- PostgreSQL ----------------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")
_GONE: Any = object()  # a deleted row, among a transaction's writes


class Table(Generic[K, V]):
    """One table's committed rows."""

    def __init__(self) -> None:
        self.rows: dict[K, V] = {}


class Position(NamedTuple):
    next_offset: int
    last_event_time: datetime | None


@dataclass(frozen=True)
class Snapshot:
    """The projection's committed tables as plain values: runs compare equal when they stored
    the same (PostgreSQL's are read into the same shape by the contract test)."""

    positions: dict[tuple[str, int], int]
    #: ``session_events`` rows in ``SESSION_EVENT_COLUMNS`` order, by (session id, event id).
    events: dict[tuple[UUID, UUID], tuple[Any, ...]]
    sessions: dict[UUID, SessionRow]
    #: ``focus_user_stats`` rows without the user id (``STATS_COLUMNS[1:]``), by user.
    totals: dict[str, tuple[Any, ...]]
    #: (sessions_ended, sessions_completed, focus_seconds) by (user, week start).
    weekly: dict[WeekKey, tuple[int, int, Decimal]]
    #: (event id, session id, detail) by (topic, partition, offset).
    unstorable: dict[tuple[str, int, int], tuple[UUID, UUID, str]]


class Transaction:
    """Writes kept apart until commit; reads see them over the latest committed rows."""

    def __init__(self) -> None:
        self._writes: dict[int, tuple[Table[Any, Any], dict[Any, Any]]] = {}
        #: A statement failed: PostgreSQL answers the COMMIT with a ROLLBACK.
        self.failed = False

    def get(self, table: Table[K, V], key: K) -> V | None:
        mine = self._writes.get(id(table))
        if mine is not None and key in mine[1]:
            value = mine[1][key]
            return None if value is _GONE else value
        return table.rows.get(key)

    def rows(self, table: Table[K, V]) -> dict[K, V]:
        merged = dict(table.rows)
        for key, value in self._writes.get(id(table), (table, {}))[1].items():
            if value is _GONE:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def put(self, table: Table[K, V], key: K, value: V) -> None:
        self._writes.setdefault(id(table), (table, {}))[1][key] = value

    def delete(self, table: Table[K, Any], key: K) -> None:
        self.put(table, key, _GONE)

    def commit(self) -> None:
        for table, writes in self._writes.values():
            for key, value in writes.items():
                if value is _GONE:
                    table.rows.pop(key, None)
                else:
                    table.rows[key] = value


class Hold:
    """A step stopped where the test wants it: :meth:`reached` when it gets there, and it goes
    on after :meth:`release`."""

    def __init__(self) -> None:
        self._reached = asyncio.Event()
        self._released = asyncio.Event()

    async def reached(self, within: float = 5.0) -> None:
        await asyncio.wait_for(self._reached.wait(), within)

    def release(self) -> None:
        self._released.set()

    async def pause(self) -> None:
        self._reached.set()
        await self._released.wait()


class MemoryStore:
    """The projection's tables, standing in for one PostgreSQL schema."""

    def __init__(self) -> None:
        self.positions: Table[tuple[str, int], Position] = Table()
        #: ``session_events`` records by session id, then event id.
        self.events: Table[UUID, dict[UUID, tuple[Any, ...]]] = Table()
        self.sessions: Table[UUID, SessionRow] = Table()
        self.totals: Table[str, tuple[Any, ...]] = Table()
        self.weekly: Table[WeekKey, WeekDelta] = Table()
        self.unstorable: Table[tuple[str, int, int], Unstorable] = Table()
        #: Connections opened.
        self.opened = 0
        #: Transactions waiting for a row lock another one holds.
        self.waiting = 0
        self._locks: dict[tuple[str, int], Transaction] = {}
        self._unlocked = asyncio.Condition()
        self._broken: list[type[psycopg.Error]] = []
        self._refused: Callable[[AnyEvent], bool] = lambda event: False
        self._refused_connections = 0
        self._holds: dict[str, Hold] = {}

    # -- what tests set up ---------------------------------------------------------------

    def break_writes(self, times: int = 1,
                     error: type[psycopg.Error] = psycopg.OperationalError) -> None:
        """Fail the next ``times`` writes (trial writes too) with ``error``, after they moved
        positions. An ``OperationalError`` is a lost server: the connection is closed too."""
        self._broken += [error] * times

    def refuse(self, predicate: Callable[[AnyEvent], bool]) -> None:
        """Refuse to store events for which ``predicate`` holds (``psycopg.DataError``), in
        every transaction, as PostgreSQL refuses a value it cannot store."""
        self._refused = predicate

    def refuse_connections(self, times: int = 1) -> None:
        self._refused_connections += times

    def hold_next(self, step: Literal["write", "connect"]) -> Hold:
        """Stop the next ``connect``, or the next write at its end (rows and positions written,
        row locks held, not committed), until the test releases it."""
        self._holds[step] = hold = Hold()
        return hold

    def move_position(self, topic: str, partition: int, offset: int) -> None:
        """Commit another writer's move of a position (as a replay's swap does)."""
        self.positions.rows[(topic, partition)] = Position(offset, None)

    # -- what tests read -----------------------------------------------------------------

    def positions_of(self, topic: str) -> dict[int, int]:
        return {p: pos.next_offset for (t, p), pos in self.positions.rows.items() if t == topic}

    def snapshot(self) -> Snapshot:
        return Snapshot(
            positions={key: pos.next_offset for key, pos in self.positions.rows.items()},
            events={(sid, eid): record for sid, records in self.events.rows.items()
                    for eid, record in records.items()},
            sessions=dict(self.sessions.rows),
            totals=dict(self.totals.rows),
            weekly={key: (d.sessions_ended, d.sessions_completed, d.focus_seconds)
                    for key, d in self.weekly.rows.items()},
            unstorable={key: (u.event_id, u.session_id, u.detail)
                        for key, u in self.unstorable.rows.items()})

    # -- what the connection and the repository use --------------------------------------

    async def connect(self) -> MemoryConnection:
        """A new connection (the projector's ``connect`` factory)."""
        await self.pause("connect")
        if self._refused_connections:
            self._refused_connections -= 1
            raise psycopg.OperationalError("connection refused (MemoryStore.refuse_connections)")
        self.opened += 1
        return MemoryConnection(self)

    async def pause(self, step: str) -> None:
        """Wait at ``step`` if a test holds it (:meth:`hold_next`)."""
        hold = self._holds.pop(step, None)
        if hold is not None:
            await hold.pause()

    def break_if_asked(self, conn: MemoryConnection) -> None:
        """Raise the next failure :meth:`break_writes` asked for, if any."""
        if self._broken:
            error = self._broken.pop(0)
            if issubclass(error, psycopg.OperationalError):
                conn.closed = True
            raise error("MemoryStore.break_writes")

    def refuses(self, event: AnyEvent) -> bool:
        return self._refused(event)

    async def lock(self, txn: Transaction, key: tuple[str, int]) -> None:
        """Wait until no other open transaction has written the row, then hold it (an
        UPDATE's row lock)."""
        async with self._unlocked:
            self.waiting += 1
            try:
                await self._unlocked.wait_for(lambda: self._locks.get(key, txn) is txn)
            finally:
                self.waiting -= 1
            self._locks[key] = txn

    async def release(self, txn: Transaction) -> None:
        async with self._unlocked:
            for key in [k for k, holder in self._locks.items() if holder is txn]:
                del self._locks[key]
            self._unlocked.notify_all()


class MemoryConnection:
    """What the projector uses of psycopg's ``AsyncConnection``."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.closed = False
        self.current: Transaction | None = None

    def transaction(self, force_rollback: bool = False) -> _TransactionScope:
        return _TransactionScope(self, force_rollback)

    def open_transaction(self) -> Transaction:
        if self.closed:
            raise psycopg.OperationalError("the connection is closed")
        if self.current is None:
            raise AssertionError("the repository is used only inside a transaction")
        return self.current

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> MemoryConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _TransactionScope:
    """Commits on a normal exit; discards the writes on an exception or ``force_rollback``."""

    def __init__(self, conn: MemoryConnection, force_rollback: bool) -> None:
        self.conn = conn
        self.force_rollback = force_rollback

    async def __aenter__(self) -> Transaction:
        if self.conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        assert self.conn.current is None, "nested transactions are not used here"
        self.conn.current = Transaction()
        return self.conn.current

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        txn, self.conn.current = self.conn.current, None
        assert txn is not None
        try:
            if exc_type is None and not self.force_rollback:
                if self.conn.closed:
                    raise psycopg.OperationalError("the connection was lost before COMMIT")
                if not txn.failed:
                    txn.commit()
        finally:
            await self.conn.store.release(txn)


class MemoryRepository:
    """``ProjectionRepository``'s methods over a :class:`MemoryStore` (the connection says
    which), with the same effects: the contract test runs against both."""

    async def ensure_positions(self, conn: MemoryConnection, topic: str,
                               partitions: Iterable[int]) -> dict[int, int]:
        txn, store = conn.open_transaction(), conn.store
        stored = {}
        for p in sorted(set(partitions)):
            position = txn.get(store.positions, (topic, p))
            if position is None:
                position = Position(0, None)
                txn.put(store.positions, (topic, p), position)
            stored[p] = position.next_offset
        return stored

    async def unstorable_positions(self, conn: MemoryConnection, topic: str
                                   ) -> set[tuple[int, int]]:
        txn = conn.open_transaction()
        return {(p, o) for t, p, o in txn.rows(conn.store.unstorable) if t == topic}

    async def load_histories(self, conn: MemoryConnection, session_ids: Sequence[UUID]
                             ) -> dict[UUID, History]:
        txn, store = conn.open_transaction(), conn.store
        histories = {}
        for sid in session_ids:
            records = txn.get(store.events, sid)
            if records:
                events = [event_from_record(dict(zip(SESSION_EVENT_COLUMNS, r, strict=True)))
                          for r in records.values()]
                histories[sid] = extend(History(), events)[0]
        return histories

    async def write(self, conn: MemoryConnection, topic: str, plan: Plan,
                    advances: Sequence[Advance], *, insert_new: bool = True,
                    unstorable: Sequence[Unstorable] = ()) -> None:
        """As ``ProjectionRepository.write``: positions first (compare-and-set), then events,
        rows, totals, weeks and unstorable events, inside the caller's transaction."""
        txn = conn.open_transaction()
        try:
            await self._write(conn, txn, topic, plan, advances, insert_new, unstorable)
        except psycopg.Error:
            txn.failed = True
            raise

    async def _write(self, conn: MemoryConnection, txn: Transaction, topic: str, plan: Plan,
                     advances: Sequence[Advance], insert_new: bool,
                     unstorable: Sequence[Unstorable]) -> None:
        store = conn.store
        for adv in sorted(advances, key=lambda a: a.partition):
            await store.lock(txn, (topic, adv.partition))
            position = txn.get(store.positions, (topic, adv.partition))
            if position is None or position.next_offset != adv.expected:
                raise Fenced(f"{topic}[{adv.partition}] is no longer at offset {adv.expected}: "
                             "another projector owns it now")
            txn.put(store.positions, (topic, adv.partition), Position(
                adv.next_offset, _greatest(position.last_event_time, adv.last_event_time)))
        store.break_if_asked(conn)
        for new in plan.new_events:
            event = new.located.event
            if store.refuses(event):
                raise psycopg.DataError(f"MemoryStore.refuse: event {event.id}")
            sid = event.data.session_id
            records = _copy(txn.get(store.events, sid))
            if event.id in records:
                raise psycopg.errors.UniqueViolation(
                    'duplicate key value violates unique constraint "session_events_pkey"')
            records[event.id] = event_record(event, new.status, new.located.partition,
                                             new.located.offset)
            txn.put(store.events, sid, records)
        if insert_new:
            for row in plan.new_rows:
                if txn.get(store.sessions, row.session_id) is not None:
                    raise psycopg.errors.UniqueViolation(
                        'duplicate key value violates unique constraint "focus_sessions_pkey"')
                txn.put(store.sessions, row.session_id, row)
        for row in plan.changed_rows if insert_new else plan.rows:
            txn.put(store.sessions, row.session_id, row)
        for sid, eid, status in plan.status_changes:
            records = _copy(txn.get(store.events, sid))
            if eid in records:
                record = records[eid]
                records[eid] = (*record[:4], status, *record[5:])
                txn.put(store.events, sid, records)
        self._add_totals(txn, store, plan)
        for key, delta in plan.rollups[weekly.MODEL.name].items():
            week = (txn.get(store.weekly, key) or WeekDelta()) + delta
            if week.sessions_ended == 0:
                txn.delete(store.weekly, key)
            else:
                txn.put(store.weekly, key, week)
        for u in unstorable:
            where = (topic, u.partition, u.offset)
            if txn.get(store.unstorable, where) is None:
                txn.put(store.unstorable, where, Unstorable(
                    u.partition, u.offset, u.event_id, u.session_id, u.detail.replace("\x00", "")))
        await store.pause("write")

    @staticmethod
    def _add_totals(txn: Transaction, store: MemoryStore, plan: Plan) -> None:
        deltas = plan.rollups[user_totals.MODEL.name]
        for user, delta in deltas.items():
            added = stats_record(user, delta)[1:]
            old = txn.get(store.totals, user)
            if old is not None:
                added = (*(a + b for a, b in zip(old[:6], added[:6], strict=True)),
                         _greatest(old[6], added[6]))
            txn.put(store.totals, user, added)
        for user in [u for u, d in deltas.items() if d.sessions_started < 0]:
            total = txn.get(store.totals, user)
            if total is not None and total[0] == 0:  # its last session went to another user
                txn.delete(store.totals, user)
        for user in [u for u, d in deltas.items() if d.recompute_last]:
            total = txn.get(store.totals, user)
            if total is None:
                continue
            starts = [r.started_at for r in txn.rows(store.sessions).values()
                      if r.user_id == user]
            txn.put(store.totals, user, (*total[:6], max(starts, default=None)))


def _copy(records: dict[UUID, tuple[Any, ...]] | None) -> dict[UUID, tuple[Any, ...]]:
    return {} if records is None else dict(records)


def _greatest(a: Any, b: Any) -> Any:
    """PostgreSQL's GREATEST: the larger, ignoring NULLs."""
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)

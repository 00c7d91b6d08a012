"""The real projector loop over in-memory Kafka and PostgreSQL (``tests/support/fakes.py``).

Each test runs ``Projector.run()`` and asserts what ended up stored and sent: rows, positions,
dead letters. Where a test needs a moment (a rebalance while a transaction is open, a stop while
a batch is in hand), the fakes hold that step until the test lets it go: nothing here waits on
the clock. Tests that end by comparing with ``reference(...)`` check that the tables equal those
one undisturbed projector makes of the same log: nothing skipped, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, cast

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from focus_sessions.consumers.backoff import Backoff
from focus_sessions.consumers.projector import ConnectionFactory, Projector
from focus_sessions.contracts import topics
from focus_sessions.contracts.codec import encode
from focus_sessions.contracts.events import CloudEvent
from focus_sessions.projections.batch import Located, plan
from focus_sessions.projections.repository import ProjectionRepository
from tests.support.fakes import (
    FakeBroker,
    FakeConsumer,
    FakeProducer,
    MemoryRepository,
    MemoryStore,
    Snapshot,
)
from tests.support.stream import stream
from tests.unit.histories import pomodoro

TOPIC, DLQ = "events", "events.dlq"
#: Retries at once: the tests assert what a retry does, not how long it waits.
QUICK = Backoff(base=0.001, cap=0.001)


class Rig:
    """A topic of three partitions, its dead-letter topic and a store, for real projectors."""

    def __init__(self, broker: FakeBroker | None = None, *, max_request_size: int = 1 << 20
                 ) -> None:
        self.broker = broker or FakeBroker({TOPIC: 3, DLQ: 1})
        self.store = MemoryStore()
        self.producer = FakeProducer(self.broker, max_request_size=max_request_size)
        self.consumers: dict[int, FakeConsumer] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def projector(self, *, group: str = "projector", producer: FakeProducer | None = None,
                  max_records: int = 10, backoff: Backoff = QUICK) -> Projector:
        consumer = self.broker.consumer(group)
        projector = Projector(
            consumer=cast(AIOKafkaConsumer, consumer),
            producer=cast(AIOKafkaProducer, producer or self.producer),
            connect=cast(ConnectionFactory, self.store.connect),
            repository=cast(ProjectionRepository, MemoryRepository()),
            topic=TOPIC, dlq_topic=DLQ, max_records=max_records, wait_ms=5, backoff=backoff)
        self.consumers[id(projector)] = consumer
        return projector

    def consumer(self, projector: Projector) -> FakeConsumer:
        return self.consumers[id(projector)]

    def start(self, projector: Projector) -> None:
        self._tasks[id(projector)] = asyncio.create_task(projector.run())

    async def stop(self, *projectors: Projector) -> None:
        """Stop the projectors, wait for their ``run`` to return (raising what it raised), and
        take their consumers out of the group, as the process does on the way out."""
        for p in projectors:
            p.stop()
        tasks = [self._tasks.pop(id(p)) for p in projectors]
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for p in projectors:
            await self.consumer(p).stop()

    @contextlib.asynccontextmanager
    async def running(self, *projectors: Projector) -> AsyncIterator[None]:
        for p in projectors:
            self.start(p)
        try:
            yield
        finally:
            await self.stop(*projectors)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Yield to the projectors until ``condition`` holds (5 s at most, against hangs)."""
        async with asyncio.timeout(5):
            while not condition():
                for task in self._tasks.values():
                    if task.done():
                        task.result()  # raise what stopped it
                        raise AssertionError(f"a projector stopped before {what}")
                await asyncio.sleep(0.001)

    async def caught_up(self, *projectors: Projector) -> None:
        """Until every position stored is the log's end and the projectors know it."""
        ends = self.broker.ends(TOPIC)
        await self.until(
            lambda: self.store.positions_of(TOPIC) == ends
            and all(ends[p] == o for pr in projectors for p, o in pr.expected.items()),
            f"positions reached {ends}")

    def letters(self) -> list[tuple[str, int, int]]:
        """(reason, original partition, original offset) of every dead letter, in order."""
        found = []
        for record in self.broker.records(DLQ):
            h = dict(record.headers)
            found.append((h[topics.DLQ_REASON].decode(),
                          int(h[topics.DLQ_ORIGINAL_PARTITION]),
                          int(h[topics.DLQ_ORIGINAL_OFFSET])))
        return found


async def reference(broker: FakeBroker) -> Snapshot:
    """The tables one undisturbed projector makes of ``broker``'s log (its letters go apart)."""
    rig = Rig(broker)
    projector = rig.projector(group="reference", producer=FakeProducer(FakeBroker()))
    async with rig.running(projector):
        await rig.caught_up(projector)
    return rig.store.snapshot()


def spread(rig: Rig, events: Iterable[CloudEvent]) -> None:
    """Publish keyed by user: the users' sessions land on every partition."""
    rig.broker.publish(TOPIC, events)


# -- the happy path -------------------------------------------------------------------------


async def test_a_batch_is_applied_once_and_positions_advance() -> None:
    rig = Rig()
    for p in range(3):  # four sessions of one user per partition, three events each
        rig.broker.publish(TOPIC, [e for _ in range(4) for e in pomodoro(f"user-{p}")],
                           partition=p)
    projector = rig.projector(max_records=10)  # a batch spans partitions, and there are four
    async with rig.running(projector):
        await rig.caught_up(projector)

    stored = rig.store.snapshot()
    assert stored.positions == {(TOPIC, p): 12 for p in range(3)}
    assert len(stored.sessions) == 12
    assert all(r.completed and r.interruptions == 1 for r in stored.sessions.values())
    started = {user: totals[0] for user, totals in stored.totals.items()}
    assert started == {"user-0": 4, "user-1": 4, "user-2": 4}  # each session counted once
    assert (projector.stats.events, projector.stats.batches) == (36, 4)
    assert rig.letters() == []
    # Kafka's committed offsets follow the stored positions, for lag tooling
    assert rig.broker.group("projector").committed == {
        TopicPartition(TOPIC, p): 12 for p in range(3)}


# -- dead letters ---------------------------------------------------------------------------


async def test_poison_becomes_a_dead_letter_and_the_partition_moves_on() -> None:
    rig = Rig()
    start, interruption, end = pomodoro("ada")
    rig.broker.publish(TOPIC, [
        start,
        (b"ada", b"{not json"),
        (b"ada", None),
        (b"eve", encode(interruption)),  # keyed by another user: per-user order is lost
        end,
    ], partition=0)
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)

    assert rig.letters() == [("malformed-json", 0, 1), ("empty", 0, 2), ("key-mismatch", 0, 3)]
    row = rig.store.snapshot().sessions[start.data.session_id]
    assert row.completed and row.interruption_events == 0
    assert rig.store.positions_of(TOPIC)[0] == 5
    assert projector.stats.dead_letters == 3


async def test_letters_acknowledged_before_a_retry_are_not_sent_again() -> None:
    rig = Rig()
    rig.broker.publish(TOPIC, [(b"ada", b"{%d" % n) for n in range(3)], partition=0)
    rig.producer.fail_next(after=1)  # the second letter's acknowledgement never comes
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)

    assert rig.letters() == [("malformed-json", 0, 0), ("malformed-json", 0, 2),
                             ("malformed-json", 0, 1)]  # each once; the failed one on retry
    assert (projector.stats.retries, projector.stats.dead_letters) == (1, 3)


async def test_letters_sent_before_a_send_raises_are_not_sent_again() -> None:
    rig = Rig()
    rig.broker.publish(TOPIC, [(b"ada", b"{%d" % n) for n in range(3)], partition=0)
    rig.producer.fail_next(after=1, raised=True)  # send() raises for the second letter
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)

    assert sorted(rig.letters()) == [("malformed-json", 0, n) for n in range(3)]


@pytest.mark.parametrize("refused_by", ["client", "broker"])
async def test_a_letter_the_broker_refuses_is_counted_lost_and_the_partition_moves_on(
    refused_by: str,
) -> None:
    limits: dict[str, Any] = {"client": {"max_request_size": 1000},
                              "broker": {"broker": FakeBroker({TOPIC: 3, DLQ: 1},
                                                              max_message_bytes=1000)}}
    rig = Rig(**limits[refused_by])
    start, interruption, end = pomodoro("ada")
    rig.broker.publish(TOPIC, [start, (b"ada", b"{" + b"x" * 2000), interruption, end],
                       partition=0)
    projector = rig.projector()  # letters carry originals up to 512 KiB: this one is 2 KB
    async with rig.running(projector):
        await rig.caught_up(projector)

    assert projector.stats.letters_lost == 1
    assert rig.letters() == []
    row = rig.store.snapshot().sessions[start.data.session_id]
    assert row.completed and row.interruption_events == 1


# -- failures of the database ---------------------------------------------------------------


async def test_an_infrastructure_failure_is_retried_and_the_batch_applied_exactly_once() -> None:
    rig = Rig()
    spread(rig, stream(120, users=9, seed=3))
    rig.store.break_writes(2)  # the server goes away twice, after positions were written
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)

    assert projector.stats.retries == 2
    assert rig.store.snapshot() == await reference(rig.broker)


async def test_a_data_error_is_isolated_to_its_event() -> None:
    rig = Rig()
    ada, bob = pomodoro("ada"), pomodoro("bob")
    bad = bob[1]  # bob's interruption: PostgreSQL will refuse to store it
    rig.store.refuse(lambda event: event.id == bad.id)
    rig.broker.publish(TOPIC, ada + bob, partition=0)
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)

    stored = rig.store.snapshot()
    assert rig.letters() == [("unstorable", 0, 4)]
    [(where, (event_id, _, detail))] = stored.unstorable.items()
    assert (where, event_id) == ((TOPIC, 0, 4), bad.id)
    assert detail.startswith("DataError")
    ada_row, bob_row = (stored.sessions[e[0].data.session_id]
                        for e in (ada, bob))
    assert (ada_row.interruption_events, bob_row.interruption_events) == (1, 0)
    assert bob_row.completed  # the rest of bob's session is stored
    assert (projector.stats.unstorable, projector.stats.dead_letters) == (1, 1)
    assert rig.store.positions_of(TOPIC)[0] == 6


async def test_a_data_error_no_single_event_causes_is_retried_not_dead_lettered() -> None:
    rig = Rig()
    spread(rig, stream(60, users=6, seed=4))
    rig.store.break_writes(1, psycopg.DataError)  # once, whatever the batch holds
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)

    assert "unstorable" not in {reason for reason, _, _ in rig.letters()}
    assert (projector.stats.retries, projector.stats.unstorable) == (1, 0)
    assert rig.store.snapshot() == await reference(rig.broker)


async def test_a_session_row_its_stored_events_do_not_explain_is_overwritten() -> None:
    rig = Rig()
    events = pomodoro("ada")
    start = events[0]
    # a row edited by hand, with no stored events behind it: inserting the new row collides
    rows = plan({}, [Located(start, 0, 0)]).new_rows
    rig.store.sessions.rows[rows[0].session_id] = rows[0]._replace(duration_minutes=99)
    rig.broker.publish(TOPIC, events, partition=0)
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)

    assert rig.letters() == []
    assert rig.store.snapshot() == await reference(rig.broker)


async def test_positions_unreadable_at_assignment_are_read_again() -> None:
    rig = Rig()
    spread(rig, stream(30, users=3, seed=5))
    rig.store.refuse_connections(2)
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)

    assert rig.store.snapshot() == await reference(rig.broker)


# -- fencing and rebalances -----------------------------------------------------------------


async def test_a_fenced_batch_is_dropped_and_positions_are_read_again() -> None:
    rig = Rig()
    events = list(stream(240, users=12, seed=6))
    spread(rig, events[:120])
    projector = rig.projector()
    async with rig.running(projector):
        await rig.caught_up(projector)
        # as a replay's swap does: move a stored position under the idle projector, then
        # give it a backlog on every partition; the batch that meets the move is dropped
        rig.store.move_position(TOPIC, 1, 3)
        spread(rig, events[120:])
        await rig.caught_up(projector)

    assert projector.stats.fenced == 1
    assert rig.store.snapshot() == await reference(rig.broker)


async def test_a_rebalance_mid_stream_seeks_every_owned_partition_back() -> None:
    rig = Rig()
    events = list(stream(240, users=12, seed=7))
    spread(rig, events[:120])
    projector = rig.projector()
    consumer = rig.consumer(projector)
    async with rig.running(projector):
        await rig.caught_up(projector)
        hold = rig.store.hold_next("write")
        before = len(consumer.fetches)
        spread(rig, events[120:])
        await hold.reached()  # a batch's transaction is open ...
        await rig.until(lambda: len(consumer.fetches) == before + 3,
                        "the next batch waits and the one after it is fetched")
        await rig.broker.group("projector").rebalance()  # ... when the member rejoins
        hold.release()
        await rig.caught_up(projector)

    # the two batches fetched ahead were dropped, and every partition they held read again
    read_again: dict[int, int] = {}
    for fetch in consumer.fetches[before + 3:]:
        for p, (first, _) in fetch.items():
            read_again[p] = min(first, read_again.get(p, first))
    for fetch in consumer.fetches[before + 1:before + 3]:
        assert all(read_again[p] <= first for p, (first, _) in fetch.items())
    assert rig.store.snapshot() == await reference(rig.broker)


async def test_a_newcomers_batch_waits_for_the_old_owners_transaction_and_is_fenced() -> None:
    rig = Rig()
    first = rig.projector(max_records=10)
    rig.broker.publish(TOPIC, pomodoro("ada") + pomodoro("ada"), partition=1)
    async with rig.running(first):
        await rig.caught_up(first)
        hold = rig.store.hold_next("write")
        rig.broker.publish(TOPIC, [e for _ in range(4) for e in pomodoro("ada")], partition=1)
        await hold.reached()  # the first projector writes 10 of these 12 records ...
        newcomer = rig.projector()
        async with rig.running(newcomer):
            # ... when a newcomer joins and is given partition 1, whose stored position that
            # open transaction has moved: the newcomer's batch of those records waits on the row
            await rig.until(lambda: rig.store.waiting == 1, "the newcomer's write waits")
            assert rig.consumer(newcomer).assignment() == {TopicPartition(TOPIC, 1)}
            hold.release()
            await rig.caught_up(first, newcomer)
            owners = (set(first.expected), set(newcomer.expected))

    assert owners == ({0, 2}, {1})  # the first dropped its next batch: partition 1 is gone
    assert (first.stats.fenced, newcomer.stats.fenced) == (0, 1)
    assert rig.store.snapshot() == await reference(rig.broker)  # nothing counted twice


# -- stopping -------------------------------------------------------------------------------


async def test_stop_finishes_the_batch_in_hand_and_exits() -> None:
    rig = Rig()
    spread(rig, stream(60, users=6, seed=8))
    projector = rig.projector(max_records=10)
    consumer = rig.consumer(projector)
    hold = rig.store.hold_next("write")
    rig.start(projector)
    await hold.reached()  # the first batch is being written ...
    await rig.until(lambda: len(consumer.fetches) == 3, "the next batches are fetched")
    stopped = asyncio.create_task(rig.stop(projector))  # ... when SIGTERM comes
    hold.release()
    await stopped

    stored = rig.store.positions_of(TOPIC)
    assert sum(stored.values()) == 10  # that batch, and only it
    assert consumer.commits == [{TopicPartition(TOPIC, p): o for p, o in stored.items()
                                 if o}]
    assert projector.stats.batches == 1


async def test_stop_during_a_retry_gives_up_the_batch_for_a_later_run() -> None:
    rig = Rig()
    spread(rig, stream(30, users=3, seed=9))
    rig.store.break_writes(1)
    projector = rig.projector(backoff=Backoff(base=600, cap=600))
    rig.start(projector)
    await rig.until(lambda: projector.stats.retries == 1, "the first write failed")
    await rig.stop(projector)  # while the retry waits (minutes)

    assert rig.store.positions_of(TOPIC) == {0: 0, 1: 0, 2: 0}
    later = rig.projector()  # the next run projects everything from the stored positions
    async with rig.running(later):
        await rig.caught_up(later)
    assert rig.store.snapshot() == await reference(rig.broker)


# -- found by these fakes -------------------------------------------------------------------


async def test_a_partition_revoked_while_a_fence_rereads_positions_stays_revoked() -> None:
    rig = Rig()
    rig.broker.publish(TOPIC, pomodoro("ada"), partition=0)
    projector = rig.projector()
    group = rig.broker.group("projector")
    async with rig.running(projector):
        await rig.caught_up(projector)
        rig.store.move_position(TOPIC, 0, 0)  # as a replay's swap may
        reading = rig.store.hold_next("connect")
        rig.broker.publish(TOPIC, pomodoro("ada"), partition=0)
        await reading.reached()  # fenced: about to read every owned position again ...
        rig.broker.consumer().subscribe([TOPIC])  # ... when a second member joins
        await group.rebalance()  # and takes partition 1
        reading.release()
        await rig.caught_up()
        assert rig.consumer(projector).assignment() == {TopicPartition(TOPIC, 0),
                                                       TopicPartition(TOPIC, 2)}
        assert set(projector.expected) == projector.stats.partitions == {0, 2}

"""Fencing against the real broker and PostgreSQL: a batch the projector drops is read again,
and a rebalance in the middle of a batch's transaction neither loses nor doubles events.

Another writer may move a partition's stored position under a running projector: a replay's
swap does (its shadow positions become the live ones). The projector's next compare-and-set on
that partition fails, it re-reads the stored positions and seeks. The batch it had already
fetched meanwhile (it fetches the next batch while writing the current one) is dropped as stale,
and it may hold records of *other* partitions too: those must be read again, or they are lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg

from focus_sessions.migrate import migrate
from tests.support.projection import (
    publish,
    reference_snapshot,
    running_projector,
    settings_for,
    snapshot,
    snapshot_diff,
    wait_caught_up,
)
from tests.support.stream import stream


def rewind(url: str, topic: str, partition: int) -> None:
    """Move one partition's stored position back a little, as an outside writer may."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE projector_positions SET next_offset = greatest(next_offset - 10, 0)"
                     " WHERE topic = %s AND kafka_partition = %s", (topic, partition))


async def test_a_fenced_projector_reads_every_partition_of_its_dropped_batch_again(
    kafka_bootstrap, fresh_database, fresh_topics, tmp_db_factory
):
    topic = fresh_topics.events
    events = list(stream(12_000, users=60, seed=5))
    chunks = [events[i:i + 3000] for i in range(0, len(events), 3000)]
    # batches smaller than a fetch: a batch spans partitions, and the next one is already
    # fetched and waiting while one is written
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics,
                     focus_batch_max_records=400, focus_batch_wait_ms=20)
    sent = await publish(kafka_bootstrap, topic, chunks[0])
    async with running_projector(s) as projector:
        for chunk in chunks[1:]:
            await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
            # as a replay's swap does: move a partition's stored position under the idle
            # projector, then give it a backlog of several batches on every partition; it
            # meets the move (is fenced) with the next batch already fetched
            moved = max(projector.expected, key=projector.expected.__getitem__)
            await asyncio.to_thread(rewind, fresh_database, topic, moved)
            fenced = projector.stats.fenced
            sent += await publish(kafka_bootstrap, topic, chunk)
            await until(lambda before=fenced: projector.stats.fenced > before,
                        "the projector never met the moved position")
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)

    reference = await reference_snapshot(kafka_bootstrap, fresh_topics, sent, tmp_db_factory)
    assert snapshot_diff(snapshot(fresh_database), reference) == {}


async def test_a_rebalance_while_a_batch_transaction_is_open_loses_and_doubles_nothing(
    kafka_bootstrap, fresh_database, fresh_topics, tmp_db_factory
):
    """A second projector joins while the first one's batch is held inside its transaction:
    positions already compare-and-set, rows half written. The first loses partitions whose
    rows that transaction is still writing; the newcomer must start from what it commits."""
    topic = fresh_topics.events
    events = list(stream(6000, users=40, seed=11))
    sent = await publish(kafka_bootstrap, topic, events[:4000])
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics, focus_batch_max_records=1000)
    migrate(fresh_database)
    with psycopg.connect(fresh_database) as holder:
        # the weekly upsert is the last write of a batch: hold it there
        holder.execute("LOCK TABLE focus_user_weekly IN EXCLUSIVE MODE")
        async with running_projector(s, migrate_first=False) as first:
            await until(lambda: waiting_on(fresh_database, "focus_user_weekly"),
                        "the first batch never reached the weekly upsert")
            generation = first._generation  # bumped by every revocation and assignment
            async with running_projector(s, migrate_first=False) as second:
                await until(lambda: first._generation > generation,
                            "the second projector never caused a rebalance")
                assert first.stats.batches == 0  # the rebalance came mid-transaction
                holder.rollback()  # let the held batch commit
                await until(lambda: first.stats.batches + first.stats.fenced > 0,
                            "the held batch never finished")
                sent += await publish(kafka_bootstrap, topic, events[4000:])
                await wait_caught_up(fresh_database, fresh_topics, sent)
                assert first.expected and second.expected  # both own partitions now
                assert not set(first.expected) & set(second.expected)

    reference = await reference_snapshot(kafka_bootstrap, fresh_topics, sent, tmp_db_factory)
    assert snapshot_diff(snapshot(fresh_database), reference) == {}


def waiting_on(url: str, table: str) -> bool:
    """Whether a backend of the database waits on a lock in a statement naming ``table``."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND position(%s in query) > 0", (table,)).fetchone()
    return bool(row and row[0])


async def until(condition: Callable[[], bool], failure: str, seconds: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await asyncio.to_thread(condition):
        assert asyncio.get_running_loop().time() < deadline, failure
        await asyncio.sleep(0.05)

"""Crashes, fail-over and a database outage: the tables still equal an undisturbed run."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.support.infra import through_proxy
from tests.support.projection import (
    ProjectorProcess,
    positions,
    publish,
    reference_snapshot,
    rollup_mismatches,
    running_projector,
    settings_for,
    snapshot,
    snapshot_diff,
    stop_all,
    wait_caught_up,
)
from tests.support.stream import stream

pytestmark = pytest.mark.slow


async def test_sigkill_at_random_moments_then_restart_loses_and_doubles_nothing(
    kafka_bootstrap, postgres_url, fresh_database, fresh_topics, tmp_db_factory, tmp_path
):
    sent = await publish(kafka_bootstrap, fresh_topics.events, stream(50_000))
    total = len(sent)
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics, focus_batch_max_records=1000)
    from focus_sessions.migrate import migrate

    migrate(fresh_database)
    rng = random.Random(11)
    # Kill at random points of the stream (not of the clock, which would mostly hit start-up):
    # each process is SIGKILLed a random few milliseconds after progress passes a threshold.
    thresholds = sorted(rng.uniform(0.05, 0.9) * total for _ in range(6))
    kills = 0
    procs = []
    try:
        for n, threshold in enumerate(thresholds):
            proc = ProjectorProcess(s, tmp_path, f"projector-{n}")
            procs.append(proc)
            while sum(positions(fresh_database, fresh_topics.events).values()) < threshold:
                assert proc.process.poll() is None, proc.log()
                await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0, 0.3))
            proc.kill()
            kills += 1
        assert sum(positions(fresh_database, fresh_topics.events).values()) < total
        last = ProjectorProcess(s, tmp_path, "projector-final")
        procs.append(last)
        await wait_caught_up(fresh_database, fresh_topics, sent, timeout=300)
        assert last.terminate() == 0, last.log()
    finally:
        stop_all(procs)
    assert kills >= 5
    crashed = snapshot(fresh_database)
    assert len(crashed["session_events"]) > 40_000
    reference = await reference_snapshot(kafka_bootstrap, fresh_topics, sent,
                                         tmp_db_factory)
    assert snapshot_diff(crashed, reference) == {}
    assert rollup_mismatches(fresh_database) == []


async def test_two_projectors_share_partitions_and_one_takes_over_when_the_other_dies(
    kafka_bootstrap, postgres_url, fresh_database, fresh_topics, tmp_db_factory, tmp_path
):
    s = settings_for(kafka_bootstrap, fresh_database, fresh_topics, focus_batch_max_records=500)
    from focus_sessions.migrate import migrate

    migrate(fresh_database)
    a = ProjectorProcess(s, tmp_path, "a")
    b = ProjectorProcess(s, tmp_path, "b")
    try:
        sent = await publish(kafka_bootstrap, fresh_topics.events, stream(20_000, seed=3))
        # both are in the group and b owns partitions (start-up and tansu's rebalances take
        # seconds, more on a loaded machine: wait for them rather than guess a sleep)
        deadline = asyncio.get_running_loop().time() + 60
        while not ("assigned" in a.log() and "assigned" in b.log()):
            assert asyncio.get_running_loop().time() < deadline, (a.log(), b.log())
            await asyncio.sleep(0.2)
        b.kill()
        sent += await publish(kafka_bootstrap, fresh_topics.events, stream(10_000, seed=4))
        await wait_caught_up(fresh_database, fresh_topics, sent, timeout=300)
        assert a.terminate() == 0, a.log()
    finally:
        stop_all([a, b])
    assert "assigned" in a.log() and "assigned" in b.log()
    reference = await reference_snapshot(kafka_bootstrap, fresh_topics, sent,
                                         tmp_db_factory)
    assert snapshot_diff(snapshot(fresh_database), reference) == {}


async def test_postgres_away_for_seconds_mid_run_is_waited_out(
    kafka_bootstrap, fresh_database, fresh_topics, tmp_db_factory, postgres_proxy
):
    host, port = postgres_proxy.address.rsplit(":", 1)
    via_proxy = through_proxy(fresh_database, host, int(port))
    s = settings_for(kafka_bootstrap, via_proxy, fresh_topics, focus_batch_max_records=500)
    async with running_projector(s) as projector:
        sent = await publish(kafka_bootstrap, fresh_topics.events, stream(6_000, seed=5))
        while projector.stats.batches < 2:
            await asyncio.sleep(0.05)
        postgres_proxy.pause()  # every connection dropped, new ones refused
        await asyncio.sleep(3)
        postgres_proxy.resume()
        await wait_caught_up(fresh_database, fresh_topics, sent, projector=projector)
        assert projector.stats.retries >= 1
        stats = projector.stats
    reference = await reference_snapshot(kafka_bootstrap, fresh_topics, sent,
                                         tmp_db_factory)
    diff = snapshot_diff(snapshot(fresh_database), reference)
    assert diff == {}, stats
    assert rollup_mismatches(fresh_database) == []


async def test_a_projector_starting_while_postgres_is_away_waits_for_it(
    kafka_bootstrap, fresh_database, fresh_topics, postgres_proxy
):
    from focus_sessions.migrate import migrate

    migrate(fresh_database)
    host, port = postgres_proxy.address.rsplit(":", 1)
    s = settings_for(kafka_bootstrap, through_proxy(fresh_database, host, int(port)),
                     fresh_topics)
    sent = await publish(kafka_bootstrap, fresh_topics.events, stream(500, seed=8))
    postgres_proxy.pause()  # the projector cannot read its positions on assignment ...
    async with running_projector(s, migrate_first=False) as projector:
        await asyncio.sleep(5)
        assert projector.stats.batches == 0 and projector.expected == {}
        postgres_proxy.resume()  # ... until PostgreSQL is back
        await wait_caught_up(fresh_database, fresh_topics, sent)
    assert rollup_mismatches(fresh_database) == []


async def test_stopping_during_a_retry_leaves_the_batch_for_later_and_exits_cleanly(
    kafka_bootstrap, fresh_database, fresh_topics, postgres_proxy
):
    host, port = postgres_proxy.address.rsplit(":", 1)
    s = settings_for(kafka_bootstrap, through_proxy(fresh_database, host, int(port)),
                     fresh_topics)
    async with running_projector(s) as projector:
        while not projector.expected:
            await asyncio.sleep(0.05)
        postgres_proxy.pause()
        sent = await publish(kafka_bootstrap, fresh_topics.events, stream(300, seed=9))
        while projector.stats.retries < 2:
            await asyncio.sleep(0.05)
        # leaving the block stops the projector mid-backoff: it must return, not raise
    postgres_proxy.resume()
    assert sum(positions(fresh_database, fresh_topics.events).values()) == 0
    async with running_projector(s):  # a later run projects the batch
        await wait_caught_up(fresh_database, fresh_topics, sent)
    assert rollup_mismatches(fresh_database) == []

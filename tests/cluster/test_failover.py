"""A real cluster's failures: a broker SIGKILLed under load, then a projector SIGKILLed.

Three Apache Kafka nodes (replication factor 3, ``min.insync.replicas=2``), the simulator
publishing with ``acks=all``, two ``focus project`` processes projecting. The tables after the
crash must equal a clean single-pass projection of the whole log, row for row, and every event a
producer saw acknowledged must be in them. Each test prints its figures (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from aiokafka.admin import AIOKafkaAdminClient

from focus_sessions.apache import ApacheKafka
from focus_sessions.bootstrap import producer
from focus_sessions.consumers.replay.follow import topic_log_ends
from focus_sessions.migrate import migrate
from focus_sessions.producers.simulate import generate
from tests.integration.api_harness import SERVICE, api_settings, running_api
from tests.support.infra import TopicSet, create_database, drop_database
from tests.support.projection import (
    ProjectorProcess,
    reference_snapshot,
    rollup_mismatches,
    settings_for,
    snapshot,
    snapshot_diff,
    stop_all,
    wait_caught_up,
)


@dataclass
class Published:
    """What the publisher saw: every event sent, and the ids the cluster acknowledged."""

    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)  # ids whose last attempt raised
    acks: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, partition)


async def publish_with_retries(bootstrap: str, topic: str, pairs: list[tuple[bytes, bytes]],
                               published: Published, chunk: int = 500) -> None:
    """Publish in chunks; an event whose send raised is sent again (same id) with the next
    chunk, three times at most, as a producer following docs/producing.md would."""
    kafka = producer(bootstrap, request_timeout_ms=10_000)
    await kafka.start()
    try:
        pending = list(pairs)
        retries: dict[bytes, int] = {}

        def record(future: asyncio.Future[Any]) -> None:  # when, not after the chunk's gather
            if not future.cancelled() and future.exception() is None:
                published.acks.append((time.monotonic(), future.result().partition))

        while pending:
            batch, pending = pending[:chunk], pending[chunk:]
            futures = [await kafka.send(topic, value, key=key) for key, value in batch]
            for future in futures:
                future.add_done_callback(record)
            published.sent += len(batch)
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            for (key, value), outcome in zip(batch, outcomes, strict=True):
                event_id = json.loads(value)["id"]
                if not isinstance(outcome, BaseException):
                    published.acknowledged.add(event_id)
                elif retries.get(value, 0) < 3:
                    retries[value] = retries.get(value, 0) + 1
                    pending.append((key, value))
                else:
                    published.failed.append(event_id)
    finally:
        await kafka.stop()


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> id of the node leading it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return {p["partition"]: p["leader"] for p in described["partitions"]}
    finally:
        await admin.close()


async def whole_log(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    """``(partition, offset)`` of the last event of every non-empty partition."""
    ends = await topic_log_ends(bootstrap, topic)
    return [(partition, end - 1) for partition, end in ends.items() if end]


def projected_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(row[0]) for row in conn.execute("SELECT event_id FROM session_events")}


async def test_the_leading_broker_killed_mid_stream_loses_no_acknowledged_event(
    cluster: ApacheKafka, cluster_topics: TopicSet, cluster_database: str,
    postgres_url: str, tmp_path: Path,
) -> None:
    bootstrap, topics = cluster.bootstrap_servers, cluster_topics
    pairs = list(generate(users=500, sessions=7_500, seed=18))  # ~30,000 events
    migrate(cluster_database)
    settings = settings_for(bootstrap, cluster_database, topics, focus_batch_max_records=1000)
    projectors = [ProjectorProcess(settings, tmp_path, name) for name in ("a", "b")]
    published = Published()
    try:
        publishing = asyncio.create_task(
            publish_with_retries(bootstrap, topics.events, pairs, published))
        while published.sent < len(pairs) // 3:
            assert not publishing.done(), publishing
            await asyncio.sleep(0.05)
        # the node that leads most of the events topic's partitions dies, as in a crash
        led = await leaders(bootstrap, topics.events)
        victim = max(set(led.values()), key=list(led.values()).count)
        killed_at = time.monotonic()
        cluster.kill(victim)
        await asyncio.sleep(20)
        restarted_at = time.monotonic()
        await asyncio.to_thread(cluster.start_node, victim)
        back_after = time.monotonic() - killed_at
        await publishing
        log = await whole_log(bootstrap, topics.events)
        await wait_caught_up(cluster_database, topics, log, timeout=300)
        in_log = sum(offset + 1 for _, offset in log)
        for projector in projectors:
            assert projector.terminate() == 0, projector.log()
    finally:
        stop_all(projectors)

    projected = projected_ids(cluster_database)
    # writes to the partitions the dead node led resumed on their new leaders before it came back
    orphaned = {p for p, node in led.items() if node == victim}
    moved = [at - killed_at for at, p in published.acks
             if p in orphaned and killed_at < at < restarted_at]
    print(f"\ncluster failover: {len(pairs)} events, {published.sent} sends, "
          f"{len(published.acknowledged)} acknowledged, {len(published.failed)} failed, "
          f"{in_log} in the log, {len(projected)} distinct ids projected; node {victim} "
          f"(leading {list(led.values()).count(victim)} of 6 partitions) back after "
          f"{back_after:.1f} s; its partitions took writes again after "
          f"{min(moved, default=float('nan')):.1f} s ({len(moved)} acknowledged there before "
          "it came back)")
    assert published.failed == []
    assert moved  # two of three replicas (min.insync.replicas=2) kept taking writes
    assert published.acknowledged <= projected  # nothing acknowledged is missing
    assert len(published.acknowledged) == len({json.loads(v)["id"] for _, v in pairs})
    made: list[str] = []

    def new_database() -> str:
        made.append(create_database(postgres_url))
        return made[-1]

    try:
        reference = await reference_snapshot(bootstrap, topics, log, new_database)
        assert snapshot_diff(snapshot(cluster_database), reference) == {}
    finally:
        for url in made:
            drop_database(postgres_url, url)
    assert rollup_mismatches(cluster_database) == []


async def test_api_writes_during_a_broker_failover_answer_201_202_or_503_and_none_is_lost(
    cluster: ApacheKafka, cluster_topics: TopicSet, cluster_database: str,
) -> None:
    bootstrap, topics = cluster.bootstrap_servers, cluster_topics
    settings = api_settings(bootstrap, cluster_database, topics, focus_api_wait_ms=200,
                            focus_api_publish_timeout_ms=5000)
    answers: list[tuple[int, dict[str, Any]]] = []
    async with running_api(settings, projector_kafka=bootstrap, topics=topics) as api:

        async def write(n: int) -> None:
            r = await api.client.post("/sessions", json={"user_id": f"u{n % 50}"},
                                      headers=SERVICE)
            answers.append((r.status_code, r.json()))

        async def writer(until: float) -> None:
            n = 0
            while time.monotonic() < until:
                await asyncio.gather(*(write(n + i) for i in range(5)))
                n += 5

        started = time.monotonic()
        writing = asyncio.create_task(writer(started + 25))
        await asyncio.sleep(4)
        led = await leaders(bootstrap, topics.events)
        victim = max(set(led.values()), key=list(led.values()).count)
        cluster.kill(victim)
        await asyncio.sleep(8)
        await asyncio.to_thread(cluster.start_node, victim)
        await writing

        codes = [code for code, _ in answers]
        accepted = {body["session_id"] for code, body in answers if code in (201, 202)}
        refusals = [body for code, body in answers if code == 503]
        print(f"\nAPI during failover: {len(answers)} writes, "
              + ", ".join(f"{c}: {codes.count(c)}" for c in sorted(set(codes))))
        assert set(codes) <= {201, 202, 503}, [a for a in answers if a[0] not in (201, 202, 503)]
        assert all(b["published"] in ("no", "unknown") and b["detail"] for b in refusals)
        assert codes.count(201) + codes.count(202) > len(codes) // 2

        # every accepted write is in the read model once the projector has caught up
        deadline = time.monotonic() + 120
        while True:
            with psycopg.connect(cluster_database) as conn:
                stored = {str(r[0]) for r in conn.execute("SELECT session_id FROM focus_sessions")}
            if accepted <= stored or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert accepted <= stored, f"{len(accepted - stored)} accepted writes not projected"


ASSIGNED = re.compile(r"assigned \[([0-9, ]*)\]")


def last_assignment(log: str) -> list[int] | None:
    found = ASSIGNED.findall(log)
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else None


async def test_a_killed_projectors_partitions_move_within_the_session_timeout_plus_3_s(
    cluster: ApacheKafka, cluster_topics: TopicSet, cluster_database: str, tmp_path: Path,
) -> None:
    bootstrap, topics = cluster.bootstrap_servers, cluster_topics
    migrate(cluster_database)
    # the defaults: FOCUS_SESSION_TIMEOUT_MS=10000
    settings = settings_for(bootstrap, cluster_database, topics, focus_session_timeout_ms=10_000)
    a = ProjectorProcess(settings, tmp_path, "a")
    b = ProjectorProcess(settings, tmp_path, "b")
    try:
        deadline = time.monotonic() + 90
        while not (len(last_assignment(a.log()) or []) == 3
                   and len(last_assignment(b.log()) or []) == 3):
            assert time.monotonic() < deadline, (a.log(), b.log())
            assert a.process.poll() is None and b.process.poll() is None, (a.log(), b.log())
            await asyncio.sleep(0.1)
        killed_at = time.monotonic()
        b.kill()
        while (last_assignment(a.log()) or []) != [0, 1, 2, 3, 4, 5]:
            assert time.monotonic() - killed_at < 60, a.log()
            await asyncio.sleep(0.05)
        takeover = time.monotonic() - killed_at
        assert a.terminate() == 0, a.log()
    finally:
        stop_all([a, b])
    print(f"\nprojector takeover after SIGKILL: {takeover:.1f} s "
          f"(session timeout {settings.focus_session_timeout_ms / 1000:g} s)")
    assert takeover <= settings.focus_session_timeout_ms / 1000 + 3

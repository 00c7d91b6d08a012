"""``focus status``: the projection's state on one screen, from its sources.

Lag per partition is the broker's log end minus the position stored in PostgreSQL (the truth,
not Kafka's committed offsets); held events and freshness come from PostgreSQL; the consumer
group's members from the broker; throughput from two readings of the positions; dead letters by
reason and the projector's own verdict from its ``/metrics`` and ``/healthz``
(:mod:`focus_sessions.telemetry`), when it can be reached.

The verdict is Burrow's, over the two readings and ``FOCUS_PROJECTOR_HEALTH_WINDOW_S``:
``ok`` (no lag, or positions moving), ``warn`` (moving but lag grew), ``stall`` (lag and a
partition's position unchanged for the window), ``stop`` (lag, and no member in the group).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

VERDICTS = ("ok", "warn", "stall", "stop")

_POSITIONS = ("SELECT kafka_partition, next_offset, last_event_time, "
              "extract(epoch FROM clock_timestamp() - updated_at)::float8 "
              "FROM {schema}.projector_positions WHERE topic = %s")
_HELD = ("SELECT count(*), extract(epoch FROM clock_timestamp() - min(recorded_at))::float8 "
         "FROM {schema}.session_events WHERE status = 'held'")


@dataclass
class Partition:
    partition: int
    log_end: int
    position: int
    lag: int
    #: Seconds since the position last moved (None: never projected).
    idle_s: float | None
    last_event_time: str | None
    verdict: str = "ok"


@dataclass
class Report:
    topic: str
    group: str
    window_s: float
    partitions: list[Partition]
    lag: int
    #: Events projected per second between the two readings.
    events_per_s: float
    held_events: int
    held_oldest_age_s: float | None
    #: The newest projected event's time over all partitions.
    freshness: str | None
    members: list[str] | None
    dead_letters: dict[str, float] | None
    projector_health: dict[str, Any] | None
    verdict: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def judge(before: dict[int, int], after: list[Partition], lag_before: int, window: float,
          members: list[str] | None) -> str:
    """The Burrow-style verdict of two readings (see the module's docstring); sets each
    partition's own verdict too."""
    for p in after:
        if p.lag == 0:
            p.verdict = "ok"
        elif p.position == before.get(p.partition, p.position) and (
                p.idle_s is None or p.idle_s > window):
            p.verdict = "stall"
        else:
            p.verdict = "ok"
    lag = sum(p.lag for p in after)
    if lag and members == []:
        return "stop"
    if any(p.verdict == "stall" for p in after):
        return "stall"
    moved = any(p.position != before.get(p.partition, p.position) for p in after)
    if lag and moved and lag > lag_before:
        return "warn"
    return "ok"


async def _positions(conn: psycopg.AsyncConnection[Any], schema: str, topic: str
                     ) -> dict[int, tuple[int, datetime | None, float | None]]:
    cur = await conn.execute(sql.SQL(_POSITIONS).format(schema=sql.Identifier(schema)), (topic,))
    return {p: (offset, t, idle) for p, offset, t, idle in await cur.fetchall()}


async def _members(bootstrap: str, group: str) -> list[str] | None:
    """``client_id@host`` of each member of ``group``; None when the broker does not say."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        (response,) = await asyncio.wait_for(admin.describe_consumer_groups([group]), 5)
        groups = response.to_object()["groups"]
        return sorted(f"{m['client_id']}@{m['client_host'].lstrip('/')}"
                      for g in groups if g["group"] == group for m in g["members"])
    except Exception:  # any broker that cannot describe groups (tansu may not): unknown
        return None
    finally:
        await admin.close()


def _scrape(url: str) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    """Dead letters by reason from ``url``/metrics and the verdict from ``url``/healthz."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=3) as answer:  # noqa: S310
            text = answer.read().decode()
    except (OSError, urllib.error.URLError):
        return None, None
    letters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "focus_projector_dead_letters_total":
                letters[s.labels["reason"]] = letters.get(s.labels["reason"], 0) + s.value
    health: dict[str, Any] | None
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=3) as answer:  # noqa: S310
            health = json.loads(answer.read())
    except urllib.error.HTTPError as refused:  # 503: still a verdict
        health = json.loads(refused.read())
    except (OSError, ValueError):
        health = None
    return letters, health


async def gather(*, bootstrap: str, database_url: str, topic: str, group: str, window: float,
                 metrics_url: str | None, interval: float = 1.0, schema: str = "public",
                 previous: tuple[float, dict[int, int], int] | None = None) -> Report:
    """Read the sources twice, ``interval`` apart (or once, against ``previous``: the time,
    positions and lag of the last reading, for ``--watch``)."""
    from focus_sessions.consumers.replay.follow import topic_log_ends

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        if previous is None:
            first = await _positions(conn, schema, topic)
            started = time.monotonic()
            ends = await topic_log_ends(bootstrap, topic)
            before = {p: v[0] for p, v in first.items()}
            lag_before = sum(max(0, e - before.get(p, 0)) for p, e in ends.items())
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        else:
            started, before, lag_before = previous
        now = await _positions(conn, schema, topic)
        elapsed = time.monotonic() - started
        ends = await topic_log_ends(bootstrap, topic)
        cur = await conn.execute(sql.SQL(_HELD).format(schema=sql.Identifier(schema)))
        held, held_age = await cur.fetchone() or (0, None)
    members = await _members(bootstrap, group)
    letters, health = (None, None) if not metrics_url else await asyncio.to_thread(
        _scrape, metrics_url)
    partitions = []
    for p in sorted(set(ends) | set(now)):
        position, last_time, idle = now.get(p, (0, None, None))
        end = ends.get(p, position)
        partitions.append(Partition(p, end, position, max(0, end - position), idle,
                                    None if last_time is None else last_time.isoformat()))
    moved = sum(v[0] for v in now.values()) - sum(before.values())
    times = [t for _, t, _ in now.values() if t is not None]
    notes = []
    if metrics_url and letters is None:
        notes.append(f"projector metrics not reachable at {metrics_url} (dead letters and "
                     "the projector's own verdict unknown)")
    if members is None:
        notes.append("the broker did not describe the consumer group")
    return Report(
        topic=topic, group=group, window_s=window, partitions=partitions,
        lag=sum(p.lag for p in partitions), events_per_s=max(0, moved) / max(elapsed, 1e-6),
        held_events=held, held_oldest_age_s=held_age,
        freshness=max(times).isoformat() if times else None, members=members,
        dead_letters=letters, projector_health=health,
        verdict=judge(before, partitions, lag_before, window, members), notes=notes)

"""Publishing events, running projectors (in-process or as real processes), reading tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer

from focus_sessions.bootstrap import build_projector, producer
from focus_sessions.consumers.projector import Projector
from focus_sessions.contracts.codec import encode
from focus_sessions.contracts.events import CloudEvent
from focus_sessions.migrate import migrate
from focus_sessions.projections.readmodels import TABLES as READ_MODELS
from focus_sessions.projections.readmodels.user_totals import mismatches as rollup_check
from focus_sessions.settings import ProjectorSettings
from tests.support.infra import TopicSet

Message = CloudEvent | tuple[bytes | None, bytes | None]


def settings_for(
    bootstrap: str, database_url: str, topics: TopicSet, **overrides: Any
) -> ProjectorSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "database_url": database_url,
        "focus_events_topic": topics.events,
        "focus_dlq_topic": topics.dlq,
        "focus_consumer_group": f"projector-{topics.events}",
        "focus_session_timeout_ms": 6000,
        "focus_retry_max_seconds": 2.0,
    }
    values.update(overrides)
    return ProjectorSettings(**values)


def as_record(message: Message) -> tuple[bytes | None, bytes | None]:
    """``(key, value)`` of an event (keyed by user, as producers must) or of a raw pair."""
    if isinstance(message, CloudEvent):
        return message.data.user_id.encode(), encode(message)  # type: ignore[attr-defined]
    return message


async def publish(bootstrap: str, topic: str, messages: Iterable[Message]) -> list[tuple[int, int]]:
    """Publish events (keyed by user) or raw ``(key, value)`` pairs, in order; return
    ``(partition, offset)`` of each."""
    kafka = producer(bootstrap)
    await kafka.start()
    try:
        futures = []
        for message in messages:
            key, value = as_record(message)
            futures.append(await kafka.send(topic, value, key=key))
        metadata = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metadata]
    finally:
        await kafka.stop()


def positions(database_url: str, topic: str) -> dict[int, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT kafka_partition, next_offset FROM projector_positions WHERE topic = %s",
            (topic,),
        ).fetchall()
    return dict(rows)


async def wait_caught_up(
    database_url: str, topics: TopicSet, published: Iterable[tuple[int, int]],
    timeout: float = 120.0, *, projector: Projector | None = None,
) -> None:
    """Wait until the stored positions pass every ``(partition, offset)`` the broker
    acknowledged. (Not the broker's end offsets: tansu answers those one write behind.)

    With ``projector``, also until that in-process projector has seen its commits return: its
    counters (``stats``) are updated only then, a moment after the rows are visible."""
    target: dict[int, int] = {}
    for partition, offset in published:
        target[partition] = max(target.get(partition, 0), offset + 1)
    deadline = time.monotonic() + timeout
    while True:
        stored = positions(database_url, topics.events)
        known = stored if projector is None else projector.expected
        if all(min(stored.get(p, 0), known.get(p, 0)) >= end for p, end in target.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"projection stuck at {stored}, log ends at {target}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_projector(
    settings: ProjectorSettings, *, migrate_first: bool = True
) -> AsyncIterator[Projector]:
    """A projector running in this event loop (migrations applied first, unless told not to)."""
    assert settings.database_url is not None
    if migrate_first:
        migrate(settings.database_url)
    projector = build_projector(settings)
    await projector.producer.start()
    await projector.consumer.start()
    task = asyncio.create_task(projector.run())
    try:
        yield projector
    finally:
        projector.stop()
        await asyncio.wait_for(task, timeout=30)
        await projector.consumer.stop()
        await projector.producer.stop()


async def dead_letters(
    bootstrap: str, topic: str, expected: int, timeout: float = 20.0
) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found.extend(records)
        return found
    finally:
        await consumer.stop()


# -- tables -------------------------------------------------------------------------------

#: Every read-model table of the registry, ordered by its key (a new read model is compared
#: by every test that compares snapshots without being named here).
TABLES = {t.name: f"SELECT * FROM {t.name} ORDER BY {', '.join(t.key)}" for t in READ_MODELS}


def snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every read-model table, row for row, in a stable order."""
    with psycopg.connect(database_url) as conn:
        return {name: conn.execute(query.encode()).fetchall() for name, query in TABLES.items()}


def rollup_mismatches(database_url: str) -> list[str]:
    """Users whose rollup differs from its recomputation from ``focus_sessions``."""
    with psycopg.connect(database_url) as conn:
        return [u for u, *_ in conn.execute(rollup_check("public")).fetchall()]


# -- projector processes ------------------------------------------------------------------


class ProjectorProcess:
    """``focus project`` as a real OS process, for crash and fail-over tests."""

    def __init__(
        self, settings: ProjectorSettings, log_dir: Path, name: str, *,
        args: Sequence[str] = (), own_session: bool = False,
    ) -> None:
        env = {**os.environ}
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
                "DATABASE_URL": settings.database_url or "",
                "FOCUS_EVENTS_TOPIC": settings.focus_events_topic,
                "FOCUS_DLQ_TOPIC": settings.focus_dlq_topic,
                "FOCUS_CONSUMER_GROUP": settings.focus_consumer_group,
                "FOCUS_SESSION_TIMEOUT_MS": str(settings.focus_session_timeout_ms),
                "FOCUS_BATCH_MAX_RECORDS": str(settings.focus_batch_max_records),
                "FOCUS_RETRY_MAX_SECONDS": str(settings.focus_retry_max_seconds),
            }
        )
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "focus_sessions.cli", "project", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,  # a group of its own, for a terminal's Ctrl-C
        )

    def kill(self) -> None:
        """SIGKILL: no clean-up, no last commit: the harshest crash there is."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended while we looked
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's reaper may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_all(processes: Sequence[ProjectorProcess]) -> None:
    for proc in processes:
        if proc.process.poll() is None:
            proc.kill()


async def reference_snapshot(
    bootstrap: str, topics: TopicSet, sent: Iterable[tuple[int, int]],
    new_database: Callable[[], str],
) -> dict[str, list[tuple[Any, ...]]]:
    """The tables an uninterrupted single in-process projector makes of the same log, in a
    database from ``new_database`` (the ``tmp_db_factory`` fixture)."""
    url = new_database()
    async with running_projector(settings_for(bootstrap, url, topics,
                                              focus_consumer_group=f"ref-{topics.events}")):
        await wait_caught_up(url, topics, sent, timeout=300)
    return snapshot(url)


def snapshot_diff(
    actual: dict[str, list[tuple[Any, ...]]], expected: dict[str, list[tuple[Any, ...]]]
) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Rows only in one of two snapshots, per table (empty when they are equal)."""
    out: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for table in expected:
        a, e = set(actual.get(table, [])), set(expected[table])
        if a != e or len(actual.get(table, [])) != len(expected[table]):
            out[table] = {"unexpected": sorted(a - e, key=str)[:5],
                          "missing": sorted(e - a, key=str)[:5],
                          "counts": [(len(actual.get(table, [])), len(expected[table]))]}
    return out

"""Benchmark the projector, one process and N, against a naive one-event-per-transaction
FastStream subscriber.

    python bench/projector_bench.py                      # 1,000,000 events, 10,000 users
    python bench/projector_bench.py --events 200000 --naive-events 10000 --profile
    python bench/projector_bench.py --events 60000 --naive-events 1000 --processes 2
    python bench/projector_bench.py --events 100000 --naive-events 0 --broker both

Publishes a realistic stream (``focus_sessions.producers.simulate``, about four events per session)
to a fresh
6-partition topic *before* anything is measured, then on that same topic:

1. the real projector (``focus_sessions.bootstrap.build_projector`` run by ``run_projector``, as
   ``focus project`` does; new consumer group, fresh migrated database), measured from its
   first committed batch until every partition's stored position (``projector_positions``)
   reaches the end the broker acknowledged on publish. Group join (tansu waits ~3 s per
   rebalance) and the first batch are reported apart, not in the rate;
2. ``focus project --processes N`` (``--processes``, default this machine's CPUs, at most the
   6 partitions; 0 skips it) as a subprocess configured through the environment, as a service
   manager would run it: new group, its own fresh database, measured the same way. Its CPU is
   the worker processes' (read from /proc); its start-up also counts interpreter start and
   the workers' join; a rebalance inside the window (a worker that joined late) is noted;
3. the naive subscriber (``bench/naive_subscriber.py``) into another fresh database, for
   ``--naive-events`` events (it is slow; its rate is measured on that prefix and extrapolated);
4. a table side by side (events/s; CPU seconds of the projecting process(es), of the
   PostgreSQL backends and of the embedded broker over the window; time in Python's garbage
   collector), N processes vs one, the issue's targets, and a correctness check of both
   projectors' tables (sessions vs distinct sessions with a start published; rollups vs their
   recomputation from focus_sessions).

Servers: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set (only uniquely named databases and
topics are created, and dropped afterwards), else an embedded tansu broker and an embedded
PostgreSQL, stopped at the end. ``--broker apache`` starts Apache Kafka from Maven Central instead
(``focus_sessions.apache``); ``--broker both`` runs the whole bench on tansu, then on Apache Kafka
(same seed, same events), and prints the two tables' rates side by side. ``--profile`` adds a
cProfiled projector pass (separate group and database, not part of the figures) and prints the
top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import itertools
import logging
import os
import pstats
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from bench import python_speed  # noqa: E402
from focus_sessions.apache import ApacheKafka, kafka_version  # noqa: E402
from focus_sessions.bootstrap import build_projector, producer, run_projector  # noqa: E402
from focus_sessions.embedded import EmbeddedKafka, EmbeddedPostgres  # noqa: E402
from focus_sessions.migrate import migrate  # noqa: E402
from focus_sessions.producers.bulk import publish_pairs  # noqa: E402
from focus_sessions.producers.simulate import generate  # noqa: E402
from focus_sessions.projections.readmodels.user_totals import mismatches as rollup_check  # noqa: E402
from focus_sessions.settings import ProjectorSettings  # noqa: E402
from focus_sessions.topics import ensure_topics  # noqa: E402

TARGET_RATE = 75_000  # events/s (issue 2, "Performance")
TARGET_RATIO = 60  # times the naive subscriber
PARTITIONS = 6
POLL_SECONDS = 0.02
STARTED = b'"type":"focus.session.started.v1"'
SUBJECT = b'"subject":"'


# -- servers ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Servers:
    bootstrap: str
    server_url: str  # a database to connect to for CREATE/DROP DATABASE
    kafka_pid: int | None  # embedded broker (tansu, or Apache Kafka's JVM), for its CPU time
    origin: str
    work: Path  # scratch files (removed at the end)
    databases: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)


@contextlib.contextmanager
def servers(broker: str | None = None) -> Iterator[Servers]:
    """Servers from the environment, else embedded ones; ``broker`` (tansu or apache) starts
    that broker even when KAFKA_BOOTSTRAP_SERVERS is set. Everything created is removed."""
    with contextlib.ExitStack() as stack:
        bootstrap, kafka_pid = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip(), None
        bootstrap = "" if broker else bootstrap
        server_url = os.environ.get("DATABASE_URL", "").strip()
        origin = []
        work = Path(tempfile.mkdtemp(prefix="focus-bench-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        if not bootstrap and broker == "apache":
            apache = stack.enter_context(ApacheKafka(work / "kafka"))
            bootstrap, kafka_pid = apache.bootstrap_servers, apache.pid
            origin.append(f"Apache Kafka {kafka_version()} (pid {kafka_pid})")
        elif not bootstrap:
            kafka = stack.enter_context(EmbeddedKafka(work / "kafka"))
            bootstrap, kafka_pid = kafka.bootstrap_servers, kafka.pid
            origin.append(f"embedded tansu (pid {kafka_pid})")
        else:
            origin.append(f"$KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        if not server_url:
            pg = stack.enter_context(EmbeddedPostgres(work / "postgres", delete_on_stop=True))
            server_url = pg.url()
            origin.append("embedded PostgreSQL")
        else:
            origin.append("$DATABASE_URL")
        found = Servers(bootstrap, server_url, kafka_pid, ", ".join(origin), work)
        try:
            yield found
        finally:
            for url in found.databases:
                drop_database(found.server_url, url)
            if found.topics and kafka_pid is None:  # an embedded broker forgets them anyway
                asyncio.run(delete_topics(found.bootstrap, found.topics))


def create_database(s: Servers, purpose: str) -> str:
    name = f"focus_bench_{purpose}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(s.server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(s.server_url, dbname=name)
    s.databases.append(url)
    migrate(url)
    return url


def drop_database(server_url: str, url: str) -> None:
    name = str(conninfo_to_dict(url)["dbname"])
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.delete_topics(names)
    except Exception as exc:  # best effort: report, never mask the figures
        print(f"(could not delete topics {names}: {exc})")
    finally:
        await admin.close()


def postgres_facts(url: str) -> str:
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    assert version is not None
    assert fsync is not None
    assert sync is not None
    return f"PostgreSQL {version[0]}, fsync={fsync[0]}, synchronous_commit={sync[0]}"


# -- the stream ------------------------------------------------------------------------------


@dataclass(slots=True)
class Stream:
    topic: str
    dlq: str
    events: int = 0
    size: int = 0  # bytes
    seconds: float = 0.0
    started_sessions: set[bytes] = field(default_factory=set)  # emptied once counted
    sessions: int = 0  # distinct sessions with a start event
    ends: dict[int, int] = field(default_factory=dict)  # partition -> next offset after last


class AckRecorder:
    """Wraps the producer given to ``publish_pairs``: records the end offset of every batch
    the broker acknowledges (base offset + records), the only trustworthy end on tansu."""

    def __init__(self, inner: Any, ends: dict[int, int]) -> None:
        self._inner, self._ends = inner, ends

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        records = batch.record_count()
        future = await self._inner.send_batch(batch, topic, partition=partition)
        future.add_done_callback(lambda f: self._acked(f, partition, records))
        return future

    def _acked(self, future: Any, partition: int, records: int) -> None:
        if not future.cancelled() and future.exception() is None:
            end = future.result().offset + records
            self._ends[partition] = max(self._ends.get(partition, 0), end)


def watch(pairs: Iterable[tuple[bytes, bytes]], stream: Stream) -> Iterator[tuple[bytes, bytes]]:
    """Pass the pairs through, remembering every session that has a start event."""
    for key, value in pairs:
        if STARTED in value:
            at = value.index(SUBJECT) + len(SUBJECT)
            stream.started_sessions.add(value[at:at + 36])
        yield key, value


async def publish_stream(s: Servers, events: int, users: int, seed: int) -> Stream:
    topic = f"focus.bench.{uuid.uuid4().hex[:10]}"
    stream = Stream(topic=topic, dlq=f"{topic}.dlq")
    await ensure_topics(s.bootstrap, {stream.topic: PARTITIONS, stream.dlq: 1})
    s.topics += [stream.topic, stream.dlq]
    pairs = itertools.islice(generate(users, max(1, events // 4), seed), events)
    kafka = producer(s.bootstrap, linger_ms=20, max_batch_size=1024 * 1024)
    await kafka.start()
    try:
        result = await publish_pairs(AckRecorder(kafka, stream.ends), topic, watch(pairs, stream))
    finally:
        await kafka.stop()
    stream.events, stream.size, stream.seconds = result.events, result.bytes, result.seconds
    stream.sessions = len(stream.started_sessions)
    stream.started_sessions.clear()  # not in the heap the projector's collections walk
    if sum(stream.ends.values()) != stream.events:
        print(f"note: acknowledged ends {stream.ends} hold {sum(stream.ends.values())} offsets "
              f"for {stream.events} events (offsets not contiguous from 0?)")
    return stream


# -- measurements ----------------------------------------------------------------------------


@dataclass(slots=True)
class Measurement:
    name: str
    events: int  # counted in the window
    seconds: float  # the window: first commit -> last
    startup: float  # start -> first commit (group join + first batch/event)
    cpu: float | None  # this process (or the worker processes), over the window
    postgres_cpu: float | None  # the server backends doing the work, over the window
    broker_cpu: float | None  # the embedded broker (tansu or the JVM), over the window
    gc: str  # Python's cyclic garbage collector in this process, over the window
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def proc_cpu(pids: Iterable[int]) -> float | None:
    """User + system CPU seconds of processes on this machine (None if any is unreadable)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def backend_pids(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    """PostgreSQL backends working on this database, except the one asking."""
    cur = await conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
    return [pid for (pid,) in await cur.fetchall()]


class GcMeter:
    """Collections and wall seconds spent in them, per generation, while attached."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._began = 0.0

    def attach(self) -> None:
        gc.callbacks.append(self._callback)

    def detach(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            generation = info["generation"]
            self.count[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._began

    def summary(self) -> str:
        parts = ", ".join(f"gen{g} {self.count[g]}x {self.seconds[g]:.2f} s" for g in range(3))
        return f"{sum(self.seconds):.2f} s ({parts})"


class CpuWindow:
    """CPU seconds of this process (or of ``workers``, the processes projecting for it), of the
    PostgreSQL backends doing the work and of the embedded broker, between :meth:`open` and
    :meth:`close` (None: not measurable here)."""

    def __init__(self, kafka_pid: int | None, workers: list[int] | None = None) -> None:
        self.kafka = [kafka_pid] if kafka_pid else []
        self.workers = workers
        self.pg: list[int] = []
        self._start: tuple[float | None, float | None, float | None] | None = None
        self.own: float | None = 0.0
        self.postgres: float | None = None
        self.broker: float | None = None
        self.gc = GcMeter()

    def open(self, postgres_pids: list[int]) -> None:
        self.gc.attach()
        self.pg = postgres_pids
        self._start = (self._own(), proc_cpu(self.pg),
                       proc_cpu(self.kafka) if self.kafka else None)

    def close(self) -> None:
        if self._start is None:
            return
        self.gc.detach()
        own, pg, broker = self._start
        self.own = _minus(self._own(), own)
        self.postgres = _minus(proc_cpu(self.pg), pg)
        self.broker = _minus(proc_cpu(self.kafka), broker) if self.kafka else None

    def _own(self) -> float | None:
        return time.process_time() if self.workers is None else proc_cpu(self.workers)


def _minus(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else end - start


async def read_positions(conn: psycopg.AsyncConnection[Any], topic: str) -> dict[int, int]:
    cur = await conn.execute(
        "SELECT kafka_partition, next_offset FROM projector_positions WHERE topic = %s", (topic,))
    return dict(await cur.fetchall())


async def measure_projector(
    s: Servers, stream: Stream, url: str, batch: int, give_up_after: float,
    profiler: cProfile.Profile | None = None,
) -> Measurement:
    settings = ProjectorSettings(
        kafka_bootstrap_servers=s.bootstrap, database_url=url,
        focus_events_topic=stream.topic, focus_dlq_topic=stream.dlq,
        focus_consumer_group=f"bench-projector-{uuid.uuid4().hex[:10]}",
        focus_batch_max_records=batch,
    )
    projector = build_projector(settings)
    cpu = CpuWindow(s.kafka_pid)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        stopping = asyncio.Event()
        started = time.perf_counter()
        # run_projector: the same start, run and stop as ``focus project``
        task = asyncio.create_task(run_projector(projector, stopping))
        try:
            first_at, first_events = await wait_positions(
                conn, stream, lambda: alive(task), started + give_up_after, committed)
            cpu.open(await backend_pids(conn))
            if profiler:
                profiler.enable()  # the window only: not the group join
            last_at, _ = await wait_positions(
                conn, stream, lambda: alive(task), started + give_up_after, caught_up(stream))
            cpu.close()
        finally:
            if profiler:
                profiler.disable()
            stopping.set()
            await asyncio.wait_for(task, timeout=60)
    return Measurement(
        "projector", stream.events - first_events, last_at - first_at, first_at - started,
        cpu.own, cpu.postgres, cpu.broker, cpu.gc.summary(), note=f"batches of up to {batch}")


async def measure_processes(
    s: Servers, stream: Stream, url: str, batch: int, processes: int, give_up_after: float,
    work: Path,
) -> Measurement:
    """``focus project --processes N`` as a subprocess (settings from the environment, as a
    service manager would give them), measured like :func:`measure_projector`; CPU is the
    workers'. Its output goes to ``work/processes.log``, shown if it fails."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap, "DATABASE_URL": url,
           "FOCUS_EVENTS_TOPIC": stream.topic, "FOCUS_DLQ_TOPIC": stream.dlq,
           "FOCUS_TOPIC_PARTITIONS": str(PARTITIONS),
           "FOCUS_CONSUMER_GROUP": f"bench-processes-{uuid.uuid4().hex[:10]}",
           "FOCUS_BATCH_MAX_RECORDS": str(batch)}
    log_path = work / "processes.log"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        with log_path.open("ab") as log:
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "focus_sessions.cli", "project",
                "--processes", str(processes),
                env=env, cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT)
        try:
            first_at, first_events = await wait_positions(
                conn, stream, lambda: proc.returncode is None, started + give_up_after, committed)
            workers = child_pids(proc.pid)
            cpu = CpuWindow(s.kafka_pid, workers)
            cpu.open(await backend_pids(conn))
            joins = log_path.read_text().count(" assigned [")
            last_at, _ = await wait_positions(
                conn, stream, lambda: proc.returncode is None, started + give_up_after,
                caught_up(stream))
            cpu.close()
            rejoins = log_path.read_text().count(" assigned [") - joins
        except BaseException:
            print(f"--- focus project --processes {processes}:\n{log_path.read_text()[-4000:]}")
            raise
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=60)
    if code != 0:
        raise RuntimeError(f"focus project --processes {processes} exited with {code}; "
                           f"output:\n{log_path.read_text()[-4000:]}")
    note = f"{len(workers)} workers, batches of up to {batch}"
    if rejoins:
        note += f"; {rejoins} assignments during the window (a rebalance: ~3 s idle on tansu)"
    return Measurement(
        f"projector x{processes} procs", stream.events - first_events, last_at - first_at,
        first_at - started, cpu.own, cpu.postgres, cpu.broker, "n/a (in the workers)", note=note)


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # ended while we looked
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def committed(done: dict[int, int]) -> bool:
    return sum(done.values()) > 0


def caught_up(stream: Stream) -> Callable[[dict[int, int]], bool]:
    return lambda done: all(done.get(p, 0) >= end for p, end in stream.ends.items())


def alive(task: asyncio.Task[None]) -> bool:
    """False once ``task`` has returned; raises what it raised."""
    if task.done():
        task.result()
    return not task.done()


async def wait_positions(
    conn: psycopg.AsyncConnection[Any], stream: Stream, running: Callable[[], bool],
    deadline: float, reached: Callable[[dict[int, int]], bool],
) -> tuple[float, int]:
    """Poll the stored positions until ``reached``; return when, and how many events done."""
    while True:
        done = await read_positions(conn, stream.topic)
        now = time.perf_counter()
        if reached(done):
            return now, sum(done.values())
        if not running():
            raise RuntimeError("the projector stopped before catching up")
        if now > deadline:
            raise TimeoutError(f"projection stuck at {done}; the log ends at {stream.ends}")
        await asyncio.sleep(POLL_SECONDS)


async def measure_naive(
    s: Servers, stream: Stream, url: str, limit: int, give_up_after: float
) -> Measurement:
    # imported here: FastStream's objects would otherwise sit in the heap the projector's
    # garbage collections walk through
    from bench.naive_subscriber import run_naive

    limit = min(limit, stream.events)
    cpu = CpuWindow(s.kafka_pid)
    run = await run_naive(s.bootstrap, url, stream.topic,
                          f"bench-naive-{uuid.uuid4().hex[:10]}", limit, give_up_after, cpu)
    if run.processed == 0:
        raise RuntimeError(f"the naive subscriber processed nothing within {give_up_after:.0f} s")
    counted = min(run.processed, limit) - 1  # the window opens at the first commit
    note = f"{limit:,} of {stream.events:,} events, rate extrapolated"
    if run.processed < limit:
        note = f"TIMED OUT after {run.processed:,} of {limit:,} events"
    return Measurement("naive FastStream", counted, run.last_at - run.first_at,
                       run.first_at - run.started, cpu.own, cpu.postgres, cpu.broker,
                       cpu.gc.summary(), note=note)


# -- correctness -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Check:
    sessions: int
    expected_sessions: int | None
    users: int
    rollup_mismatches: int

    @property
    def ok(self) -> bool:
        sessions_ok = self.expected_sessions is None or self.sessions == self.expected_sessions
        return sessions_ok and self.rollup_mismatches == 0


def check(url: str, expected_sessions: int | None) -> Check:
    with psycopg.connect(url) as conn:
        sessions = conn.execute("SELECT count(*) FROM focus_sessions").fetchone()
        users = conn.execute("SELECT count(*) FROM focus_user_stats").fetchone()
        bad = len(conn.execute(rollup_check("public")).fetchall())  # what `focus verify` runs
    assert sessions is not None
    assert users is not None
    return Check(sessions[0], expected_sessions, users[0], bad)


# -- report ----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(rows: list[Measurement]) -> None:
    head = (f"{'':18} {'events':>10} {'seconds':>8} {'events/s':>10} {'CPU s':>7}"
            f" {'PG CPU s':>9} {'broker CPU s':>12} {'join+1st s':>10}")
    print(head)
    print("-" * len(head))
    for m in rows:
        print(f"{m.name:18} {m.events:>10,} {m.seconds:>8.2f} {m.rate:>10,.0f}"
              f" {fmt(m.cpu, '.2f'):>7}"
              f" {fmt(m.postgres_cpu, '.2f'):>9} {fmt(m.broker_cpu, '.2f'):>12}"
              f" {m.startup:>10.2f}   {m.note}")
    for m in rows:
        print(f"{m.name} time in Python's garbage collector: {m.gc}")


def print_side_by_side(runs: dict[str, list[Measurement]]) -> None:
    """events/s, broker CPU and start-up of each measurement, one column group per broker."""
    brokers = list(runs)
    print(f"\nside by side ({', '.join(brokers)}; same seed, same events):")
    head = f"{'':18}" + "".join(f" {b + ' events/s':>17} {'broker CPU s':>12} {'join+1st s':>10}"
                                 for b in brokers)
    print(head)
    print("-" * len(head))
    for row in runs[brokers[0]]:
        cells = ""
        for broker in brokers:
            m = next((r for r in runs[broker] if r.name == row.name), None)
            cells += (f" {m.rate:>17,.0f} {fmt(m.broker_cpu, '.2f'):>12} {m.startup:>10.2f}"
                      if m else f" {'-':>17} {'-':>12} {'-':>10}")
        print(f"{row.name:18}{cells}")


def print_verdict(projectors: list[Measurement], naive: Measurement | None, total: int) -> None:
    if naive and naive.rate:
        print(f"\nnaive subscriber, extrapolated to all {total:,} events: "
              f"{total / naive.rate:,.0f} s ("
              + ", ".join(f"{p.name}: {total / p.rate:,.1f} s" for p in projectors) + ")")
    one = projectors[0]
    for p in projectors[1:]:
        print(f"{p.name} / {one.name}: {p.rate / one.rate:.2f}x")
    for p in projectors:
        ratio = p.rate / naive.rate if naive and naive.rate else None
        print(f"{p.name} / naive: {fmt(ratio, ',.1f')}{'x' if ratio else ''}")
        met = "MET" if p.rate >= TARGET_RATE else "NOT MET"
        print(f"  target >= {TARGET_RATE:,} events/s: {p.rate:,.0f} -> {met}")
        met = "MET" if ratio is not None and ratio >= TARGET_RATIO else "NOT MET"
        print(f"  target >= {TARGET_RATIO}x naive: {fmt(ratio, ',.1f')}{'x' if ratio else ''}"
              f" -> {met}")


def print_check(name: str, c: Check) -> None:
    expected = "" if c.expected_sessions is None else (
        f" (distinct sessions with a start published: {c.expected_sessions:,})")
    print(f"{name}: {'OK' if c.ok else 'MISMATCH'} - focus_sessions {c.sessions:,}{expected};"
          f" rollups of {c.users:,} users vs GROUP BY focus_sessions:"
          f" {c.rollup_mismatches} mismatching")


def print_profile(profiler: cProfile.Profile, top: int) -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    start = text.find("   ncalls")
    print(text[start:] if start >= 0 else text)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# -- main ------------------------------------------------------------------------------------


async def bench(s: Servers, args: argparse.Namespace) -> tuple[bool, list[Measurement]]:
    """Publish, measure the consumers, print the figures; whether the projectors are correct,
    and the measurements (projectors, then the naive subscriber)."""
    print(f"servers: {s.origin}; {postgres_facts(s.server_url)}")
    print(f"machine: {os.cpu_count()} CPUs; load average at start {load()}; {python_speed()}",
          flush=True)
    t = time.perf_counter()
    stream = await publish_stream(s, args.events, args.users, args.seed)
    print(f"published {stream.events:,} events ({stream.size / stream.events:.0f} B each,"
          f" {stream.sessions:,} sessions started, {args.users:,} users) to"
          f" {stream.topic} in {time.perf_counter() - t:.1f} s; ends {stream.ends}", flush=True)

    gc.collect()  # start the projector on a clean heap, as a fresh ``focus project`` would
    give_up_after = 120 + stream.events / 2000
    projector_db = create_database(s, "projector")
    projector = await measure_projector(s, stream, projector_db, args.batch, give_up_after)
    print(f"projector: {projector.events:,} events in {projector.seconds:.2f} s after "
          f"{projector.startup:.2f} s of group join + first batch; load {load()}", flush=True)
    checks = [("projector correctness", check(projector_db, stream.sessions))]
    projectors = [projector]

    if args.processes > 0:
        processes_db = create_database(s, "processes")
        multi = await measure_processes(s, stream, processes_db, args.batch, args.processes,
                                        give_up_after, s.work)
        print(f"{multi.name}: {multi.events:,} events in {multi.seconds:.2f} s after "
              f"{multi.startup:.2f} s of start-up, group join + first batch; load {load()}",
              flush=True)
        checks.append((f"{multi.name} correctness", check(processes_db, stream.sessions)))
        projectors.append(multi)
    correct = all(result.ok for _, result in checks)  # the projectors' (not the naive's)

    naive: Measurement | None = None
    if args.naive_events > 0:
        naive_db = create_database(s, "naive")
        naive = await measure_naive(s, stream, naive_db, args.naive_events,
                                    give_up_after=60 + args.naive_events / 100)
        print(f"naive: {naive.events:,} events in {naive.seconds:.2f} s; load {load()}",
              flush=True)
        checks.append(("naive rollups (for information)", check(naive_db, None)))

    report(stream, projectors, naive, checks)
    if args.profile:
        await profile(s, stream, args, give_up_after)
    return correct, projectors + ([naive] if naive else [])


def report(stream: Stream, projectors: list[Measurement], naive: Measurement | None,
           checks: list[tuple[str, Check]]) -> None:
    print()
    print_table(projectors + ([naive] if naive else []))
    print_verdict(projectors, naive, stream.events)
    print()
    for name, result in checks:
        print_check(name, result)
    print(f"load average at end {load()} (1, 5, 15 min)")


async def profile(s: Servers, stream: Stream, args: argparse.Namespace,
                  give_up_after: float) -> None:
    """A separate projector pass under cProfile (its own group and database)."""
    gc.collect()
    profiler = cProfile.Profile()
    profiled = await measure_projector(s, stream, create_database(s, "profile"), args.batch,
                                       give_up_after, profiler)
    print(f"\ncProfile of a separate projector pass, from its first commit to caught up"
          f" (slowed by the profiler: {profiled.rate:,.0f} events/s), top {args.top} by own"
          " time; a coroutine counts one call per resumption:")
    print_profile(profiler, args.top)
    if args.profile_out:
        profiler.dump_stats(args.profile_out)
        print(f"profile saved to {args.profile_out} (python -m pstats {args.profile_out})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to publish")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--naive-events", type=int, default=20_000,
                        help="events the naive subscriber processes (0: skip it)")
    parser.add_argument("--batch", type=int,
                        default=ProjectorSettings.model_fields["focus_batch_max_records"].default,
                        help="projector batch size (default: the setting's default)")
    parser.add_argument("--processes", type=int, default=min(os.cpu_count() or 1, PARTITIONS),
                        help="also run `focus project --processes N` (0: skip it); default: "
                             "this machine's CPUs, at most the partitions")
    parser.add_argument("--broker", choices=("tansu", "apache", "both"),
                        help="start this broker (both: tansu, then Apache Kafka, side by side); "
                             "default: KAFKA_BOOTSTRAP_SERVERS, else tansu")
    parser.add_argument("--metrics", choices=("on", "off"), default="on",
                        help="projector metrics and health endpoint (off: "
                             "FOCUS_PROJECTOR_METRICS_PORT=0); alternate runs to see their cost")
    parser.add_argument("--profile", action="store_true",
                        help="also profile a separate projector pass with cProfile")
    parser.add_argument("--top", type=int, default=15, help="profile rows to print")
    parser.add_argument("--profile-out", metavar="FILE", help="also save the pstats data")
    args = parser.parse_args(argv)
    if args.profile_out:
        args.profile = True
    if args.events < 1 or args.users < 1:
        parser.error("--events and --users must be positive")
    if not 0 <= args.processes <= 64:
        parser.error("--processes must be 0 (skip) to 64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # read by every projector's settings, in this process and in `focus project --processes`
    os.environ["FOCUS_PROJECTOR_METRICS_PORT"] = "0" if args.metrics == "off" else str(free_port())
    print(f"projector metrics {args.metrics}", flush=True)
    brokers = ["tansu", "apache"] if args.broker == "both" else [args.broker]
    runs: dict[str, list[Measurement]] = {}
    ok = True
    for broker in brokers:
        if len(brokers) > 1:
            print(f"\n=== {broker} ===", flush=True)
        with servers(broker) as s:
            correct, runs[broker or "given"] = asyncio.run(bench(s, args))
        ok = ok and correct
    if len(runs) > 1:
        print_side_by_side(runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

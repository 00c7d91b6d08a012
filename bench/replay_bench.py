"""Benchmark ``focus replay`` against the live projector, on the same topic, in the same run.

    python bench/replay_bench.py                          # 1,000,000 events, 10,000 users
    python bench/replay_bench.py --events 200000 --users 2000 --workers 2
    python bench/replay_bench.py --rounds 3              # one topic, replayed 3 times
    python bench/replay_bench.py --events 200000 --broker both   # tansu, then Apache Kafka
    python bench/replay_bench.py --events 1000000,5000000,20000000 --broker apache --skip-live
    python bench/replay_bench.py --events 1M,5M --memory 512MiB --skip-live

Publishes ``--events`` events (~4 per session: start, two interruptions, end; half the ends
v1, half v2) to a fresh topic, replays them into empty shadow tables of a fresh database
(``focus_bench_<hex>``) and prints events/s of the bulk phase and of the whole replay (diff and
swap included); then runs the live projector (``focus_sessions.bootstrap.build_projector``) over
the same
topic into a second fresh database and prints its events/s next to it. Servers come from
``--bootstrap`` / ``--database-url`` (or KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL); without them,
an embedded broker and PostgreSQL are started for the run. ``--broker apache`` starts Apache
Kafka from Maven Central instead of tansu; ``--broker both`` runs on tansu, then on Apache Kafka
(the same events, one PostgreSQL), and prints the rates side by side.

Memory. Next to the rates, the bench prints the peak resident memory of every replay process
together, measured by the bench itself (:mod:`bench.memory`, independent of the replayer's own
``report.peak_memory``, printed beside it): a thread sums, every 0.1 s while
``Replayer(...).run()`` runs, the RSS (``/proc/<pid>/statm``) of this process (the replay's
coordinator runs in it) and of all its descendants (the workers' fork server, the bulk workers,
multiprocessing's resource tracker), less the broker or database server the bench started
itself; nothing is subtracted, and this process's own RSS before the replay (its baseline) is
printed too. ``--memory`` (e.g. ``1GiB``, ``512MiB``; default 1 GiB) is the replay's budget
(``ReplayOptions.memory_budget``).

Several sizes. ``--events`` takes a list (``1000000,5000000,20000000``, or ``1M,5M,20M``): each
size gets its own fresh topic, is published, replayed (and projected live unless
``--skip-live``); its topic is then deleted (best effort; not with ``--keep``) so a long log
frees its disk, and a table at the end puts the sizes side by side (events, bulk and whole-run
events/s, peak memory measured here and reported by the replayer, flushes), so growth with the
log's length shows. Use ``--skip-live`` and ``--broker apache`` (its log is on disk) for 20M.

Events are generated and published in streamed chunks by ``--publishers`` processes (default
2), each with its own producer filling one batch per partition (the default partitioner's
partition for each key, as ``send`` picks it), never as one list: memory stays bounded at any
size, and the bench process (the replay's coordinator) stays as small as a real ``focus
replay``. (200,000 events on 2 CPUs: 36,000 events/s with one ``send`` per event, 67,000 with
batches, 100,000 with 2 batching processes on tansu; 59,000 and 89,000 on Apache Kafka.) Session
``n`` belongs to ``user-{n % users}``. Its start time is ``T0 + 37 min x (n % 1,000,000 +
n // 1,000,000)``: the first 1,000,000 sessions (4,000,000 events) are the same as before this
option existed (only the event and session ids, uuid4, differ from run to run, as always), so
figures up to 4M events stay comparable; each later million wraps around to the same 70 years
(2026-2096; times must stay before the contract's LATEST, 2200-01-01), shifted by one 37-minute
slot per wrap, so wrap ``k``'s session lands exactly on another session's slot of wrap 0, of
another user unless ``--users`` divides ``d x 999,999`` for a wrap distance ``d`` (never for
10,000 users, nor 200): a user's sessions never overlap. Events of one session are published in
order by one producer; sessions of one user may interleave across publishers (by key, the same
partition), which the projections do not mind.

With the embedded PostgreSQL, the first round runs on a server that has just started: it creates
its WAL segments and first touches its shared buffers, and was 10-20 % slower than the rounds
after it (a long-running server has both). Compare medians of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from bench import python_speed  # noqa: E402
from bench.memory import MIB, PeakMemory, children, name  # noqa: E402
from focus_sessions.apache import ApacheKafka  # noqa: E402
from focus_sessions.bootstrap import build_projector, producer, run_projector  # noqa: E402
from focus_sessions.consumers.replay.follow import ReplayOptions, default_workers, topic_log_ends  # noqa: E402
from focus_sessions.consumers.replay.replayer import Replayer  # noqa: E402
from focus_sessions.contracts.codec import encode  # noqa: E402
from focus_sessions.embedded import EmbeddedKafka, EmbeddedPostgres  # noqa: E402
from focus_sessions.migrate import migrate  # noqa: E402
from focus_sessions.producers import events as ev  # noqa: E402
from focus_sessions.settings import ProjectorSettings  # noqa: E402
from focus_sessions.topics import ensure_topics  # noqa: E402

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", None)
#: Sessions per wrap of the timeline: session ``n`` starts at slot ``n % WRAP + n // WRAP``.
WRAP = 1_000_000
#: Sessions one publisher builds and sends before it takes its next chunk.
CHUNK = 10_000


def create_database(server_url: str) -> str:
    name = f"focus_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, url: str) -> None:
    name = str(conninfo_to_dict(url)["dbname"])
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def fresh_fork_server() -> None:
    """Stop the bulk workers' fork server, if an earlier round started one: each round then
    pays its start, as a new ``focus replay`` process does. (A private method of the standard
    library, hence the guard; without it later rounds would start faster than real runs.)"""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    if server is not None and hasattr(server, "_stop"):
        server._stop()


def positions(url: str, topic: str) -> dict[int, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT kafka_partition, next_offset FROM projector_positions"
                                 " WHERE topic = %s", (topic,)).fetchall())


def session_events(n: int, users: int) -> list[tuple[bytes, bytes]]:
    """Session ``n``'s 4 ``(key, value)`` pairs: users round-robin; start times as the module
    docstring says (for ``n < WRAP``, ``T0 + 37 min x n``, as before)."""
    user = f"user-{n % users}"
    wrap, slot = divmod(n, WRAP)
    at = T0 + timedelta(minutes=37 * (slot + wrap))
    start = ev.started(user, at, time_zone=ZONES[n % len(ZONES)])
    sid = start.data.session_id
    end = (ev.ended_v1(user, sid, at + timedelta(minutes=25), completed=n % 3 > 0)
           if n % 2 else
           ev.ended(user, sid, at + timedelta(minutes=24), focus_quality=1 + n % 5))
    key = user.encode()
    return [(key, encode(event)) for event in (
        start, ev.interrupted(user, sid, at + timedelta(minutes=5)),
        ev.interrupted(user, sid, at + timedelta(minutes=9)), end)]


def sessions(events: int, users: int) -> list[tuple[bytes, bytes]]:
    """All ``(key, value)`` pairs of ``events`` events in one list (small sizes, tests)."""
    return [pair for n in range(events // 4) for pair in session_events(n, users)]


async def publish_part(bootstrap: str, topic: str, total: int, users: int, part: int,
                       parts: int) -> int:
    """Publish chunks ``part``, ``part + parts``, ... of sessions ``0 .. total - 1`` (``CHUNK``
    sessions each), streaming. Events go in batches, one per partition, each event to the
    partition the producer's default partitioner gives its key (as ``send`` would), in order;
    at most ``4 x partitions`` batches (1 MiB each at most) wait at a time. Building the batches
    here is ~2x faster than one ``send`` per event. Returns events sent."""
    kafka = producer(bootstrap, linger_ms=20, max_batch_size=1024 * 1024)
    await kafka.start()
    sent = 0
    try:
        partitions = sorted(await kafka.partitions_for(topic))
        partition_of: dict[bytes, int] = {}
        batches: dict[int, tuple[Any, int]] = {}  # partition -> (batch, events in it)
        pending: list[tuple[asyncio.Future[Any], int]] = []

        async def ship(partition: int) -> None:
            nonlocal sent
            batch, count = batches.pop(partition)
            batch.close()
            pending.append((await kafka.send_batch(batch, topic, partition=partition), count))
            if len(pending) >= 4 * len(partitions):
                await asyncio.gather(*(future for future, _ in pending))
                sent += sum(count for _, count in pending)
                pending.clear()

        for first in range(part * CHUNK, total, parts * CHUNK):
            for n in range(first, min(first + CHUNK, total)):
                for key, value in session_events(n, users):
                    partition = partition_of.get(key)
                    if partition is None:
                        partition = partition_of[key] = DefaultPartitioner()(
                            key, partitions, partitions)
                    while True:
                        batch, count = batches.get(partition) or (kafka.create_batch(), 0)
                        if batch.append(key=key, value=value, timestamp=None) is not None:
                            batches[partition] = (batch, count + 1)
                            break
                        batches[partition] = (batch, count)
                        await ship(partition)  # full: send it, then start the next one
        for partition in list(batches):
            await ship(partition)
        await asyncio.gather(*(future for future, _ in pending))
        sent += sum(count for _, count in pending)
    finally:
        await kafka.stop()
    return sent


def publisher(bootstrap: str, topic: str, total: int, users: int, part: int, parts: int) -> int:
    """One publishing process (spawned: it shares nothing with the bench's loop)."""
    return asyncio.run(publish_part(bootstrap, topic, total, users, part, parts))


async def publish(bootstrap: str, topic: str, events: int, users: int, processes: int) -> int:
    """Publish ``events // 4`` sessions from ``processes`` spawned processes, each with its own
    producer; they have all exited when this returns. Returns events published."""
    total = events // 4
    processes = max(1, min(processes, -(-total // CHUNK)))
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        counts = await asyncio.gather(*(
            loop.run_in_executor(pool, publisher, bootstrap, topic, total, users, part, processes)
            for part in range(processes)))
    return sum(counts)


async def drop_topics(bootstrap: str, topics: list[str]) -> str:
    """Delete ``topics`` (frees a long log's disk); best effort: says what happened."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.delete_topics(topics, timeout_ms=60_000)
    except Exception as error:  # best effort: a broker may not support it
        return f"not deleted ({type(error).__name__}: {error})"
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return "deleted"


def parse_size(text: str) -> int:
    """Bytes from ``1073741824``, ``1GiB``, ``512MiB``, ``1.5G`` (binary units; ``kB``/``MB``/
    ``GB`` decimal)."""
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match[2].lower() not in units:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 512MiB, bytes)")
    return int(float(match[1]) * units[match[2].lower()])


def parse_counts(text: str) -> list[int]:
    """``1000000,5000000`` or ``1M,5M,20M`` or ``200k``: event counts."""
    counts = []
    for item in text.replace("_", "").split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", item)
        if not match:
            raise argparse.ArgumentTypeError(f"not an event count: {item!r}")
        counts.append(int(float(match[1]) * {"": 1, "k": 10**3, "m": 10**6}[match[2].lower()]))
    return counts


def mib(size: int) -> str:
    return f"{size / MIB:,.0f} MiB"


def server_processes() -> set[int]:
    """This process's children now, less multiprocessing's resource tracker and fork server
    (replay processes): the servers the bench started (tansu, Apache Kafka, PostgreSQL when
    it is a child), whose memory is not the replay's."""
    tracker = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    server = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    return set(children(os.getpid())) - {tracker, server}


async def live_projector(bootstrap: str, url: str, topic: str) -> tuple[float, float]:
    """The live projector, run as ``focus project`` runs it (``run_projector``): seconds from
    its first commit to caught up with the whole topic, and the group-join time before it."""
    settings = ProjectorSettings(kafka_bootstrap_servers=bootstrap, database_url=url,
                                 focus_events_topic=topic, focus_dlq_topic=f"{topic}.dlq",
                                 focus_consumer_group=f"bench-{topic}")
    ends = await topic_log_ends(bootstrap, topic)
    stopping = asyncio.Event()
    started, first = time.perf_counter(), None
    task = asyncio.create_task(run_projector(build_projector(settings), stopping))
    try:
        while True:
            done = positions(url, topic)
            if first is None and any(done.values()):
                first = time.perf_counter()
            if first is not None and all(done.get(p, 0) >= end for p, end in ends.items() if end):
                return time.perf_counter() - first, first - started
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
    finally:
        stopping.set()
        await task


async def one_size(args: argparse.Namespace, events: int) -> dict[str, float]:
    """Publish ``events`` events to a fresh topic, replay it ``--rounds`` times, project it live
    (unless ``--skip-live``), delete the topic; print the figures and return them by name."""
    figures: dict[str, float] = {"events": events // 4 * 4}
    topic = f"focus.bench.{uuid.uuid4().hex[:10]}"
    await ensure_topics(args.bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
    print(f"\n--- {events // 4 * 4:,} events, {args.users:,} users, topic {topic} ---", flush=True)
    t = time.perf_counter()
    published = await publish(args.bootstrap, topic, events, args.users, args.publishers)
    seconds = time.perf_counter() - t
    print(f"published {published:,} events in {seconds:.1f} s = {published / seconds:,.0f}"
          f" events/s (built and sent by {min(args.publishers, -(-(events // 4) // CHUNK))}"
          " publisher processes, spawn included)", flush=True)
    figures["publish"] = published / seconds

    rates: list[float] = []
    replay_db, live_db = None, None
    try:
        for n in range(1, args.rounds + 1):
            if replay_db is not None and not args.keep:
                drop_database(args.database_url, replay_db)
            fresh_fork_server()
            replay_db = create_database(args.database_url)
            migrate(replay_db)
            options = ReplayOptions(bootstrap=args.bootstrap, url=replay_db, topic=topic,
                                    workers=args.workers, memory_budget=args.memory)
            servers = server_processes()
            replayer = Replayer(options, migrate)
            t = time.perf_counter()
            with PeakMemory(exclude=servers) as peak:
                report = await replayer.run()
            whole = time.perf_counter() - t
            rates.append(report.events_per_second)
            label = f" (round {n} of {args.rounds})" if args.rounds > 1 else ""
            if args.rounds > 1:  # the machine's speed can move between rounds: show it
                label += f"; after it, {python_speed()}"
            print(f"replay bulk : {report.events:,} events in {report.bulk_seconds:.2f} s ="
                  f" {report.events_per_second:,.0f} events/s ({args.workers} workers);"
                  f" peak memory {mib(peak.peak)} (all replay processes; budget"
                  f" {mib(args.memory)}){label}")
            print(f"replay total: {whole:.2f} s = {report.events / whole:,.0f} events/s"
                  f" (schema, bulk, catch-up, diff, swap); {report.dead_letters:,} dead letters,"
                  f" {report.duplicates:,} duplicates")
            own = (mib(report.peak_memory) if report.peak_memory
                   else "0 (not reported)")
            print(f"replay memory: peak {mib(peak.peak)} measured by the bench"
                  f" ({peak.processes_at_peak} processes at the peak, {peak.samples} samples"
                  f" every {peak.interval} s; this"
                  f" process alone before the replay: {mib(peak.baseline)}, counted in the peak);"
                  f" the replayer's own peak_memory: {own}; flushes: {report.flushes:,};"
                  f" split sessions {report.split_sessions:,}; steps "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in report.steps.items()),
                  flush=True)
            if servers and n == 1:
                print("  (not counted, the bench's servers: "
                      + ", ".join(f"{name(pid)} {pid}" for pid in sorted(servers)) + ")")
            figures["replay bulk"] = statistics.median(rates)
            figures["replay total"] = report.events / whole
            figures["peak memory"] = max(figures.get("peak memory", 0), peak.peak)
            figures["replayer peak"] = max(figures.get("replayer peak", 0), report.peak_memory)
            figures["flushes"] = report.flushes
            figures["baseline"] = peak.baseline
        if args.rounds > 1:
            print(f"replay bulk, median of {args.rounds}: {statistics.median(rates):,.0f} events/s"
                  f" (lowest {min(rates):,.0f}, highest {max(rates):,.0f})", flush=True)
        if args.skip_live:
            return figures
        live_db = create_database(args.database_url)
        migrate(live_db)
        seconds, joining = await live_projector(args.bootstrap, live_db, topic)
        print(f"live projector: {report.events:,} events in {seconds:.2f} s ="
              f" {report.events / seconds:,.0f} events/s sustained (after {joining:.1f} s"
              " joining its consumer group and committing a first batch)")
        figures["live projector"] = report.events / seconds
        return figures
    finally:
        if not args.keep:
            for url in (replay_db, live_db):
                if url:
                    drop_database(args.database_url, url)
            print(f"topic {topic}: "
                  f"{await drop_topics(args.bootstrap, [topic, f'{topic}.dlq'])}", flush=True)


#: Columns of the table of sizes: (figure, heading, format).
COLUMNS = (("events", "events", "{:,.0f}"), ("publish", "publish/s", "{:,.0f}"),
           ("replay bulk", "bulk/s", "{:,.0f}"), ("replay total", "whole run/s", "{:,.0f}"),
           ("peak memory", "peak MiB", "{:,.0f}"), ("replayer peak", "own MiB", "{:,.0f}"),
           ("flushes", "flushes", "{:,.0f}"), ("live projector", "live/s", "{:,.0f}"))


def table(rows: list[dict[str, float]], memory: int) -> None:
    """The sizes side by side: one line each."""
    columns = [c for c in COLUMNS if any(c[0] in row for row in rows)]
    print(f"\nby log length (peak MiB: all replay processes, measured by the bench, budget"
          f" {mib(memory)}; own MiB: the replayer's report.peak_memory):")
    print("".join(f"{heading:>13}" for _, heading, _ in columns))
    for row in rows:
        cells = [form.format(row[key] / (MIB if "MiB" in heading else 1)) if key in row else "-"
                 for key, heading, form in columns]
        print("".join(f"{cell:>13}" for cell in cells))


async def main(args: argparse.Namespace) -> list[dict[str, float]]:
    """Every size of ``--events`` in turn; the figures of each, in order."""
    print(f"machine: {os.cpu_count()} CPUs; {python_speed()}", flush=True)
    rows = [await one_size(args, events) for events in args.events]
    if len(rows) > 1:
        table(rows, args.memory)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=parse_counts, default=[1_000_000],
                        help="events, or a list of sizes, each on its own topic:"
                             " 1000000,5000000,20000000 (or 1M,5M,20M); default 1M")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="bulk worker processes (default: focus replay's)")
    parser.add_argument("--memory", type=parse_size, default=1 << 30,
                        help="the replay's memory budget, all its processes together"
                             " (ReplayOptions.memory_budget): bytes, or 1GiB, 512MiB; default 1GiB")
    parser.add_argument("--publishers", type=int, default=2,
                        help="processes that build and publish the events, each with its own"
                             " producer (default 2)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--rounds", type=int, default=1,
                        help="replay the published topic this many times, each into a fresh"
                             " database (this machine's speed drifts: compare medians)")
    parser.add_argument("--skip-live", action="store_true", help="only the replay")
    parser.add_argument("--keep", action="store_true", help="keep the databases and topics")
    parser.add_argument("--broker", choices=("tansu", "apache", "both"),
                        help="start this broker, even with --bootstrap (both: tansu, then Apache"
                             " Kafka, side by side); default: --bootstrap, else tansu")
    arguments = parser.parse_args()
    brokers = ["tansu", "apache"] if arguments.broker == "both" else [arguments.broker]
    runs: dict[str, list[dict[str, float]]] = {}
    with contextlib.ExitStack() as servers:  # embedded PostgreSQL unless given
        work = Path(tempfile.mkdtemp(prefix="focus-replay-bench-"))
        servers.callback(shutil.rmtree, work, ignore_errors=True)
        if not arguments.database_url:
            arguments.database_url = servers.enter_context(
                EmbeddedPostgres(work / "postgres", delete_on_stop=True)).url()
        given = arguments.bootstrap
        for broker in brokers:
            with contextlib.ExitStack() as kafka:  # one broker at a time, each on its own
                if broker == "apache":
                    arguments.bootstrap = kafka.enter_context(
                        ApacheKafka(work / "apache")).bootstrap_servers
                elif broker == "tansu" or not given:
                    arguments.bootstrap = kafka.enter_context(
                        EmbeddedKafka(work / "tansu")).bootstrap_servers
                print(f"\n=== {broker or arguments.bootstrap} ===", flush=True)
                runs[broker or "given"] = asyncio.run(main(arguments))
    if len(runs) > 1:
        print(f"\nside by side ({', '.join(runs)}; the same events):")
        for rows in zip(*runs.values(), strict=True):
            for key, heading, form in COLUMNS[1:]:
                if any(key in row for row in rows):
                    values = [row.get(key) for row in rows]
                    scale = MIB if "MiB" in heading else 1
                    print(f"{rows[0]['events']:>12,.0f} {heading:<12}" + "".join(
                        f" {'-' if v is None else form.format(v / scale):>12}" for v in values))

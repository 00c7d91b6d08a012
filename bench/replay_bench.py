"""Benchmark ``focus replay`` against the live projector, on the same topic, in the same run.

    python bench/replay_bench.py                          # 1,000,000 events, 10,000 users
    python bench/replay_bench.py --events 200000 --users 2000 --workers 2
    python bench/replay_bench.py --rounds 3              # one topic, replayed 3 times
    python bench/replay_bench.py --events 200000 --broker both   # tansu, then Apache Kafka

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

With the embedded PostgreSQL, the first round runs on a server that has just started: it creates
its WAL segments and first touches its shared buffers, and was 10-20 % slower than the rounds
after it (a long-running server has both). Compare medians of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing.forkserver
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from bench import python_speed  # noqa: E402
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


def sessions(events: int, users: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs: 4 events per session, users round-robin."""
    out: list[tuple[bytes, bytes]] = []
    for n in range(events // 4):
        user = f"user-{n % users}"
        at = T0 + timedelta(minutes=37 * n)
        start = ev.started(user, at, time_zone=ZONES[n % len(ZONES)])
        sid = start.data.session_id
        end = (ev.ended_v1(user, sid, at + timedelta(minutes=25), completed=n % 3 > 0)
               if n % 2 else
               ev.ended(user, sid, at + timedelta(minutes=24), focus_quality=1 + n % 5))
        for event in (start, ev.interrupted(user, sid, at + timedelta(minutes=5)),
                      ev.interrupted(user, sid, at + timedelta(minutes=9)), end):
            out.append((user.encode(), encode(event)))
    return out


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    kafka = producer(bootstrap, linger_ms=20, max_batch_size=1024 * 1024)
    await kafka.start()
    try:
        pending = []
        for key, value in messages:
            pending.append(await kafka.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await kafka.stop()


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


async def main(args: argparse.Namespace) -> dict[str, float]:
    """Publish, replay, project; print the figures and return the rates (events/s) by name."""
    figures: dict[str, float] = {}
    topic = f"focus.bench.{uuid.uuid4().hex[:10]}"
    await ensure_topics(args.bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
    print(f"machine: {os.cpu_count()} CPUs; {python_speed()}", flush=True)
    t = time.perf_counter()
    messages = sessions(args.events, args.users)
    print(f"built {len(messages):,} events in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    await publish(args.bootstrap, topic, messages)
    print(f"published in {time.perf_counter() - t:.1f} s", flush=True)
    del messages

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
                                    workers=args.workers)
            t = time.perf_counter()
            report = await Replayer(options, migrate).run()
            whole = time.perf_counter() - t
            rates.append(report.events_per_second)
            label = f" (round {n} of {args.rounds})" if args.rounds > 1 else ""
            if args.rounds > 1:  # the machine's speed can move between rounds: show it
                label += f"; after it, {python_speed()}"
            print(f"replay bulk : {report.events:,} events in {report.bulk_seconds:.2f} s ="
                  f" {report.events_per_second:,.0f} events/s ({args.workers} workers){label}")
            print(f"replay total: {whole:.2f} s = {report.events / whole:,.0f} events/s"
                  " (schema, bulk, catch-up, diff, swap)", flush=True)
            figures["replay bulk"] = statistics.median(rates)
            figures["replay total"] = report.events / whole
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="bulk worker processes (default: focus replay's)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--rounds", type=int, default=1,
                        help="replay the published topic this many times, each into a fresh"
                             " database (this machine's speed drifts: compare medians)")
    parser.add_argument("--skip-live", action="store_true", help="only the replay")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--broker", choices=("tansu", "apache", "both"),
                        help="start this broker, even with --bootstrap (both: tansu, then Apache"
                             " Kafka, side by side); default: --bootstrap, else tansu")
    arguments = parser.parse_args()
    brokers = ["tansu", "apache"] if arguments.broker == "both" else [arguments.broker]
    runs: dict[str, dict[str, float]] = {}
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
        print(f"\nside by side, events/s ({', '.join(runs)}; the same events):")
        for name in next(iter(runs.values())):
            print(f"{name:16}" + "".join(f" {r.get(name, 0):>12,.0f}" for r in runs.values()))

"""The projector's pure Python hot path, per event, without a broker or a database.

    python bench/hotpath_bench.py                 # 200,000 simulated events, batches of 10,000
    python bench/hotpath_bench.py --events 50000 --repeat 5

The projector is CPU-bound in Python (see ``bench/projector_bench.py``); this splits that cost
into its stages, on the simulator's stream cut into partitions and batches as the projector sees
it: decode (bytes -> validated, upcast events), plan (the fold of a batch into rows, deltas and
statuses) and encode (the rows written by binary COPY, formatted by psycopg but not sent).
Each stage is timed on its own (CPU time of this process), best of ``--repeat`` runs, with the
projector's GC settings.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg._copy_base import BinaryFormatter  # noqa: E402  (what Copy.write_row uses)
from psycopg.adapt import Transformer  # noqa: E402
from psycopg.pq import Format  # noqa: E402

from focus_sessions.bootstrap import GC_THRESHOLDS  # noqa: E402
from focus_sessions.consumers.projector import Projector  # noqa: E402
from focus_sessions.contracts.codec import decode_message as contract_decode  # noqa: E402
from focus_sessions.producers.bulk import partition_for  # noqa: E402
from focus_sessions.producers.simulate import generate  # noqa: E402
from focus_sessions.projections.batch import plan  # noqa: E402
from focus_sessions.projections.readmodels.sessions import (  # noqa: E402
    SESSION_EVENT_TYPES,
    SESSION_TYPES,
    event_record,
    session_record,
)
from focus_sessions.projections.wire import decode_message  # noqa: E402
from focus_sessions.settings import ProjectorSettings  # noqa: E402

PARTITIONS = 6


class _Record:
    """The attributes of an aiokafka ``ConsumerRecord`` the projector reads."""

    __slots__ = ("key", "offset", "partition", "topic", "value")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.key, self.value = key, value


def batches(events: int, users: int, size: int) -> list[list[list[_Record]]]:
    """The simulated stream as the projector polls it: up to ``size`` records a poll, as a list
    of records per partition (each in log order)."""
    per_partition: list[list[_Record]] = [[] for _ in range(PARTITIONS)]
    sessions = max(1, events // 4)
    for key, value in generate(users, sessions, seed=1):
        p = partition_for(key, PARTITIONS)
        per_partition[p].append(_Record("focus.events", p, len(per_partition[p]), key, value))
    share = size // PARTITIONS
    polls = []
    for start in range(0, max(len(rs) for rs in per_partition), share):
        polls.append([rs[start:start + share] for rs in per_partition if rs[start:start + share]])
    return polls


def _decode_all(fn: Callable[[bytes | None, bytes | None], object],
                records: list[tuple[bytes | None, bytes | None]]) -> list[object]:
    return [fn(k, v) for k, v in records]


def best(repeat: int, run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        began = time.process_time()  # CPU time: steadier than wall time on a busy machine
        run()
        times.append(time.process_time() - began)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--batch", type=int,
                        default=ProjectorSettings.model_fields["focus_batch_max_records"].default)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    polled = batches(args.events, args.users, args.batch)
    total = sum(len(rs) for poll in polled for rs in poll)
    decode = Projector._decode  # the projector's own decode, unbound: it reads no state
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    decoded = [decode(None, b) for b in polled]  # type: ignore[arg-type]
    plans = [plan({}, d.located) for d in decoded]

    def formatter(types: tuple[str, ...]) -> BinaryFormatter:
        tx = Transformer()
        tx.set_dumper_types([psycopg.adapters.types[t].oid for t in types], Format.BINARY)
        return BinaryFormatter(tx)

    def encode() -> None:
        events_out, sessions_out = formatter(SESSION_EVENT_TYPES), formatter(SESSION_TYPES)
        for p in plans:
            for new in p.new_events:
                loc = new.located
                events_out.write_row(
                    event_record(loc.event, new.status, loc.partition, loc.offset))
            for row in p.rows:
                sessions_out.write_row(session_record(row))

    stages = {
        "decode": best(args.repeat, lambda: [decode(None, b) for b in polled]),  # type: ignore[arg-type]
        "plan": best(args.repeat, lambda: [plan({}, d.located) for d in decoded]),
        "encode": best(args.repeat, encode),
    }
    print(f"{total:,} events in {len(polled)} batches of up to {args.batch}; "
          f"{sum(len(p.rows) for p in plans):,} session rows")
    for name, seconds in stages.items():
        print(f"{name:>8}: {seconds * 1e6 / total:6.2f} us/event")
    print(f"{'total':>8}: {sum(stages.values()) * 1e6 / total:6.2f} us/event")

    # the decoders alone, side by side: the projection's msgspec mirror and the pydantic contract
    records = [(r.key, r.value) for poll in polled for rs in poll for r in rs]
    decoders: dict[str, Callable[[bytes | None, bytes | None], object]] = {
        "msgspec mirror": decode_message, "pydantic contract": contract_decode}
    for name, fn in decoders.items():
        seconds = best(args.repeat, partial(_decode_all, fn, records))
        print(f"decoder alone, {name}: {seconds * 1e6 / total:5.2f} us/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The redrive ledger in PostgreSQL (``migrations/0005_dlq_redrive.sql``): one run at a time
per dead-letter topic, and every letter each run sent.

The lock is a session-level advisory lock held on the ledger's own connection for the whole
run: a run that crashes (even SIGKILL) loses its connection and with it the lock, and the next
run marks its row ``interrupted``. A letter is written ``sending`` and committed *before* it is
published, and ``sent`` once the broker acknowledged it, so a crash can leave only the chunk in
flight uncertain (:mod:`focus_sessions.consumers.redrive_plan` sends those once more).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from focus_sessions.consumers.redrive_plan import Prior, Send, Sent

#: First key of the two-key advisory lock of redrives; the second is the topic's hash.
LOCK_CLASS = 0x464C5144  # "FLQD"


class RedriveBusy(RuntimeError):
    """Another redrive of the same dead-letter topic holds the lock."""


@dataclass(frozen=True, slots=True)
class Run:
    run_id: int
    state: str
    host: str
    pid: int
    started_at: datetime
    planned: int
    sent: int

    def describe(self) -> str:
        return (f"run {self.run_id} ({self.state}), started {self.started_at:%Y-%m-%d %H:%M:%S %Z}"
                f" by pid {self.pid} on {self.host}: {self.sent} of {self.planned} sent")


@dataclass(frozen=True, slots=True)
class History:
    """One letter's row of the ledger (``focus dlq show``)."""

    run_id: int
    state: str
    redrive_count: int
    events_partition: int | None
    events_offset: int | None
    updated_at: datetime


class Ledger:
    """The ledger of one dead-letter topic, on one autocommit connection (which holds the
    lock once :meth:`lock` succeeded)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], dlq_topic: str) -> None:
        self.conn = conn
        self.dlq_topic = dlq_topic

    @classmethod
    async def open(cls, url: str, dlq_topic: str) -> Ledger:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)
        return cls(conn, dlq_topic)

    async def close(self) -> None:
        await self.conn.close()  # a held lock goes with the session

    async def lock(self) -> None:
        """Take the topic's redrive lock, or raise :class:`RedriveBusy` naming the run that
        holds it. Rows of runs still ``running`` whose lock was free crashed: ``interrupted``."""
        cur = await self.conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, self.dlq_topic))
        row = await cur.fetchone()
        if not (row and row[0]):
            running = await self.runs(state="running", limit=1)
            who = running[0].describe() if running else "a run that has not written its row yet"
            raise RedriveBusy(f"another redrive of {self.dlq_topic} is running: {who}. "
                              "One redrive at a time per dead-letter topic; wait for it to end.")
        await self.conn.execute(
            "UPDATE dlq_redrive.runs SET state = 'interrupted', finished_at = clock_timestamp()"
            " WHERE dlq_topic = %s AND state = 'running'", (self.dlq_topic,))

    async def prior(self) -> Prior:
        """What earlier runs sent from this topic."""
        cur = await self.conn.execute(
            "SELECT dlq_partition, dlq_offset, run_id, state, redrive_count, original_sha256"
            " FROM dlq_redrive.letters WHERE dlq_topic = %s", (self.dlq_topic,))
        letters: dict[tuple[int, int], Sent] = {}
        counts: dict[str, int] = {}
        for partition, offset, run_id, state, count, sha in await cur.fetchall():
            letters[(partition, offset)] = Sent(run_id, state, count)
            counts[sha] = max(counts.get(sha, 0), count)
        return Prior(letters, counts)

    async def start(self, events_topic: str, options: dict[str, object], planned: int) -> int:
        cur = await self.conn.execute(
            "INSERT INTO dlq_redrive.runs (dlq_topic, events_topic, options, planned, host, pid)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING run_id",
            (self.dlq_topic, events_topic, json.dumps(options, sort_keys=True), planned,
             socket.gethostname(), os.getpid()))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def sending(self, run_id: int, sends: Sequence[Send]) -> None:
        """Record ``sends`` as about to be published (committed before the first is sent)."""
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO dlq_redrive.letters (dlq_topic, dlq_partition, dlq_offset, run_id,"
                " original_sha256, event_id, redrive_count, state)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, 'sending')"
                " ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO UPDATE SET"
                " run_id = EXCLUDED.run_id, state = 'sending', updated_at = clock_timestamp()",
                [(self.dlq_topic, s.letter.partition, s.letter.offset, run_id,
                  s.letter.original_sha256, s.letter.event_id, s.count) for s in sends])

    async def sent(self, run_id: int, acks: Sequence[tuple[Send, int, int]]) -> None:
        """Record ``(send, partition, offset)`` acknowledged by the broker."""
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await cur.executemany(
                "UPDATE dlq_redrive.letters SET state = 'sent', events_partition = %s,"
                " events_offset = %s, updated_at = clock_timestamp()"
                " WHERE dlq_topic = %s AND dlq_partition = %s AND dlq_offset = %s",
                [(p, o, self.dlq_topic, s.letter.partition, s.letter.offset)
                 for s, p, o in acks])
            await cur.execute("UPDATE dlq_redrive.runs SET sent = sent + %s WHERE run_id = %s",
                              (len(acks), run_id))

    async def finish(self, run_id: int, state: str = "finished") -> None:
        await self.conn.execute(
            "UPDATE dlq_redrive.runs SET state = %s, finished_at = clock_timestamp()"
            " WHERE run_id = %s", (state, run_id))

    async def runs(self, *, state: str | None = None, limit: int = 10) -> list[Run]:
        """The topic's latest runs, newest first."""
        cur = await self.conn.execute(
            "SELECT run_id, state, host, pid, started_at, planned, sent FROM dlq_redrive.runs"
            " WHERE dlq_topic = %s AND (%s::text IS NULL OR state = %s)"
            " ORDER BY run_id DESC LIMIT %s", (self.dlq_topic, state, state, limit))
        return [Run(*row) for row in await cur.fetchall()]

    async def history(self, places: Sequence[tuple[int, int]]
                      ) -> dict[tuple[int, int], History]:
        """The ledger's row of each letter at ``places`` that a run sent."""
        if not places:
            return {}
        cur = await self.conn.execute(
            "SELECT dlq_partition, dlq_offset, run_id, state, redrive_count, events_partition,"
            " events_offset, updated_at FROM dlq_redrive.letters WHERE dlq_topic = %s"
            " AND (dlq_partition, dlq_offset) IN (SELECT * FROM unnest(%s::int[], %s::bigint[]))",
            (self.dlq_topic, [p for p, _ in places], [o for _, o in places]))
        return {(row[0], row[1]): History(*row[2:]) for row in await cur.fetchall()}

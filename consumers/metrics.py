"""The projector's Prometheus metrics, declared once (the table: docs/metrics.md).

Updated per batch and per idle tick, never per event: the projector already counts what a batch
did, and one ``inc``/``observe`` per batch keeps the cost out of the hot path (about 90 µs a
batch; paired runs of ``bench/projector_bench.py --metrics on|off`` differ by less than their
noise: docs/metrics.md#cost).

One projector process keeps its metrics in its own registry (``registry``), which
``focus_sessions.telemetry`` serves. Under ``focus project --processes N`` the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` for its workers: prometheus-client then writes every value to
files there, and the supervisor serves their aggregate. For that mode, gauges say how they
combine: the heartbeat and lag gauges keep one series per worker (``pid`` label, added by the
collector), the held gauges the largest worker's value (all read the same table).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from focus_sessions.consumers.dlq import DeadLetter
from focus_sessions.contracts import topics

#: Seconds between a batch's commit and its events' ``time``: from "at once" to a day behind.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
                   21_600, 86_400)
BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000)
TRANSACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: The held events of a schema, and the oldest one's envelope time (a partial index covers it).
HELD_QUERY = "SELECT count(*), min(recorded_at) FROM {schema}.session_events WHERE status = 'held'"


class ProjectorMetrics:
    """Every metric of one projector process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        #: (port, health window in seconds) where ``run_projector`` serves this registry;
        #: None: not served by this process (a worker's supervisor serves the aggregate).
        self.serve: tuple[int, float] | None = None
        r = self.registry
        self.consumed = Counter(
            "focus_projector_events_consumed", "Records read from the events topic and "
            "committed (valid, duplicate or dead-lettered).", registry=r)
        self.projected = Counter(
            "focus_projector_events_projected", "Events stored by a committed batch "
            "(applied, held, superseded or contradiction; not duplicates).", registry=r)
        self.duplicates = Counter(
            "focus_projector_duplicates", "Events ignored because their id was already stored.",
            registry=r)
        self.dead_letters = Counter(
            "focus_projector_dead_letters", "Dead letters sent, by reason.", ["reason"],
            registry=r)
        self.dead_letters_unsent = Counter(
            "focus_projector_dead_letters_unsent", "Dead letters the broker refused (too "
            "large): logged with their origin, not sent.", registry=r)
        self.fenced = Counter(
            "focus_projector_fenced_batches", "Batches dropped because another writer moved a "
            "position (rebalance, replay swap).", registry=r)
        self.retries = Counter(
            "focus_projector_retries", "Batch attempts that failed on PostgreSQL or Kafka and "
            "were retried after backoff.", registry=r)
        self.batch_size = Histogram(
            "focus_projector_batch_size_events", "Records per committed batch.",
            buckets=BATCH_BUCKETS, registry=r)
        self.transaction = Histogram(
            "focus_projector_transaction_duration_seconds", "Duration of a batch's committed "
            "PostgreSQL transaction (load, fold, dead letters, write, commit).",
            buckets=TRANSACTION_BUCKETS, registry=r)
        self.latency = Histogram(
            "focus_projector_end_to_end_latency_seconds", "Commit time minus event time; one "
            "observation per partition per batch, for its first event there (the one that "
            "waited longest).",
            buckets=LATENCY_BUCKETS, registry=r)
        self.lag = Gauge(
            "focus_projector_lag_events", "Log end minus stored position, per owned "
            "partition (0 once a partition is no longer owned).", ["partition"],
            multiprocess_mode="liveall", registry=r)
        self.lag_seconds = Gauge(
            "focus_projector_lag_seconds", "Age of the oldest record not yet projected, per "
            "owned partition (its Kafka timestamp; 0 when caught up).", ["partition"],
            multiprocess_mode="liveall", registry=r)
        self.held = Gauge(
            "focus_projector_held_events", "Events held until their session's start arrives.",
            multiprocess_mode="livemax", registry=r)
        self.held_age = Gauge(
            "focus_projector_held_oldest_age_seconds", "Age of the oldest held event (its "
            "envelope time; 0 when none is held).", multiprocess_mode="livemax", registry=r)
        self.last_poll = Gauge(
            "focus_projector_last_poll_timestamp_seconds", "Heartbeat: when the projector last "
            "polled the broker (Unix time).", multiprocess_mode="liveall", registry=r)
        self.last_progress = Gauge(
            "focus_projector_last_progress_timestamp_seconds", "When the projector last "
            "committed a batch or had no lag (Unix time).", multiprocess_mode="liveall",
            registry=r)
        started = time.time()  # the heartbeat starts with the process, not at 1970
        self.last_poll.set(started)
        self.last_progress.set(started)

    def committed(self, *, consumed: int, projected: int, duplicates: int,
                  letters: Sequence[DeadLetter], seconds: float,
                  event_times: Iterable[datetime | None], now: float) -> None:
        """One committed batch: its counts, its letters, its transaction's duration and the
        time of each partition's first event in it (``now`` is the commit's Unix time)."""
        self.consumed.inc(consumed)
        self.projected.inc(projected)
        if duplicates:
            self.duplicates.inc(duplicates)
        reasons = Tally(dict(letter.headers).get(topics.DLQ_REASON, b"unknown").decode()
                        for letter in letters)
        for reason, count in reasons.items():
            self.dead_letters.labels(reason).inc(count)
        self.batch_size.observe(consumed)
        self.transaction.observe(seconds)
        for t in event_times:
            if t is not None:
                self.latency.observe(max(0.0, now - t.timestamp()))
        self.last_progress.set(now)

    def partitions(self, lags: Mapping[int, tuple[int, float]], gone: Iterable[int],
                   polled_at: float, caught_up: bool, now: float) -> None:
        """The heartbeat and each owned partition's (lag in events, in seconds)."""
        for p, (events, seconds) in lags.items():
            self.lag.labels(p).set(events)
            self.lag_seconds.labels(p).set(seconds)
        for p in gone:  # multiprocess mode cannot remove a series: it reads 0
            self.lag.labels(p).set(0)
            self.lag_seconds.labels(p).set(0)
        self.last_poll.set(polled_at)
        if caught_up:
            self.last_progress.set(now)

    def held_events(self, count: int, oldest: datetime | None, now: float) -> None:
        self.held.set(count)
        self.held_age.set(0.0 if oldest is None else max(0.0, now - oldest.timestamp()))

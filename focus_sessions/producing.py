"""What ``focus emit`` and ``focus simulate`` do once their options are parsed.

Both need a running broker: they never start the embedded one, which is memory-only and would
vanish with the command. The topic is created first when missing (with the configured partition
count) because a broker that auto-creates it would pick its own count, and keys would then map
to other partitions than the projector expects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from focus_sessions.bootstrap import producer
from focus_sessions.contracts.events import CloudEvent
from focus_sessions.producers.bulk import Published, publish_pairs
from focus_sessions.producers.publisher import Publisher, Receipt
from focus_sessions.producers.simulate import Simulation
from focus_sessions.settings import CommonSettings
from focus_sessions.topics import BrokerUnavailableError, ensure_topics, wait_for_broker


class ProduceError(RuntimeError):
    """A failure worth one clear line to the person at the terminal."""


@dataclass(frozen=True)
class Target:
    bootstrap_servers: str
    #: Where the address came from, as :func:`focus_sessions.servers.broker` says it.
    origin: str
    topic: str
    partitions: int
    create_topic: bool
    timeout: float


def target(settings: CommonSettings, bootstrap: str, origin: str, topic: str | None,
           create_topic: bool, timeout: float) -> Target:
    """Where to publish: the broker already found (and where it came from), the topic."""
    return Target(bootstrap, origin, topic or settings.focus_events_topic,
                  settings.focus_topic_partitions, create_topic, timeout)


def describe_validation(error: ValidationError) -> str:
    """One line per problem, naming the field: ``data.duration_minutes: Input should be ...``."""
    lines = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "event"
        lines.append(f"{where}: {problem['msg']}")
    return "\n".join(lines)


async def prepare(where: Target) -> None:
    """Wait for the broker (at most ``timeout`` s), then make sure the topic exists."""
    try:
        await wait_for_broker(where.bootstrap_servers, timeout=where.timeout)
    except BrokerUnavailableError as error:
        raise ProduceError(
            f"No Kafka broker answered at {where.bootstrap_servers!r} (from {where.origin}) within "
            f"{where.timeout:g} s. Start one (`docker compose up -d kafka`, or `focus dev` and "
            "use the address it prints), then set KAFKA_BOOTSTRAP_SERVERS=host:port or pass "
            "--bootstrap-servers."
        ) from error
    if where.create_topic:
        await ensure_topics(where.bootstrap_servers, {where.topic: where.partitions},
                            timeout=where.timeout)


async def emit(where: Target, event: CloudEvent) -> Receipt:
    """Publish one event and return its receipt."""
    await prepare(where)
    publisher = Publisher(where.bootstrap_servers, topic=where.topic,
                          request_timeout_ms=int(where.timeout * 1000))
    async with publisher:
        return await publisher.publish(event)


@dataclass(frozen=True)
class SimulationReport:
    events: int
    sessions: int
    seconds: float
    bytes: int
    per_partition: dict[int, int]

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, object]:
        return {"events": self.events, "sessions": self.sessions,
                "seconds": round(self.seconds, 3), "bytes": self.bytes,
                "events_per_second": round(self.events_per_second),
                "per_partition": {str(k): v for k, v in sorted(self.per_partition.items())}}


async def simulate(where: Target, simulation: Simulation, *, rate: float | None,
                   progress: Callable[[int], None] | None = None) -> SimulationReport:
    """Generate and publish the whole simulation (acks=all); report the sustained rate."""
    await prepare(where)
    kafka = producer(where.bootstrap_servers, request_timeout_ms=int(max(30, where.timeout) * 1000))
    await kafka.start()
    try:
        result: Published = await publish_pairs(kafka, where.topic, simulation, rate=rate,
                                                 progress=progress)
    finally:
        await kafka.stop()
    return SimulationReport(result.events, simulation.sessions_done, result.seconds,
                            result.bytes, result.per_partition)


def generate_only(simulation: Simulation, sink: Callable[[bytes, bytes], None] | None = None,
                  progress: Callable[[int], None] | None = None) -> SimulationReport:
    """Run the generator without a broker (``--dry-run`` / ``--out``): pure generation speed."""
    started = time.perf_counter()
    size = count = 0
    for key, value in simulation:
        if sink is not None:
            sink(key, value)
        size += len(value)
        count += 1
        if progress is not None and count % 5000 == 0:
            progress(5000)
    if progress is not None:
        progress(count % 5000)
    return SimulationReport(count, simulation.sessions_done, time.perf_counter() - started,
                            size, {})

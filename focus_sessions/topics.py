"""Broker reachability and topic provisioning.

Every process that needs a topic calls :func:`ensure_topics` at start-up, *before* any producer or
consumer touches it: a real cluster is usually configured not to auto-create topics, and the
embedded broker (tansu) auto-creates an unknown topic on first metadata request with a fixed
4 partitions, which would silently break the per-user key -> partition mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

_RETRY_SECONDS = 0.1


class BrokerUnavailableError(RuntimeError):
    """No Kafka broker answered a metadata request at the configured address."""


class TopicProvisioningError(RuntimeError):
    """A topic could not be created, or exists with fewer partitions than required."""


async def probe_broker(bootstrap_servers: str, timeout: float = 2.0) -> None:  # noqa: ASYNC109
    """Send one metadata request; raise ``KafkaError`` or ``OSError`` when nobody answers."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=max(100, int(timeout * 1000)),
    )
    try:
        with _quiet_connect_errors():
            await asyncio.wait_for(client.bootstrap(), timeout)
    finally:
        await client.close()


@contextlib.contextmanager
def _quiet_connect_errors() -> Iterator[None]:
    # A refused probe is expected while a broker starts; the caller reports the outcome.
    logger = logging.getLogger("aiokafka")  # the name aiokafka/client.py logs under
    quiet = _DropConnectErrors()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _DropConnectErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Unable connect to", "Unable to request"))


# The timeouts below are part of the contract (they appear in the error a person reads),
# so they are parameters rather than an asyncio.timeout() around the call.
async def wait_for_broker(bootstrap_servers: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Wait until a broker at ``bootstrap_servers`` answers a metadata request.

    Raises :class:`BrokerUnavailableError` naming the address after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            await probe_broker(bootstrap_servers, timeout=max(0.1, min(2.0, remaining)))
        except (KafkaError, OSError, TimeoutError) as error:
            last_error = error
        else:
            return
        if time.monotonic() + _RETRY_SECONDS >= deadline:
            raise BrokerUnavailableError(
                f"No Kafka broker answered at {bootstrap_servers!r} within {timeout:g} s "
                f"(last error: {last_error}). Start a broker there, or set "
                "KAFKA_BOOTSTRAP_SERVERS to host:port of a reachable one "
                "(unset it to use the embedded broker)."
            ) from last_error
        await asyncio.sleep(_RETRY_SECONDS)


async def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> None:
    """Create each topic ``name -> partitions`` that is missing, then wait until it is usable.

    A topic that already exists is accepted when it has at least the requested partitions;
    fewer raises :class:`TopicProvisioningError` (keys would map to other partitions).
    Returns once metadata shows every partition of every topic with a leader.
    """
    if not topics:
        return
    await wait_for_broker(bootstrap_servers, timeout=timeout)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000)
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, count, replication_factor) for name, count in topics.items()]
        )
        existing: set[str] = set()
        for name, code, message in _topic_errors(response):
            if code == TopicAlreadyExistsError.errno:
                existing.add(name)
            elif code != 0:
                raise TopicProvisioningError(
                    f"Broker {bootstrap_servers!r} refused to create topic {name!r}: "
                    f"{for_code(code).__name__} {message or ''}".rstrip()
                )
        await _wait_for_partitions(admin, bootstrap_servers, topics, existing, timeout)
    finally:
        await admin.close()


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    # CreateTopicsResponse v0 has (topic, code); v1+ adds a message.
    return [
        (entry[0], entry[1], entry[2] if len(entry) > 2 else None)
        for entry in response.topic_errors
    ]


async def _wait_for_partitions(
    admin: AIOKafkaAdminClient,
    bootstrap_servers: str,
    topics: Mapping[str, int],
    existing: set[str],
    seconds: float,
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        described = {d["topic"]: d for d in await admin.describe_topics(list(topics))}
        pending = []
        for name, wanted in topics.items():
            info = described.get(name)
            if info is None or info["error_code"] != 0:
                pending.append(name)
                continue
            partitions = info["partitions"]
            if name in existing and 0 < len(partitions) < wanted:
                raise TopicProvisioningError(
                    f"Topic {name!r} on {bootstrap_servers!r} already exists with "
                    f"{len(partitions)} partitions; {wanted} are required. Add partitions "
                    "(kafka-topics.sh --alter --partitions) or configure the smaller count."
                )
            led = [p for p in partitions if p["error_code"] == 0 and p["leader"] >= 0]
            if len(led) < wanted:
                pending.append(name)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TopicProvisioningError(
                f"Topics {pending} on {bootstrap_servers!r} did not show all partitions "
                f"with a leader within {seconds:g} s."
            )
        await asyncio.sleep(_RETRY_SECONDS)

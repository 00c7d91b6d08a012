"""A consumer-group member in its own process, for failover tests.

``python -m tests.support.group_member BOOTSTRAP TOPIC GROUP`` joins ``GROUP`` on ``TOPIC`` and
prints one JSON line per rebalance callback (``{"event": "assigned", "partitions": [...]}``).
SIGTERM leaves the group cleanly; SIGKILL simulates a crash.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000


def _say(event: str, partitions: object = None) -> None:
    print(json.dumps({"event": event, "partitions": partitions}), flush=True)


class _Report(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        _say("revoked", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        _say("assigned", sorted(tp.partition for tp in assigned))


async def main(bootstrap: str, topic: str, group: str) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    consumer.subscribe([topic], listener=_Report())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    _say("started")
    try:
        while not stop.is_set():
            await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()
        _say("stopped")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))

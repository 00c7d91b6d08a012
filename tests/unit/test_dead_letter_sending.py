"""How the projector sends dead letters (an in-memory producer stands in for the broker)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from focus_sessions.consumers.dlq import DeadLetter, dead_letter
from focus_sessions.consumers.projector import Projector
from tests.support.fakes import FakeBroker, FakeProducer


def sent(producer: FakeProducer) -> list[bytes | None]:
    """The values the broker acknowledged, in order."""
    return [record.value for record in producer.broker.records("events.dlq")]


def projector(producer: FakeProducer) -> Projector:
    async def no_database() -> Any:
        raise AssertionError("not used")

    return Projector(consumer=None, producer=producer, connect=no_database,  # type: ignore[arg-type]
                     topic="events", dlq_topic="events.dlq")


def letter(offset: int, size: int = 10) -> DeadLetter:
    return dead_letter(reason="invalid", detail="d", topic="events", partition=0, offset=offset,
                       key=b"ada", value=b"x" * size, max_original=1 << 30)


async def test_a_letter_the_broker_never_takes_is_counted_and_the_rest_are_sent() -> None:
    producer = FakeProducer(FakeBroker(), max_request_size=100)
    p = projector(producer)
    acknowledged: set[tuple[bytes, ...]] = set()
    await p._publish([letter(1), letter(2, size=5_000), letter(3)], acknowledged)
    assert sent(producer) == [b"x" * 10, b"x" * 10]
    assert p.stats.letters_lost == 1
    assert len(acknowledged) == 3  # the lost one is not tried again either


async def test_a_retried_batch_sends_each_acknowledged_letter_once() -> None:
    producer = FakeProducer(FakeBroker())
    producer.fail_next()  # the first send times out
    p = projector(producer)
    acknowledged: set[tuple[bytes, ...]] = set()
    letters = [letter(n) for n in range(4)]
    with pytest.raises(KafkaTimeoutError):
        await p._publish(letters, acknowledged)
    assert len(sent(producer)) == 3
    await p._publish(letters, acknowledged)  # the batch's retry
    assert len(sent(producer)) == 4  # only the one that failed went again
    assert len(acknowledged) == 4

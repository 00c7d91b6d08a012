"""How the projector sends dead letters (an in-memory producer stands in for the broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from consumers.dlq import DeadLetter, dead_letter
from consumers.projector import Projector


class FakeProducer:
    """Acknowledges what it is sent; refuses values over ``limit`` like Kafka, and fails the
    first ``timeouts`` sends with a retriable error."""

    def __init__(self, limit: int = 1_000, timeouts: int = 0) -> None:
        self.limit = limit
        self.timeouts = timeouts
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        if len(value) > self.limit:
            raise MessageSizeTooLargeError("the message is larger than max_request_size")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.timeouts:
            self.timeouts -= 1
            done.set_exception(KafkaTimeoutError())
        else:
            self.sent.append(value)
            done.set_result(None)
        return done


def projector(producer: FakeProducer) -> Projector:
    async def no_database() -> Any:
        raise AssertionError("not used")

    return Projector(consumer=None, producer=producer, connect=no_database,  # type: ignore[arg-type]
                     topic="events", dlq_topic="events.dlq")


def letter(offset: int, size: int = 10) -> DeadLetter:
    return dead_letter(reason="invalid", detail="d", topic="events", partition=0, offset=offset,
                       key=b"ada", value=b"x" * size, max_original=1 << 30)


async def test_a_letter_the_broker_never_takes_is_counted_and_the_rest_are_sent() -> None:
    producer = FakeProducer(limit=100)
    p = projector(producer)
    sent: set[tuple[bytes, ...]] = set()
    await p._publish([letter(1), letter(2, size=5_000), letter(3)], sent)
    assert producer.sent == [b"x" * 10, b"x" * 10]
    assert p.stats.letters_lost == 1
    assert len(sent) == 3  # the lost one is not tried again either


async def test_a_retried_batch_sends_each_acknowledged_letter_once() -> None:
    producer = FakeProducer(timeouts=1)  # the first send times out
    p = projector(producer)
    sent: set[tuple[bytes, ...]] = set()
    letters = [letter(n) for n in range(4)]
    with pytest.raises(KafkaTimeoutError):
        await p._publish(letters, sent)
    assert len(producer.sent) == 3
    await p._publish(letters, sent)  # the batch's retry
    assert len(producer.sent) == 4  # only the one that failed went again
    assert len(sent) == 4

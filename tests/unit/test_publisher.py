"""The publisher library without a broker: what it sends, and what it refuses to send."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from focus_sessions.contracts.codec import decode, encode
from focus_sessions.contracts.events import ENDED_V2, STARTED_V1, CloudEvent, StartedEvent
from focus_sessions.producers import events
from focus_sessions.producers.bulk import partition_for
from focus_sessions.producers.publisher import Publisher, PublisherError, Receipt, checked
from focus_sessions.producers.sync import SyncPublisher

NOON = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


@dataclass
class Meta:
    topic: str
    partition: int
    offset: int


@dataclass
class FakeProducer:
    """Records what would go to Kafka; partitions like Kafka's default partitioner (6)."""

    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    started: bool = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Meta]:
        self.sent.append((topic, value, key))
        future: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        future.set_result(Meta(topic, partition_for(key, 6), len(self.sent) - 1))
        return future


def publisher(fake: FakeProducer, **options: Any) -> Publisher:
    return Publisher("fake:9092", producer=fake, clock=lambda: NOON, **options)


async def test_start_session_sends_cloudevents_json_keyed_by_user() -> None:
    fake = FakeProducer()
    async with publisher(fake, topic="t", source="urn:test") as pub:
        receipt = await pub.start_session("user-1", duration_minutes=50, time_zone="Asia/Tokyo")
    ((topic, value, key),) = fake.sent
    event = decode(value)
    assert (topic, key) == ("t", b"user-1")
    assert isinstance(event, StartedEvent)
    assert event.data.started_at == NOON
    assert event.data.duration_minutes == 50
    assert event.source == "urn:test"
    assert receipt == Receipt(event.id, event.data.session_id, STARTED_V1, "t",
                              partition_for(b"user-1", 6), 0)


async def test_a_session_from_start_to_end_stays_on_one_partition_in_order() -> None:
    fake = FakeProducer()
    async with publisher(fake) as pub:
        start = await pub.start_session("user-2")
        pause = await pub.interrupt("user-2", start.session_id, reason="phone call")
        end = await pub.end_session("user-2", start.session_id, outcome="abandoned",
                                    reported_interruptions=1, focus_quality=2)
    assert start.partition == pause.partition == end.partition
    assert start.offset < pause.offset < end.offset
    assert end.type == ENDED_V2
    assert decode(fake.sent[-1][1]).data.outcome == "abandoned"  # type: ignore[union-attr]


async def test_invalid_input_raises_pydantic_errors_before_anything_is_sent() -> None:
    fake = FakeProducer()
    async with publisher(fake) as pub:
        with pytest.raises(ValidationError, match="duration_minutes"):
            await pub.start_session("user-3", duration_minutes=120)
        with pytest.raises(ValidationError, match="user_id"):
            await pub.start_session("no spaces allowed")
        with pytest.raises(ValidationError, match="timezone"):
            await pub.interrupt("user-3", uuid4(), interrupted_at=datetime(2025, 3, 3))
        with pytest.raises(ValidationError, match="focus_quality"):
            await pub.end_session("user-3", uuid4(), focus_quality=9)
    assert fake.sent == []


async def test_publish_many_validates_every_event_before_sending_the_first() -> None:
    fake = FakeProducer()
    good = events.started("user-4", NOON)
    forged = StartedEvent.model_construct(**{**dict(good), "subject": str(uuid4())})
    async with publisher(fake) as pub:
        with pytest.raises(ValidationError, match=r"subject must equal data\.session_id"):
            await pub.publish_many([good, forged])
        receipts = await pub.publish_many([good, events.ended("user-4", good.data.session_id,
                                                              NOON)])
    assert [r.offset for r in receipts] == [0, 1]


def test_checked_revalidates_events_built_without_validation() -> None:
    good = events.started("user-5", NOON)
    assert checked(good) == encode(good)
    unchecked = StartedEvent.model_construct(**{**dict(good), "source": ""})
    with pytest.raises(ValidationError, match="source"):
        checked(unchecked)


async def test_publishing_before_start_says_how_to_start() -> None:
    with pytest.raises(PublisherError, match="async with"):
        await publisher(FakeProducer()).start_session("user-6")


def test_receipt_as_json_is_plain_json() -> None:
    receipt = Receipt(UUID(int=1), UUID(int=2), STARTED_V1, "t", 3, 4)
    assert receipt.as_json() == {
        "event_id": str(UUID(int=1)), "session_id": str(UUID(int=2)), "type": STARTED_V1,
        "topic": "t", "partition": 3, "offset": 4,
    }


def test_sync_publisher_blocks_until_the_receipt_is_there() -> None:
    fake = FakeProducer()
    with SyncPublisher("fake:9092", producer=fake, topic="t") as pub:
        start = pub.start_session("user-7", started_at=NOON)
        pub.interrupt("user-7", start.session_id, interrupted_at=NOON)
        pub.end_session("user-7", start.session_id, ended_at=NOON, completed=False)
        pub.publish(events.started("user-7", NOON))
        assert len(pub.publish_many([events.started("user-7", NOON)])) == 1
        with pytest.raises(ValidationError):
            pub.start_session("user-7", duration_minutes=1)
    assert len(fake.sent) == 5
    assert not fake.started
    with pytest.raises(RuntimeError, match="closed"):
        pub.start_session("user-7")
    pub.close()  # idempotent


@dataclass
class FailingProducer(FakeProducer):
    """A producer whose broker is away (on start) or refuses (on send)."""

    on_start: Exception | None = None
    on_send: Exception | None = None
    stopped: int = 0

    async def start(self) -> None:
        if self.on_start is not None:
            raise self.on_start

    async def stop(self) -> None:
        self.stopped += 1

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Meta]:
        assert self.on_send is not None
        raise self.on_send


async def test_a_broker_that_does_not_answer_is_named_and_the_producer_released() -> None:
    fake = FailingProducer(on_start=KafkaConnectionError("Unable to bootstrap"))
    with pytest.raises(PublisherError, match=r"fake:9092.*KAFKA_BOOTSTRAP_SERVERS"):
        await publisher(fake).start()
    assert fake.stopped == 1


@pytest.mark.parametrize(("error", "says"), [
    (KafkaTimeoutError(), "does the topic exist"),
    (KafkaError("NotLeaderForPartition"), "refused the event"),
])
async def test_send_failures_become_publisher_errors_naming_topic_and_broker(
    error: Exception, says: str
) -> None:
    pub = publisher(FailingProducer(on_send=error), topic="t")
    await pub.start()
    await pub.start()  # starting twice is harmless
    with pytest.raises(PublisherError, match=says) as raised:
        await pub.start_session("user-8")
    assert "'t'" in str(raised.value)
    assert "fake:9092" in str(raised.value)


def test_only_wire_event_types_are_published() -> None:
    envelope = CloudEvent(id=uuid4(), source="urn:test", type="focus.session.paused.v1",
                          time=NOON, subject="s")
    with pytest.raises(TypeError, match=r"focus\.session\.paused\.v1"):
        checked(envelope)


def test_sync_publisher_that_cannot_start_releases_its_thread() -> None:
    fake = FailingProducer(on_start=KafkaConnectionError("Unable to bootstrap"))
    with pytest.raises(PublisherError), SyncPublisher("fake:9092", producer=fake):
        pass
    assert fake.stopped >= 1
    assert "focus-publisher" not in {t.name for t in threading.enumerate()}

"""Keys map to partitions exactly as Kafka's Java client maps them, whichever path publishes."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from focus_sessions.producers.bulk import partition_for

# Kafka's own murmur2 test vectors (clients/.../utils/UtilsTest.java), signed 32-bit.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "hashed"), JAVA_MURMUR2.items())
def test_partition_matches_the_java_default_partitioner(key: bytes, hashed: int) -> None:
    for partitions in (1, 6, 7, 12):
        assert partition_for(key, partitions) == (hashed & 0x7FFFFFFF) % partitions


def test_bulk_and_single_event_paths_agree_for_every_user() -> None:
    partitioner = DefaultPartitioner()
    for n in range(500):
        key = f"user-{n:06d}".encode()
        assert partition_for(key, 6) == partitioner(key, list(range(6)), list(range(6)))

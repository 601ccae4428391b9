"""Which partition a keyed message goes to, the way the shop's producers choose it.

Kafka clients do not agree: the Java client and aiokafka hash the key with murmur2, librdkafka
(confluent-kafka for Python, Go and .NET, node-rdkafka) with CRC32 by default
(``partitioner=consistent_random``). A user's events, session and control messages must all sit
on one partition, so everything shopstream keys by user itself is partitioned with the function
the ``partitioner`` setting names. Pure: no Kafka client is imported here.
"""
from __future__ import annotations

import random
import zlib
from typing import Callable, Sequence

from stream.errors import ConfigError

PARTITIONERS = ("murmur2", "crc32")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), an unsigned 32-bit int."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    rest = length & 3
    if rest >= 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def _murmur2_partition(key: bytes, partitions: int) -> int:
    # Java's Utils.toPositive(murmur2(key)) % numPartitions; aiokafka's DefaultPartitioner
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _crc32_partition(key: bytes, partitions: int) -> int:
    # librdkafka's rd_kafka_msg_partitioner_consistent(_random): rd_crc32(key) % partition_cnt
    return zlib.crc32(key) % partitions


_BY_NAME: dict[str, Callable[[bytes, int], int]] = {"murmur2": _murmur2_partition, "crc32": _crc32_partition}


def check_partitioner(name: str) -> str:
    """``name`` if it names a partitioner; :class:`ConfigError` listing the valid ones otherwise."""
    if name not in _BY_NAME:
        raise ConfigError(f"partitioner must be one of {', '.join(PARTITIONERS)}, got {name!r}")
    return name


def partition_for(name: str, key: bytes, partitions: int) -> int:
    """The partition (0 .. partitions-1) that partitioner ``name`` gives ``key``."""
    fn = _BY_NAME.get(check_partitioner(name))
    if partitions < 1:
        raise ConfigError(f"partitions must be at least 1, got {partitions}")
    return fn(key, partitions)


def aiokafka_partitioner(name: str) -> Callable[[bytes | None, Sequence[int], Sequence[int]], int]:
    """A callable for ``AIOKafkaProducer(partitioner=...)`` that partitions keys like ``name``.

    Keyless messages go to a random available partition, as with aiokafka's own default.
    """
    fn = _BY_NAME.get(check_partitioner(name))

    def partitioner(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        if key is None:
            return random.choice(list(available) or list(all_partitions))
        return all_partitions[fn(key, len(all_partitions))]

    partitioner.__name__ = partitioner.__qualname__ = f"{name}_partitioner"
    return partitioner

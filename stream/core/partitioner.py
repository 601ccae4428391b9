"""Which partition a key lands on, as the shop's producers choose it."""
from __future__ import annotations

import zlib

from stream.errors import ConfigError

PARTITIONERS = ("murmur2", "crc32")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's and aiokafka's default partitioner)."""
    length = len(data)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = seed ^ length
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    if rest >= 3:
        h ^= data[length - rest + 2] << 16
    if rest >= 2:
        h ^= data[length - rest + 1] << 8
    if rest >= 1:
        h ^= data[length - rest]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(name: str, key: bytes, partitions: int) -> int:
    """The partition ``name``'s partitioner sends ``key`` to, out of ``partitions``."""
    if name == "murmur2":
        return (murmur2(key) & 0x7FFFFFFF) % partitions
    if name == "crc32":
        return zlib.crc32(key) % partitions
    raise ConfigError(f"unknown partitioner {name!r}; valid: {', '.join(PARTITIONERS)}")

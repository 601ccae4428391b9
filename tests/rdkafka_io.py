"""librdkafka (confluent-kafka) clients for tests: a storefront that produces with default settings.

librdkafka's default partitioner is ``consistent_random`` (CRC32 of the key), not murmur2 as in
aiokafka and Java: these helpers are how the tests produce and consume as such a storefront does.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka", reason="the dev extra installs confluent-kafka")


def rdkafka_produce(settings, messages: Iterable[tuple[bytes | None, bytes | None]], topic: str | None = None,
                    **config) -> list[tuple[bytes | None, int]]:
    """Produce with a default-config librdkafka producer; returns (key, partition) per message.

    The topic must exist (``ensure_topics``) first.
    """
    producer = confluent_kafka.Producer({**settings.librdkafka_config(), "linger.ms": 5, **config})
    placed: list[tuple[bytes | None, int]] = []
    errors: list = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(err)
        else:
            placed.append((msg.key(), msg.partition()))

    sent = 0
    for key, value in messages:
        producer.produce(topic or settings.events_topic, value, key=key, on_delivery=delivered)
        sent += 1
        producer.poll(0)
    left = producer.flush(30)
    if errors or left:
        raise AssertionError(f"librdkafka delivery failed: {errors or f'{left} message(s) unsent'}")
    assert len(placed) == sent
    return placed


def rdkafka_read(settings, topic: str, *, until: Callable[[list], bool], timeout: float = 60.0) -> list:
    """Every message of ``topic`` from the start, read by a librdkafka consumer until ``until(messages)``."""
    consumer = confluent_kafka.Consumer({
        **settings.librdkafka_config(), "group.id": f"rdkafka-test-{time.monotonic_ns()}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.fetch_max_wait_ms})   # tansu answers a fetch only when this ends
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in sorted(meta.partitions)])
        out: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(out):
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                if msg.error() is None:
                    out.append(msg)
        return out
    finally:
        consumer.close()


def latest_by_key(messages, *, key_of=lambda m: m.key, partition_of=lambda m: m.partition) -> dict:
    """{(partition, key): last value} of a compacted topic: what compaction and table recovery keep."""
    last: dict = {}
    for m in messages:
        last[(partition_of(m), key_of(m))] = m.value
    return last

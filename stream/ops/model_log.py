"""Reading and writing the compacted ``models`` topic (records: :mod:`stream.ops.models`)."""
from __future__ import annotations

import logging

from stream.errors import BrokerError
from stream.ops.models import InvalidRecord, ModelRecord, read_log
from stream.settings import Settings

log = logging.getLogger(__name__)


async def read_records(settings: Settings, *, timeout_s: float = 10.0) -> list[tuple]:
    """Every (key, value, partition, offset) of the models topic from its start to its current end, in order."""
    return await read_topic_to_end(settings, settings.models_topic, timeout_s=timeout_s, positions=True)


async def read_model_log(settings: Settings) -> tuple[dict[str, ModelRecord], list[InvalidRecord]]:
    """The current record of every version on the models topic, and the invalid records (each
    logged once here with its partition and offset)."""
    records, bad = read_log(await read_records(settings))
    for b in bad:
        log.warning("skipped an invalid record on %s partition %d offset %d (key %r): %s",
                    settings.models_topic, b.partition, b.offset, b.key, b.reason)
    return records, bad


async def read_models(settings: Settings) -> dict[str, ModelRecord]:
    """The current record of every version on the models topic (invalid records skipped)."""
    return (await read_model_log(settings))[0]


async def read_topic_to_end(settings: Settings, topic: str, *, since_ms: int | None = None,
                            timeout_s: float = 10.0, positions: bool = False) -> list[tuple]:
    """(key, value, timestamp ms) of every message of ``topic`` up to its end offsets now, all
    partitions; from the first message at or after ``since_ms`` (message time) when given.
    ``positions``: (key, value, partition, offset) instead."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from stream.ops.topics import ensure_topics

    await ensure_topics(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest", **settings.kafka_client_options())
    out: list[tuple] = []
    try:
        await consumer.start()
        parts = await partitions_of(consumer, topic)
        consumer.assign(parts)
        end = await consumer.end_offsets(parts)
        start = await consumer.beginning_offsets(parts)
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in parts})
            start = {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in parts}
        for tp in parts:
            consumer.seek(tp, start[tp])
        await drain(consumer, {tp: e for tp, e in end.items() if e > start[tp]},
                    lambda tp, m: out.append((m.key, m.value, tp.partition, m.offset) if positions
                                             else (m.key, m.value, m.timestamp)), timeout_s=timeout_s)
    except KafkaError as exc:
        raise BrokerError(f"cannot read {topic} on {settings.broker}: {exc}") from exc
    finally:
        await consumer.stop()
    return out


async def drain(consumer, end: dict, on_message, *, timeout_s: float, idle_ms: int = 300) -> dict:
    """Hand every message to ``on_message(tp, msg)`` up to ``end`` (the end offsets when reading
    began, for the partitions that have any), then on until a poll of ``idle_ms`` brings nothing:
    some brokers (tansu among them) report end offsets a little behind what was just acknowledged.
    Returns the next offset per partition (``end``, or past it)."""
    import asyncio

    nxt = dict(end)
    remaining = set(end)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        batch = await consumer.getmany(timeout_ms=500 if remaining else idle_ms, max_records=10_000)
        if not batch and not remaining:
            return nxt
        for tp, msgs in batch.items():
            for m in msgs:
                on_message(tp, m)
            if msgs:
                nxt[tp] = max(nxt.get(tp, 0), msgs[-1].offset + 1)
                if msgs[-1].offset + 1 >= end.get(tp, 0):
                    remaining.discard(tp)
    log.warning("stopped reading after %.0fs before the end of %d partition(s)", timeout_s, len(remaining))
    return nxt


async def partitions_of(consumer, topic: str):
    from aiokafka import TopicPartition

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer.client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    return sorted(TopicPartition(topic, p) for p in parts)


async def announce(settings: Settings, *records: ModelRecord) -> None:
    """Write records to the models topic (key = version), acknowledged by the broker, in order."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from stream.ops.topics import ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **settings.kafka_client_options())
    try:
        await producer.start()
        for r in records:
            await (await producer.send(settings.models_topic, r.to_bytes(), key=r.version.encode()))
            log.info("models topic: %s -> %s (%s)", r.version, r.state, r.reason)
    except KafkaError as exc:
        raise BrokerError(f"could not write to {settings.models_topic} on {settings.broker}: {exc}") from exc
    finally:
        await producer.stop()

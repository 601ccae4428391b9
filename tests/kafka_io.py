"""Plain aiokafka helpers for tests: write raw messages, read a topic until a condition holds."""
from __future__ import annotations

import time
from typing import Callable, Iterable

import orjson


async def produce_raw(settings, messages: Iterable[tuple[bytes | None, bytes]], topic: str | None = None) -> int:
    from aiokafka import AIOKafkaProducer

    from stream.ops.topics import ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    await producer.start()
    n = 0
    try:
        for key, value in messages:
            await producer.send(topic or settings.events_topic, value, key=key)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def read_topic(settings, topic: str, *, until: Callable[[list], bool], timeout: float = 60.0) -> list:
    """All messages of ``topic`` from the start, read until ``until(messages)`` or the timeout."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, fetch_max_wait_ms=settings.fetch_max_wait_ms, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                out.extend(msgs)
    finally:
        await consumer.stop()
    return out


def event(n: int, user: str, etype: str = "view", *, item: str | None = None, query: str | None = None,
          ts_ms: int | None = None, **extra) -> dict:
    ev = {"event_id": f"e{n}", "type": etype, "user_id": user, "session_id": f"s-{user}",
          "ts": ts_ms if ts_ms is not None else int(time.time() * 1000)}
    if etype == "search":
        ev["query"] = query or "red heart candle holder"
    else:
        ev["item_id"] = item
    ev.update(extra)
    return ev


def keyed(ev: dict) -> tuple[bytes, bytes]:
    return ev["user_id"].encode(), orjson.dumps(ev)


def recs_of(messages) -> list[dict]:
    """The recommendations among ``messages``; the tombstones ``forget`` writes are left out."""
    return [orjson.loads(m.value) for m in messages if m.value is not None]

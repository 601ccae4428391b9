"""Storefront side, sending with librdkafka: shopper events with a confluent-kafka ``Producer``.

    SHOPSTREAM_BROKER=127.0.0.1:9092 SHOPSTREAM_PARTITIONER=crc32 \
        .venv/bin/python docs/examples/storefront_events_confluent.py

The same events as ``storefront_events.py``, for a storefront that produces with librdkafka
(confluent-kafka for Python, Go and .NET, node-rdkafka). Keyed by user id, with librdkafka's
default partitioner (``consistent_random``: CRC32 of the key), so the shop runs shopstream with
``SHOPSTREAM_PARTITIONER=crc32`` and its own messages for a shopper (re-keyed events,
``shopstream produce``) join the storefront's on one partition. Setting ``"partitioner":
"murmur2_random"`` here instead matches the Java client and shopstream's default, ``murmur2``.

Events are checked against the published schema before they are sent (``EventValidator``),
as ``EventProducer`` does; a storefront without shopstream installed validates against
``stream/schemas/event.v1.json`` with any JSON Schema library.
"""
from __future__ import annotations

import time
import uuid

import orjson
from confluent_kafka import KafkaException, Producer

from index import default_catalog_path, load_catalog
from stream.core.schema import EventValidator
from stream.errors import InvalidEvent
from stream.settings import Settings


def main() -> None:
    settings = Settings.from_env()                  # SHOPSTREAM_BROKER, SHOPSTREAM_EVENTS_TOPIC, ...
    validator = EventValidator(max_bytes=settings.max_event_bytes, max_future_skew_s=settings.max_future_skew_s)
    products = [p.id for p in load_catalog(default_catalog_path())[:3]]
    now = int(time.time() * 1000)
    visit = uuid.uuid4().hex[:8]

    def event(n: int, kind: str, **fields) -> dict:
        return {"event_id": f"example-{visit}-{n}", "type": kind, "user_id": "shopper-42",
                "session_id": f"visit-{visit}", "ts": now + n, **fields}

    events = [event(1, "view", item_id=products[0]),
              event(2, "search", query="heart candle holder", results=products),
              event(3, "add_to_cart", item_id=products[1]),
              event(4, "purchase", item_id=products[1])]
    failed: list = []

    def delivered(err, msg) -> None:
        if err is not None:
            failed.append(err)

    producer = Producer({**settings.librdkafka_config(), "acks": "all", "linger.ms": 5})
    for ev in events + [{"event_id": "oops", "type": "teleport", "user_id": "shopper-42"}]:
        raw = orjson.dumps(ev)
        try:
            parsed = validator.parse(raw)
        except InvalidEvent as exc:
            print(f"rejected before sending: {exc.reason}")
            continue
        producer.produce(settings.events_topic, raw, key=parsed.user_id.encode(), on_delivery=delivered)
        producer.poll(0)
    if producer.flush(30) or failed:
        raise KafkaException(failed[0] if failed else "events left unsent after 30 s")
    print(f"sent {len(events)} events for shopper-42: {', '.join(e['event_id'] for e in events)}")


if __name__ == "__main__":
    main()

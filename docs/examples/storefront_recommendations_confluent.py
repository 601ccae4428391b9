"""Storefront side, receiving with librdkafka: recommendations with a confluent-kafka ``Consumer``.

    SHOPSTREAM_BROKER=127.0.0.1:9092 .venv/bin/python docs/examples/storefront_recommendations_confluent.py --limit 5

The recommendations topic is plain JSON (``stream/schemas/recommendation.v1.json``) keyed by
user id: any Kafka client reads it. Without ``--group`` this reads every partition from the
start (``assign``, no consumer group), like ``storefront_recommendations.py``; with ``--group``
it joins that consumer group and reads from the group's committed offsets.

Delivery is at-least-once: after a worker crash a recommendation can arrive twice. Repeats are
dropped by ``recommendation_id``; ``event_ids`` says which events each one reflects.
"""
from __future__ import annotations

import argparse
import time
import uuid

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from stream.settings import Settings


def main(limit: int, timeout: float, user: str | None, group: str | None) -> int:
    settings = Settings.from_env()
    topic = settings.recommendations_topic
    consumer = Consumer({**settings.librdkafka_config(),
                         "group.id": group or f"storefront-example-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": group is not None, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": settings.fetch_max_wait_ms})   # latency bound of a fetch
    seen: set[str] = set()
    shown = 0
    try:
        if group:
            consumer.subscribe([topic])
        else:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        deadline = time.monotonic() + timeout
        while shown < limit and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                continue
            rec = orjson.loads(msg.value())
            if rec["recommendation_id"] in seen or (user and rec["user_id"] != user):
                continue
            seen.add(rec["recommendation_id"])
            top = ", ".join(i["product_id"] for i in rec["items"][:5])
            print(f"{rec['user_id']} after {len(rec['event_ids'])} event(s) "
                  f"[{', '.join(rec['event_ids'])}]: {top}")
            shown += 1
    finally:
        consumer.close()
    return shown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10, help="stop after N recommendations")
    parser.add_argument("--timeout", type=float, default=30.0, help="stop after this many seconds")
    parser.add_argument("--user", default=None, help="only this user's recommendations")
    parser.add_argument("--group", default=None, help="join this consumer group (default: read all from the start)")
    args = parser.parse_args()
    n = main(args.limit, args.timeout, args.user, args.group)
    raise SystemExit(0 if n else 1)

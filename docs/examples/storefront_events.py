"""Storefront side, sending: shopper events with ``EventProducer``.

    SHOPSTREAM_BROKER=127.0.0.1:9092 .venv/bin/python docs/examples/storefront_events.py

Each event is checked against the published schema before it is sent (an invalid one raises
``InvalidEvent`` at once, in the storefront, instead of landing in the dead-letter topic), and is
keyed by user id so that one shopper's events stay in order on one partition.
"""
from __future__ import annotations

import asyncio
import time
import uuid

from index import default_catalog_path, load_catalog
from stream.clients import EventProducer
from stream.errors import InvalidEvent
from stream.settings import Settings


async def main() -> None:
    settings = Settings.from_env()                  # SHOPSTREAM_BROKER, SHOPSTREAM_EVENTS_TOPIC, ...
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
    async with EventProducer(settings) as producer:
        for ev in events:
            await producer.send(ev)
        try:
            await producer.send({"event_id": "oops", "type": "teleport", "user_id": "shopper-42"})
        except InvalidEvent as exc:
            print(f"rejected before sending: {exc.reason}")
        await producer.flush()
    print(f"sent {len(events)} events for shopper-42: {', '.join(e['event_id'] for e in events)}")


if __name__ == "__main__":
    asyncio.run(main())

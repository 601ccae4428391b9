"""Storefront side, receiving: recommendations with ``RecommendationConsumer``.

    SHOPSTREAM_BROKER=127.0.0.1:9092 .venv/bin/python docs/examples/storefront_recommendations.py --limit 5

Delivery is at-least-once: after a worker crash a recommendation can arrive twice. The consumer
drops repeats by ``recommendation_id``; ``event_ids`` says which events each one reflects.
"""
from __future__ import annotations

import argparse
import asyncio

from stream.clients import RecommendationConsumer
from stream.settings import Settings


async def main(limit: int, timeout: float, user: str | None) -> int:
    settings = Settings.from_env()
    shown = 0
    async with RecommendationConsumer(settings, group_id=None, from_beginning=True) as recs:
        async def show() -> None:
            nonlocal shown
            async for rec in recs:
                if user and rec["user_id"] != user:
                    continue
                top = ", ".join(i["product_id"] for i in rec["items"][:5])
                print(f"{rec['user_id']} after {len(rec['event_ids'])} event(s) "
                      f"[{', '.join(rec['event_ids'])}]: {top}")
                shown += 1
                if shown >= limit:
                    return

        try:
            await asyncio.wait_for(show(), timeout)
        except asyncio.TimeoutError:
            pass
    return shown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10, help="stop after N recommendations")
    parser.add_argument("--timeout", type=float, default=30.0, help="stop after this many seconds")
    parser.add_argument("--user", default=None, help="only this user's recommendations")
    args = parser.parse_args()
    n = asyncio.run(main(args.limit, args.timeout, args.user))
    raise SystemExit(0 if n else 1)

"""Catalogue updates and snapshot hot swap on a real broker with a real worker process."""
from __future__ import annotations

import asyncio
import shutil
import time

import orjson

from index import Product, load_snapshot, save_snapshot
from stream.clients import push_catalog
from tests.conftest import run
from tests.kafka_io import event, keyed

SEEN_ITEM = 10            # the product every test shopper views (index into catalog_products)


class Storefront:
    """Sends view events of one product from fresh users and reads their recommendations."""

    def __init__(self, settings, item: str) -> None:
        self.settings, self.item, self.n = settings, item, 0
        self.recs: dict[str, dict] = {}          # event_id -> recommendation

    async def __aenter__(self):
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from stream.ops.topics import ensure_topics

        await ensure_topics(self.settings)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, linger_ms=2)
        self.consumer = AIOKafkaConsumer(self.settings.recommendations_topic, group_id=None,
                                         bootstrap_servers=self.settings.bootstrap_servers,
                                         auto_offset_reset="earliest")
        await self.producer.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc):
        await self.producer.stop()
        await self.consumer.stop()

    async def send(self, user: str | None = None, item: str | None = None) -> str:
        self.n += 1
        ev = event(self.n, user or f"shopper-{self.n}", "view", item=item or self.item)
        key, value = keyed(ev)
        await self.producer.send_and_wait(self.settings.events_topic, value, key=key)
        return ev["event_id"]

    async def poll(self, seconds: float = 0.2) -> None:
        batch = await self.consumer.getmany(timeout_ms=int(seconds * 1000))
        for msgs in batch.values():
            for m in msgs:
                rec = orjson.loads(m.value)
                for eid in rec["event_ids"]:
                    self.recs[eid] = rec

    async def recommend(self, timeout: float = 30.0) -> dict:
        """One fresh shopper views the item; their recommendation."""
        eid = await self.send()
        deadline = time.monotonic() + timeout
        while eid not in self.recs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no recommendation for {eid} within {timeout}s")
            await self.poll()
        return self.recs[eid]


def items(rec: dict) -> list[str]:
    return [i["product_id"] for i in rec["items"]]


async def until(store: Storefront, ok, timeout: float = 30.0) -> tuple[dict, float]:
    t0 = time.monotonic()
    while True:
        rec = await store.recommend()
        if ok(rec):
            return rec, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"update not visible after {timeout}s; last recommendation {items(rec)}")
        await asyncio.sleep(0.3)


def test_deleted_products_disappear_and_new_ones_appear(settings_factory, worker_factory, catalog_products):
    settings = settings_factory()
    worker_factory(settings)
    seen = catalog_products[SEEN_ITEM]
    clone = Product("NEW-clone", seen.title, category=seen.category, brand=seen.brand, price=seen.price)

    async def scenario():
        async with Storefront(settings, seen.id) as store:
            before = items(await store.recommend())
            assert len(before) == settings.top_k and clone.id not in before
            deleted, sold_out = before[0], before[1]
            stock = next(p for p in catalog_products if p.id == sold_out)
            await push_catalog(settings, [clone, Product(**{**stock.__dict__, "in_stock": False})], [deleted])

            def applied(rec):
                got = items(rec)
                return clone.id in got and deleted not in got and sold_out not in got

            rec, latency = await until(store, applied)
            assert latency < 20.0, f"a new product took {latency:.1f}s to be recommended"
            assert items(rec)[0] == clone.id           # the same text as the viewed product
            for _ in range(10):                        # from then on, never again
                got = items(await store.recommend())
                assert deleted not in got and sold_out not in got and clone.id in got
                assert len(got) == settings.top_k
            # the clone is a product like any other: shoppers may now view it
            eid = await store.send(user="clone-viewer", item=clone.id)
            while eid not in store.recs:
                await store.poll()
            assert store.recs[eid]["items"]

    run(scenario())


def test_snapshot_hot_swap_under_load(settings_factory, worker_factory, catalog_products, index_snapshot, tmp_path):
    live = tmp_path / "index" / "current"
    shutil.copytree(index_snapshot, live)
    settings = settings_factory(index_path=live)
    proc = worker_factory(settings, extra_env={"SHOPSTREAM_INDEX_WATCH_S": "0.5"})
    seen = catalog_products[SEEN_ITEM]
    clone = Product("NEW-before-swap", seen.title, category=seen.category, brand=seen.brand)
    old_version = load_snapshot(live).version
    users = [f"load-{i}" for i in range(40)]
    pids = [p.id for p in catalog_products if p.id != seen.id]

    async def scenario():
        async with Storefront(settings, seen.id) as store:
            await push_catalog(settings, [clone])
            await until(store, lambda r: clone.id in items(r))
            sent: list[str] = []

            async def load():
                for n in range(400):
                    sent.append(await store.send(user=users[n % len(users)], item=pids[n % len(pids)]))
                    await asyncio.sleep(0.01)

            async def swap():
                await asyncio.sleep(1.0)
                fresh = load_snapshot(index_snapshot)
                fresh.remove([pids[0]])                  # a different catalogue, a new version
                fresh.version = "swap-test-v2"
                await asyncio.to_thread(save_snapshot, fresh, live)

            await asyncio.gather(load(), swap())
            deadline = time.monotonic() + 60
            while not set(sent) <= set(store.recs) and time.monotonic() < deadline:
                await store.poll()
            missing = set(sent) - set(store.recs)
            assert not missing, f"{len(missing)} events under load got no recommendation"
            versions = [store.recs[e]["index_version"] for e in sent]
            assert set(versions) == {old_version, "swap-test-v2"}, "the swap did not happen under load"
            after = await until(store, lambda r: r["index_version"] == "swap-test-v2")
            # the catalogue update made before the swap was re-applied to the new snapshot
            assert clone.id in items(after[0])
            # once a user's partition served the new version, it never went back
            by_user: dict[str, list[str]] = {}
            for e in sent:
                by_user.setdefault(store.recs[e]["user_id"], []).append(store.recs[e]["index_version"])
            for vs in by_user.values():
                first_new = vs.index("swap-test-v2") if "swap-test-v2" in vs else len(vs)
                assert all(v == "swap-test-v2" for v in vs[first_new:])

            # a corrupt snapshot is refused and the worker keeps the one it has
            bad = tmp_path / "bad"
            shutil.copytree(live, bad)
            data = bytearray((bad / "vectors.npy").read_bytes())
            data[-7] ^= 0xFF
            (bad / "vectors.npy").write_bytes(bytes(data))
            manifest = orjson.loads((bad / "manifest.json").read_bytes())
            (bad / "manifest.json").write_bytes(orjson.dumps({**manifest, "version": "corrupt-v3"}))
            shutil.rmtree(live)
            bad.rename(live)
            deadline = time.monotonic() + 30
            while b"refused index snapshot" not in proc.log_path.read_bytes():
                assert time.monotonic() < deadline, "the corrupt snapshot was not looked at"
                await asyncio.sleep(0.3)
            rec = await store.recommend()
            assert rec["index_version"] == "swap-test-v2" and clone.id in items(rec)

    run(scenario())


def test_catalog_push_command_writes_products_and_tombstones(settings_factory, tmp_path):
    import os
    import subprocess
    import sys

    from tests.kafka_io import read_topic

    settings = settings_factory()
    feed = tmp_path / "updates.jsonl"
    feed.write_text('{"id": "A1", "title": "Blue lamp", "price": 12.5}\n'
                    '{"id": "A2", "title": "Green lamp", "in_stock": false}\n')
    out = subprocess.run([sys.executable, "-m", "stream", "catalog", "push", str(feed), "--delete", "OLD-9",
                          "--broker", settings.broker],
                         env={**os.environ, "SHOPSTREAM_CATALOG_TOPIC": settings.catalog_topic},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "published 2 product update(s) and 1 deletion(s)" in out.stdout
    msgs = run(read_topic(settings, settings.catalog_topic, until=lambda m: len(m) >= 3, timeout=30))
    assert [(m.key, m.value is None) for m in msgs] == [(b"A1", False), (b"A2", False), (b"OLD-9", True)]
    assert orjson.loads(msgs[1].value) == {"id": "A2", "title": "Green lamp", "in_stock": False}

"""Catalogue updates and snapshot hot swap on a real broker with a real worker process."""
from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
import urllib.request
from types import SimpleNamespace

import numpy as np
import orjson

from index import ItemIndex, Product, load_snapshot, save_snapshot
from stream.clients import push_catalog
from stream.core.metrics import Metrics
from stream.core.recommender import IndexHolder
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic

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
                if m.value is None:              # a tombstone: a forget request reached the shopper
                    continue
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


# -- catalogue sync as a table: bootstrap, supervision -------------------------------------------
class HashEncoder:
    """A stand-in text encoder: a fixed unit vector per text, no model to load."""

    dim, model_version = 16, "hash-test"

    def encode(self, texts):
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


class CatalogMetrics(Metrics):
    def __init__(self) -> None:
        self.restarts, self.healthy, self.synced = 0, [], []

    def on_catalog_restart(self) -> None:
        self.restarts += 1

    def set_catalog_healthy(self, healthy: bool) -> None:
        self.healthy.append(healthy)

    def set_catalog_synced(self, synced: bool) -> None:
        self.synced.append(synced)


def small_snapshot(path, catalog_offsets=None):
    enc = HashEncoder()
    index = ItemIndex(enc.dim, model_version=enc.model_version, version="small-v1")
    base = [Product(f"base-{i}", f"base product {i}") for i in range(20)]
    index.upsert(base, enc.encode([p.text for p in base]))
    return save_snapshot(index, path, catalog_offsets=catalog_offsets)


def catalog_sync(settings):
    from stream.live.catalog_sync import CatalogSync

    index = load_snapshot(settings.resolved_index_path)
    services = SimpleNamespace(index=IndexHolder(index), products=HashEncoder(), metrics=CatalogMetrics())
    sync = CatalogSync(settings, services)
    sync.backoff_min_s = 0.1
    return sync


async def true_ends(settings, n_records: int) -> dict[str, int]:
    """{partition: end offset} of the catalog topic once it holds ``n_records`` records."""
    msgs = await read_topic(settings, settings.catalog_topic, until=lambda m: len(m) >= n_records, timeout=30)
    assert len(msgs) == n_records
    ends = {"0": 0}                                # the catalog topic has one partition
    for m in msgs:
        ends[str(m.partition)] = max(ends[str(m.partition)], m.offset + 1)
    return ends


async def until_true(check, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


def test_catalog_sync_catches_up_on_an_empty_topic_and_on_a_snapshot_at_the_end(settings_factory, tmp_path):
    empty = settings_factory(index_path=small_snapshot(tmp_path / "empty"), index_watch_s=0)
    full = settings_factory(index_path=tmp_path / "full", index_watch_s=0)
    products = [Product(f"P{i}", f"catalogue product {i}") for i in range(12)]

    async def scenario():
        from stream.ops.topics import ensure_topics

        await ensure_topics(empty)
        await push_catalog(full, products)
        small_snapshot(full.index_path, catalog_offsets=await true_ends(full, len(products)))
        for settings, applied in ((empty, 0), (full, 0)):
            sync = catalog_sync(settings)
            task = asyncio.create_task(sync.run())
            try:
                t0 = time.monotonic()
                await asyncio.wait_for(sync.wait_caught_up(), 30)
                print(f"bootstrap {settings.catalog_topic}: {time.monotonic() - t0:.2f}s (sync says {sync.bootstrap_s:.2f}s)")
                assert sync.caught_up and sync.healthy and sync.restarts == 0
                assert len(sync.applied) == applied
                assert set(sync.positions) == {0}
                assert sync.services.metrics.synced == [True] and sync.services.metrics.healthy == [True]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        # a snapshot from before the last updates: those are read (and only those) before caught_up
        late = [Product("P3", "catalogue product 3, renamed"), Product("P99", "a product newer than the snapshot")]
        await push_catalog(full, late)
        sync = catalog_sync(full)
        task = asyncio.create_task(sync.run())
        try:
            await asyncio.wait_for(sync.wait_caught_up(), 30)
            assert set(sync.applied) == {"P3", "P99"} and "P99" in sync.services.index.current
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(scenario())


def test_catalog_sync_restarts_after_a_failure_and_keeps_applying(settings_factory, tmp_path, monkeypatch):
    settings = settings_factory(index_path=small_snapshot(tmp_path / "snap"), index_watch_s=0)
    first = [Product(f"P{i}", f"catalogue product {i}") for i in range(6)]

    async def scenario():
        await push_catalog(settings, first)
        sync = catalog_sync(settings)
        original, calls = sync.apply_records, []

        def flaky(records):
            calls.append(len(records))
            if len(calls) == 1:
                raise RuntimeError("injected catalogue failure")
            return original(records)

        monkeypatch.setattr(sync, "apply_records", flaky)
        task = asyncio.create_task(sync.run())
        try:
            await asyncio.wait_for(sync.wait_caught_up(), 30)
            index = sync.services.index.current
            assert sync.restarts == 1 and sync.healthy
            assert "injected catalogue failure" in sync.last_error
            assert all(p.id in index for p in first)              # the failed batch was read again
            metrics = sync.services.metrics
            assert metrics.restarts == 1 and metrics.healthy[:3] == [True, False, True]

            await push_catalog(settings, [Product("P-late", "a product after the restart")], ["P0"])
            await until_true(lambda: "P-late" in index and "P0" not in index, what="updates after the restart")
            assert sync.restarts == 1 and sync.healthy
            assert sum(sync.positions.values()) == len(first) + 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(scenario())


def _ready(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_worker_with_a_snapshot_at_the_catalog_end_turns_ready(settings_factory, worker_factory, catalog_products,
                                                               index_snapshot, tmp_path):
    live = tmp_path / "index" / "current"
    settings = settings_factory(index_path=live)
    covered = catalog_products[:5]                 # already in the snapshot

    async def prepare():
        await push_catalog(settings, covered)
        return await true_ends(settings, len(covered))

    ends = run(prepare())
    save_snapshot(load_snapshot(index_snapshot), live, catalog_offsets=ends)
    proc = worker_factory(settings)               # waits for /ready 200
    ready = _ready(settings.web_port)
    assert ready["ready"] is True and ready["catalog_synced"] is True
    logged = [ln for ln in proc.log_path.read_text().splitlines() if "catalogue sync caught up in" in ln]
    assert logged, "bootstrap time not logged"
    print(logged[0])


def test_a_product_newer_than_the_snapshot_is_known_before_the_first_batch(settings_factory, worker_factory,
                                                                            catalog_products):
    """The catalogue topic holds a product the snapshot lacks when the worker starts; events naming
    it, produced at once, get recommendations and are never dead-lettered as unknown_product."""
    settings = settings_factory()
    seen = catalog_products[SEEN_ITEM]
    fresh = Product("NEW-before-start", seen.title + " deluxe", category=seen.category, brand=seen.brand)
    run(push_catalog(settings, [fresh]))
    worker_factory(settings, wait=False)
    events = [event(i, f"early-{i}", "view", item=fresh.id) for i in range(8)]
    run(produce_raw(settings, [keyed(e) for e in events]))
    wanted = {e["event_id"] for e in events}
    answered, dead = run(outcome(settings, wanted, timeout=120))
    assert not dead, f"dead-lettered: {dead}"
    assert answered == wanted


async def outcome(settings, wanted: set, timeout: float) -> tuple[set, list[bytes]]:
    """Which of the ``wanted`` events got a recommendation, and the dead letters, read until every
    one got a recommendation, one is dead-lettered or the timeout."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.recommendations_topic, settings.dead_letter_topic, group_id=None,
                                bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                                fetch_max_wait_ms=settings.fetch_max_wait_ms)
    await consumer.start()
    answered: set = set()
    dead: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while answered != wanted and not dead and time.monotonic() < deadline:
            for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
                for m in msgs:
                    if tp.topic == settings.dead_letter_topic:
                        dead.append(m.value[:200])
                    else:
                        answered |= set(orjson.loads(m.value)["event_ids"]) & wanted
    finally:
        await consumer.stop()
    return answered, dead

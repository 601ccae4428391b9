"""Control records of any shape -- on the catalogue topic, and forget requests on the events topic --
never stop a running worker: each bad one is logged once with its topic, partition and offset,
counted, and skipped, and the good records after them are still applied."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

import orjson

from index import Product
from stream.clients import push_catalog, request_forget
from stream.core.control import CONTROL_HEADER, FORGET
from tests.conftest import run
from tests.kafka_io import event, read_topic
from tests.stream.live.test_catalog_e2e import SEEN_ITEM, Storefront, items, until

CTRL = CONTROL_HEADER

# A record whose header key is not UTF-8 (librdkafka takes any bytes there): aiokafka's pure-Python
# builder, run in its own process, is made to write one. aiokafka cannot decode that record batch.
UNDECODABLE_RECORD = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

class NotUtf8(str):
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfe"

async def main():
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1])
    await producer.start()
    try:
        await producer.send_and_wait(sys.argv[2], b'{"id": "P-bad", "title": "x"}', key=b"P-bad", partition=0,
                                     headers=[(NotUtf8("k"), b"v")])
    finally:
        await producer.stop()

asyncio.run(main())
"""


async def produce(settings, topic: str, records: list[tuple[bytes | None, bytes | None, list | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers, partition=0)
    finally:
        await producer.stop()


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _counter(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_malformed_catalogue_and_forget_records_are_skipped_while_the_worker_serves(
        settings_factory, worker_factory, catalog_products):
    settings = settings_factory(partitions=1)
    worker = worker_factory(settings)
    seen = catalog_products[SEEN_ITEM]
    ok = {"id": "P-bad", "title": "a product"}
    bad_catalogue = [
        (b"P-bad", b"not json {", None),
        (b"P-bad", b"[1, 2, 3]", None),
        (b"P-bad", b'"just a string"', None),
        (b"P-bad", orjson.dumps({**ok, "id": ["P-bad"]}), None),
        (b"P-bad", orjson.dumps({**ok, "title": ["a", "list"]}), None),
        (b"P-bad", orjson.dumps({**ok, "category": ["a", "list"]}), None),
        (b"P-bad", orjson.dumps({**ok, "brand": {"a": 1}}), None),
        (b"P-bad", orjson.dumps({**ok, "price": "NaN"}), None),
        (b"P-bad", orjson.dumps({**ok, "price": [1]}), None),
        (b"P-bad", orjson.dumps({**ok, "in_stock": {"no": 1}}), None),
        (b"P-bad", orjson.dumps({**ok, "title": "x" * 300_000}), None),        # a huge field
        (b"K" * 5000, orjson.dumps({**ok, "id": "K" * 5000}), None),           # a huge key
        (b"\xff\xfe\xfd", orjson.dumps(ok), None),                             # a key that is not UTF-8
        (b"P-other", orjson.dumps(ok), None),                                  # key and id disagree
        (None, orjson.dumps(ok), None),                                        # no key
        (b"P-bad", b"[" * 5000 + b"]" * 5000, None),                           # nested past any parser's depth
        (b"P-bad", orjson.dumps(ok), [(f"h{i}", b"v" * 2000) for i in range(200)]),   # odd headers ...
        (b"P-bad", orjson.dumps(ok), [("", None), ("\u00e9\u00e9", b"\x00\xff")]),     # ... still a good record
    ]
    bad_forget = [
        (b"u-x", b"", [(CTRL, b"purge")]),                         # a verb no one knows
        (b"u-x", b"", [(CTRL, None)]),                             # no verb
        (None, b"", [(CTRL, FORGET)]),                             # no user
        (b"u" * 5000, b"", [(CTRL, FORGET)]),                      # a key longer than any user id
        (b"\xff\xfe", b"", [(CTRL, FORGET)]),                      # a key that is not UTF-8
        (b"u-x", b"", [(CTRL, FORGET), (CTRL, b"purge")]),         # two verbs
    ]
    clone = Product("NEW-after-bad", seen.title, category=seen.category, brand=seen.brand, price=seen.price)

    async def scenario():
        async with Storefront(settings, seen.id) as store:
            before = items(await store.recommend())
            await produce(settings, settings.catalog_topic, bad_catalogue)
            subprocess.run([sys.executable, "-c", UNDECODABLE_RECORD, ",".join(settings.bootstrap_servers),
                            settings.catalog_topic], env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
                           check=True, timeout=60)
            await push_catalog(settings, [clone])
            rec, _ = await until(store, lambda r: clone.id in items(r), timeout=60)
            assert items(rec)[0] == clone.id
            assert clone.id not in before

            # forget requests: the bad ones, then a good one for a shopper with a purchase
            user = "u-forget"
            bought = items(await store.recommend())[0]
            await store.producer.send_and_wait(settings.events_topic, orjson.dumps(
                event(9001, user, "purchase", item=bought)), key=user.encode())
            await produce(settings, settings.events_topic, bad_forget)
            await request_forget(settings, user)
            eid = await store.send(user=user)
            while eid not in store.recs:
                await store.poll()
            assert bought in items(store.recs[eid]), "the good forget request after the bad ones was applied"
            assert store.recs[eid]["event_ids"] == [eid]
            assert (await store.recommend())["items"]             # and it keeps serving

    run(scenario())
    assert worker.poll() is None and _ready(settings.web_port) == 200

    # every bad forget request dead-lettered with its reason; each bad record counted once
    dead = run(read_topic(settings, settings.dead_letter_topic, timeout=30,
                          until=lambda m: sum(dict(r.headers).get("shopstream.dead-letter.reason") == b"invalid_control"
                                              for r in m) >= len(bad_forget)))
    reasons = [dict(r.headers)["shopstream.dead-letter.reason"] for r in dead]
    assert reasons.count(b"invalid_control") == len(bad_forget)
    text = _metrics(settings.web_port)
    bad_catalogue_records = len(bad_catalogue) - 2 + 1            # two with odd headers are good; one undecodable
    assert _counter(text, "shopstream_control_records_skipped_total", kind="catalog", reason="unreadable") == 1
    assert _counter(text, "shopstream_control_records_skipped_total", kind="catalog") == bad_catalogue_records
    assert _counter(text, "shopstream_control_records_skipped_total", kind="forget") == len(bad_forget)
    assert _counter(text, "shopstream_catalog_sync_restarts_total") == 0, "the follower never stopped"
    log = worker.log_path.read_text()
    skipped = re.findall(rf"skipped catalogue record {settings.catalog_topic}/0@(\d+)", log)
    assert len(skipped) == len(set(skipped)) == bad_catalogue_records, "each logged once, with its offset"
    invalid = re.findall(rf"control message {settings.events_topic}/0@(\d+) is not valid", log)
    assert len(invalid) == len(set(invalid)) == len(bad_forget)
    assert "Traceback" not in log

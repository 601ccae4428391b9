"""Fault injection end to end, on a real broker with a real worker process.

Oversized messages, an encoder that raises for chosen events (the test-only hook), a session value
in the changelog that does not parse, and a product deleted while events for it stream in: every
valid event is reflected, every bad one dead-lettered with its reason, none lost.
"""
from __future__ import annotations

import random

import orjson

from tests.conftest import run
from tests.kafka_io import event, keyed, read_topic, recs_of

REASON = "shopstream.dead-letter.reason"


async def _produce(settings, messages, topic=None):
    from aiokafka import AIOKafkaProducer

    from stream.ops.topics import ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic or settings.events_topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def test_faults_inside_batches_lose_nothing(settings_factory, worker_factory, catalog_products):
    from stream.clients import push_catalog
    from stream.core.partitioner import partition_for
    from stream.ops.topics import changelog_topic, ensure_topics

    settings = settings_factory(partitions=2)
    run(ensure_topics(settings))
    # a session value that does not parse, where the worker will recover it from
    corrupt = "user-corrupt"
    part = partition_for("murmur2", corrupt.encode(), settings.partitions)

    async def poison():
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await p.start()
        await p.send_and_wait(changelog_topic(settings), b"\xff{not a session", key=corrupt.encode(), partition=part)
        await p.stop()

    run(poison())
    rng = random.Random(11)
    pids = [p.id for p in catalog_products[:200]]
    deleted = pids[0]
    fault_ids = {"e17", "e143", "e233"}   # none names the deleted product (every tenth)
    worker_factory(settings, extra_env={"SHOPSTREAM_FAULT_EVENT_IDS": ",".join(sorted(fault_ids)),
                                        "SHOPSTREAM_UNKNOWN_PRODUCT_HOLD_S": "1"})

    users = [f"user-{i}" for i in range(25)] + [corrupt]
    first, second, oversized = [], [], []
    for n in range(300):
        ev = event(n, rng.choice(users), rng.choice(["view", "click", "add_to_cart", "purchase"]),
                   item=deleted if n % 10 == 0 else rng.choice(pids[1:]))
        (first if n < 150 else second).append(keyed(ev))
    for i in range(3):   # ~1.2 MB each: the worker must not try to copy them whole
        big = b'{"event_id": "big%d", "pad": "' % i + b"y" * 1_200_000 + b'"}'
        oversized.append(big)
    run(_produce(settings, first[:75] + [(b"u-big", oversized[0])] + first[75:] + [(b"u-big", oversized[1])]))
    run(push_catalog(settings, deletes=[deleted]))         # deleted while events for it stream in
    run(_produce(settings, second[:50] + [(b"u-big", oversized[2])] + second[50:]))

    sent = [orjson.loads(v) for _, v in first + second]
    naming_deleted = {e["event_id"] for e in sent if e["item_id"] == deleted}
    must_reflect = {e["event_id"] for e in sent} - fault_ids - naming_deleted

    def reflected(msgs):
        return {e for r in recs_of(msgs) for e in r["event_ids"]}

    def dead(msgs):
        out = {}
        for m in msgs:
            h = dict(m.headers)
            eid = None
            if m.value and h.get(REASON) != b"oversized":
                eid = orjson.loads(m.value).get("event_id")
            out[eid or h["shopstream.dead-letter.offset"].decode()] = (h[REASON].decode(), m, h)
        return out

    def settled(recs, dlq):
        gone = reflected(recs) | set(dead(dlq))
        return must_reflect <= reflected(recs) and (fault_ids | naming_deleted) <= gone

    recs = run(read_topic(settings, settings.recommendations_topic, until=lambda m: must_reflect <= reflected(m),
                          timeout=180))
    dlq = run(read_topic(settings, settings.dead_letter_topic,
                         until=lambda m: fault_ids <= set(dead(m)) and sum(r == "oversized" for r, _, _ in
                                                                           dead(m).values()) >= 3, timeout=90))
    recs = run(read_topic(settings, settings.recommendations_topic, until=lambda m: settled(m, dlq), timeout=60))
    missing = must_reflect - reflected(recs)
    assert not missing, f"{len(missing)} valid event(s) never reflected: {sorted(missing)[:10]}"
    dl = dead(dlq)
    for eid in fault_ids:
        reason, _, h = dl[eid]
        assert reason == "processing_error" and b"injected" in h["shopstream.dead-letter.detail"]
    bigs = [(m, h) for r, m, h in dl.values() if r == "oversized"]
    assert len(bigs) == 3
    for m, h in bigs:
        assert int(h["shopstream.dead-letter.original-size"]) > 1_200_000
        assert len(m.value) <= settings.dead_letter_max_bytes and h["shopstream.dead-letter.truncated"] == b"value"
    for eid in naming_deleted:   # before the delete: reflected; after it: held, then dead-lettered
        assert eid in reflected(recs) or dl.get(eid, ("",))[0] == "unknown_product", eid
    assert any(dl.get(eid, ("",))[0] == "unknown_product" for eid in naming_deleted)
    corrupt_recs = [r for r in recs_of(recs) if r["user_id"] == corrupt]
    assert corrupt_recs, "the shopper whose stored session did not parse got no recommendation"

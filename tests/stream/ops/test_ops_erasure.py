"""Erasure on a real broker and a real worker: after `forget`, every topic shopstream writes is read
from the beginning, and the shopper is found only where docs/operations.md's privacy map says; the
latest value of their key on every compacted topic is a tombstone. No shopper data over HTTP.

tansu does not compact (/work/shared/TANSU.md): older values stay in the log here, so the test checks
the latest value per key, and that the topics carry the configs that make Kafka remove them.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest

from stream.core.control import CONTROL_HEADER
from stream.settings import Secret
from stream.tools.demo import stop_process
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

KEY = "test-erasure-key"
GONE, KEPT = "carol@example.com", "dave@example.com"
QUERY = "a very private query"


async def read_all(settings, topic: str, quiet_s: float = 1.5, timeout: float = 30.0) -> list:
    """Every record of ``topic`` from the beginning: read until the end offsets, then until quiet."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                fetch_max_wait_ms=settings.fetch_max_wait_ms, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last_new < quiet_s:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                out.extend(msgs)
                last_new = time.monotonic()
    finally:
        await consumer.stop()
    return out


def _holds(m, needle: bytes) -> bool:
    parts = [m.key or b"", m.value or b"", *(v or b"" for _, v in (m.headers or ()))]
    return any(needle in p for p in parts)


def _latest(records: list) -> dict:
    latest = {}
    for m in sorted(records, key=lambda m: (m.partition, m.offset)):
        latest[(m.partition, m.key)] = m.value
    return latest


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("pseudonymise", [False, True], ids=["raw-ids", "pseudonymised"])
def test_forget_reaches_every_topic_and_no_view_serves_a_session(settings_factory, worker_factory,
                                                                 catalog_products, pseudonymise):
    from stream.core.pseudonyms import pseudonym
    from stream.ops.erasure import forget
    from stream.ops.topics import changelog_topic, topic_specs

    key = Secret(KEY) if pseudonymise else Secret("")
    settings = settings_factory(pseudonymise_key=key)
    env = {"SHOPSTREAM_UNKNOWN_PRODUCT_HOLD_S": "0", **({"SHOPSTREAM_PSEUDONYMISE_KEY": KEY} if pseudonymise else {})}
    gone = pseudonym(KEY, GONE) if pseudonymise else GONE
    kept = pseudonym(KEY, KEPT) if pseudonymise else KEPT
    worker = worker_factory(settings, extra_env=env)

    # no shopper data over HTTP: Faust's table and router views (and its index) are off
    assert _get(settings.web_port, "/health") == 200
    for path in (f"/table/sessions/{gone}/", "/table/", "/table/sessions/", f"/router/sessions/{gone}/", "/router/",
                 "/", "/stats/", "/graph/", "/performance/"):
        assert _get(settings.web_port, path) == 404, path

    x, y = (p.id for p in [p for p in catalog_products if p.in_stock][:2])
    base = int(time.time() * 1000) - 60_000
    storefront = [event(1, GONE, "search", query=QUERY, ts_ms=base, results=[x, y]),
                  event(2, GONE, "view", item=y, ts_ms=base + 1),
                  event(3, GONE, "view", item="no-such-product", ts_ms=base + 2),      # dead-lettered
                  event(4, GONE, "add_to_cart", item=x, ts_ms=base + 3),
                  event(5, GONE, "purchase", item=x, ts_ms=base + 4),
                  event(6, KEPT, "view", item=y, ts_ms=base + 5)]
    run(produce_raw(settings, [keyed(e) for e in storefront]))
    recs = run(read_topic(settings, settings.recommendations_topic,
                          until=lambda m: {e for r in recs_of(m) for e in r["event_ids"]} >= {"e1", "e2", "e4", "e5", "e6"}))
    assert {r["user_id"] for r in recs_of(recs)} == {gone, kept}
    run(read_topic(settings, settings.dead_letter_topic, until=lambda m: len(m) >= 1))

    run(forget(settings, GONE))
    # the worker applies the request too: it tombstones the recommendation on top of forget's own
    tombstones = lambda m: sum(r.key == gone.encode() and r.value is None for r in m)   # noqa: E731
    recs = run(read_topic(settings, settings.recommendations_topic, timeout=60,
                          until=lambda m: tombstones(m) > settings.partitions))
    assert tombstones(recs) > settings.partitions, "the worker did not tombstone the recommendation"
    stop_process(worker)

    topics = [s.name for s in topic_specs(settings)]
    assert changelog_topic(settings) in topics and settings.resolved_feedback_topic in topics
    async def read_every_topic():
        return await asyncio.gather(*(read_all(settings, t) for t in topics))

    records = dict(zip(topics, run(read_every_topic())))
    raw = GONE.encode()
    # where the privacy map (docs/operations.md) says the shopper may still be until retention or
    # compaction removes them: the storefront's events, dead letters, and older values of the
    # compacted topics behind the tombstone
    may_hold = {settings.events_topic, settings.dead_letter_topic, settings.recommendations_topic,
                changelog_topic(settings), settings.resolved_feedback_topic}
    for topic, msgs in records.items():
        found = [m for m in msgs if _holds(m, gone.encode()) or _holds(m, raw) or _holds(m, QUERY.encode())]
        if topic not in may_hold:
            assert not found, f"{topic} holds the forgotten shopper: {found[:2]}"
    # a raw id and the private query: in the storefront's own events; with pseudonymisation nowhere else
    for topic, msgs in records.items():
        with_raw = [m for m in msgs if _holds(m, raw)]
        if topic == settings.events_topic:
            requests = [m for m in msgs if any(k == CONTROL_HEADER for k, _ in m.headers or ())]
            assert len(requests) == settings.partitions and all(m.key == gone.encode() for m in requests)
            if pseudonymise:     # the storefront's events only: no forget request carries it
                assert not [m for m in with_raw if any(k == CONTROL_HEADER for k, _ in m.headers or ())]
        elif pseudonymise:
            assert not with_raw, f"{topic} holds the raw id: {with_raw[:2]}"
    if pseudonymise:
        dead = [orjson.loads(m.value) for m in records[settings.dead_letter_topic] if m.key == gone.encode()]
        assert dead and all(d["item_id"] == "no-such-product" and d["user_id"] == gone for d in dead), dead
        worker_log = worker.log_path.read_text()
        assert "example.com" not in worker_log
    # the latest value of the shopper's key is a tombstone on every compacted topic, on every partition
    for topic in (changelog_topic(settings), settings.recommendations_topic, settings.resolved_feedback_topic):
        latest = _latest(records[topic])
        for p in range(settings.partitions):
            assert (p, gone.encode()) in latest and latest[(p, gone.encode())] is None, (topic, p)
    latest_recs = _latest(records[settings.recommendations_topic])
    assert any(k == kept.encode() and v is not None for (_, k), v in latest_recs.items()), "the other shopper's stays"
    assert any(QUERY.encode() in (m.value or b"") for m in records[changelog_topic(settings)]), \
        "the test searched: its query was in the session before the forget (tansu keeps older values)"


def _shopstream(*args, settings):
    env = {**os.environ, "SHOPSTREAM_BROKER": settings.broker, "SHOPSTREAM_APP_ID": settings.app_id,
           "SHOPSTREAM_PARTITIONS": str(settings.partitions), "SHOPSTREAM_EVENTS_TOPIC": settings.events_topic,
           "SHOPSTREAM_RECOMMENDATIONS_TOPIC": settings.recommendations_topic,
           "SHOPSTREAM_DEAD_LETTER_TOPIC": settings.dead_letter_topic, "SHOPSTREAM_CATALOG_TOPIC": settings.catalog_topic,
           "SHOPSTREAM_MODELS_TOPIC": settings.models_topic,
           "SHOPSTREAM_ERASURE_DEADLINE_S": str(settings.erasure_deadline_s)}
    return subprocess.run([sys.executable, "-m", "stream", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_topics_are_created_with_erasure_configs_and_check_finds_a_changed_one(settings_factory):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from stream.ops.topics import changelog_topic, check_topics

    settings = settings_factory(erasure_deadline_s=86400.0)
    # a dead-letter topic that already exists, made by hand with a longer retention
    async def create_by_hand():
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(settings.dead_letter_topic, settings.partitions, 1,
                                                topic_configs={"retention.ms": "604800000"})])
        finally:
            await admin.close()

    run(create_by_hand())
    made = _shopstream("topics", settings=settings)
    assert made.returncode == 0, made.stderr
    assert "max.compaction.lag.ms=43200000" in made.stdout and "delete.retention.ms=21600000" in made.stdout
    # what the broker holds (tansu's DescribeConfigs returns the configs set at creation)
    differences = run(check_topics(settings))
    assert [(d.topic, d.name, d.want, d.have) for d in differences] == [
        (settings.dead_letter_topic, "retention.ms", "64800000", "604800000"),
        (settings.dead_letter_topic, "segment.ms", "21600000", None)]
    checked = _shopstream("topics", "--check", settings=settings)
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [str(d) for d in differences]
    # every other topic is as `shopstream topics` made it; a changed deadline shows on all of them
    longer = settings.replace(erasure_deadline_s=2 * 86400.0)
    changed = {d.topic for d in run(check_topics(longer))}
    assert changed == {settings.events_topic, settings.recommendations_topic, settings.dead_letter_topic,
                       changelog_topic(settings), settings.resolved_feedback_topic}

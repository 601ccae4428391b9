"""Storefronts that produce with librdkafka (CRC32) or aiokafka/Java (murmur2): shopstream places
its own keyed messages like the shop's producers, and `forget` reaches a session wherever it lives.

The partitioners are checked against the real clients: aiokafka's DefaultPartitioner, and a
default-config confluent-kafka producer writing to a real broker.
"""
from __future__ import annotations

import random
import time

import orjson
import pytest

from stream.core.partitioner import PARTITIONERS, aiokafka_partitioner, murmur2, partition_for
from stream.errors import ConfigError
from stream.settings import Settings
from tests.conftest import run
from tests.kafka_io import event, read_topic
from tests.rdkafka_io import latest_by_key, rdkafka_produce, rdkafka_read

SHOPPERS = [f"shopper-{n:02d}" for n in range(1, 13)]


def _keys(n: int = 500) -> list[bytes]:
    rng = random.Random(14)
    ids = [f"user-{i}".encode() for i in range(n // 2)] + [f"{i}@example.com".encode() for i in range(n // 4)]
    return ids + [rng.randbytes(rng.randint(1, 40)) for _ in range(n - len(ids))]


# -- pure ------------------------------------------------------------------------------------------
def test_murmur2_is_aiokafkas_default_partitioner():
    from aiokafka.partitioner import DefaultPartitioner
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    default = DefaultPartitioner()
    for key in _keys() + [b""]:
        assert murmur2(key) == aiokafka_murmur2(key), key
        for partitions in (1, 2, 3, 4, 7, 12, 64):
            everyone = list(range(partitions))
            assert partition_for("murmur2", key, partitions) == default(key, everyone, everyone), key


def test_aiokafka_partitioner_has_aiokafkas_signature():
    for name in PARTITIONERS:
        place = aiokafka_partitioner(name)
        for key in _keys(50):
            assert place(key, [0, 1, 2, 3], [2]) == partition_for(name, key, 4)
        assert place(None, [0, 1, 2, 3], [2]) == 2                # keyless: an available partition
        assert place(None, [0, 1, 2, 3], []) in range(4)


def test_unknown_partitioner_is_a_config_error_naming_the_valid_ones():
    for call in (lambda: partition_for("fnv1a", b"k", 4), lambda: aiokafka_partitioner("java"),
                 lambda: Settings(partitioner="CRC32"),
                 lambda: Settings.from_env({"SHOPSTREAM_PARTITIONER": "random"})):
        with pytest.raises(ConfigError, match="murmur2, crc32"):
            call()
    assert Settings.from_env({"SHOPSTREAM_PARTITIONER": "crc32"}).partitioner == "crc32"
    assert Settings().partitioner == "murmur2"


# -- real clients on a real broker ----------------------------------------------------------------
def test_crc32_is_librdkafkas_default_and_event_producer_follows_the_setting(settings_factory):
    """A default-config confluent-kafka producer places keys as ``crc32`` does; ``EventProducer``
    (so ``shopstream produce``) set to ``crc32`` puts a shopper's events on the same partition."""
    from stream.clients import EventProducer
    from stream.ops.topics import TopicSpec, ensure_topics

    settings = settings_factory(partitions=7, partitioner="crc32")
    run(ensure_topics(settings))
    run(ensure_topics(settings, [TopicSpec(f"{settings.events_topic}-rdkafka", 7)]))
    keys = _keys(300)
    placed = rdkafka_produce(settings, [(k, b"x") for k in keys], topic=f"{settings.events_topic}-rdkafka")
    assert all(p == partition_for("crc32", k, 7) for k, p in placed)
    assert sum(p != partition_for("murmur2", k, 7) for k, p in placed) > 200   # the two really differ

    users = [k.decode() for k in keys[:60]]

    async def send_all(s):
        async with EventProducer(s) as producer:
            futs = [await producer.send(event(n, u, "view", item="85123A")) for n, u in enumerate(users)]
            return [(await f).partition for f in futs]

    by_rdkafka = dict(rdkafka_produce(settings, [(u.encode(), b"x") for u in users],
                                      topic=f"{settings.events_topic}-rdkafka"))
    assert run(send_all(settings)) == [by_rdkafka[u.encode()] for u in users]
    assert run(send_all(settings.replace(partitioner="murmur2"))) == [partition_for("murmur2", u.encode(), 7)
                                                                       for u in users]


def _neighbours(index_snapshot, catalog_products):
    from tests.stream.ops.test_ops_privacy import _neighbours as neighbours

    return neighbours(index_snapshot, catalog_products)


def _sessions(settings, *, until, timeout: float = 30.0) -> dict:
    """{(partition, user): last changelog value} of the sessions changelog."""
    from stream.ops.topics import changelog_topic

    msgs = run(read_topic(settings, changelog_topic(settings), timeout=timeout,
                          until=lambda m: until(latest_by_key(m))))
    return latest_by_key(msgs)


def _live_users(sessions: dict) -> set[bytes]:
    return {user for (_, user), value in sessions.items() if value is not None}


@pytest.mark.slow
def test_librdkafka_storefront_sessions_forget_and_restart(settings_factory, worker_factory, index_snapshot,
                                                           catalog_products):
    """12 shoppers, one purchase each, produced by librdkafka on 4 partitions; then `forget` each."""
    from stream.ops.erasure import forget

    settings = settings_factory(partitions=4, partitioner="crc32")
    assert sum(partition_for("murmur2", u.encode(), 4) != partition_for("crc32", u.encode(), 4)
               for u in SHOPPERS) >= 6, "the shoppers must tell the partitioners apart"
    y, x = _neighbours(index_snapshot, catalog_products)
    base = int(time.time() * 1000) - 60_000
    worker = worker_factory(settings, name="before")
    placed = rdkafka_produce(settings, [(u.encode(), orjson.dumps(event(n, u, "purchase", item=x, ts_ms=base)))
                                        for n, u in enumerate(SHOPPERS)])
    recs = rdkafka_read(settings, settings.recommendations_topic, until=lambda m: len(m) >= 12)
    assert {orjson.loads(m.value())["user_id"] for m in recs} == set(SHOPPERS)

    # one session per shopper, on the partition librdkafka chose
    sessions = _sessions(settings, until=lambda s: len(_live_users(s)) >= 12)
    assert sorted(sessions) == sorted((p, k) for k, p in placed)
    assert {k.decode(): orjson.loads(v)["seen"] for (_, k), v in sessions.items()} == {
        u: [f"e{n}"] for n, u in enumerate(SHOPPERS)}

    for user in SHOPPERS:
        run(forget(settings, user))
    # every session is shadowed by a tombstone on its own partition (the worker's or forget's)
    every = {(p, u.encode()) for u in SHOPPERS for p in range(4)}
    sessions = _sessions(settings, until=lambda s: set(s) >= every and not _live_users(s))
    live = _live_users(sessions)
    assert not live, f"{len(live)} of 12 sessions still live after forget: {sorted(live)}"
    assert set(sessions) == every      # a tombstone on every partition, the session's among them

    # a restarted worker recovers none of them: a forgotten shopper's purchase no longer excludes X
    from stream.tools.demo import stop_process

    stop_process(worker)
    worker_factory(settings, name="after")
    again = {u: f"e{100 + n}" for n, u in enumerate(SHOPPERS[:4])}
    rdkafka_produce(settings, [(u.encode(), orjson.dumps(event(100 + n, u, "view", item=y, ts_ms=base + 1000)))
                               for n, u in enumerate(again)])

    def new_recs(messages) -> dict:
        recs = (orjson.loads(m.value()) for m in messages if m.value() is not None)   # tombstones: forgotten
        return {r["user_id"]: r for r in recs if set(r["event_ids"]) & set(again.values())}

    after = new_recs(rdkafka_read(settings, settings.recommendations_topic, until=lambda m: len(new_recs(m)) >= 4))
    assert set(after) == set(again)
    for user, event_id in again.items():
        assert after[user]["event_ids"] == [event_id]
        assert x in [i["product_id"] for i in after[user]["items"]], f"{user}'s purchase survived forget"
    # ... and their sessions hold that one event only
    sessions = _sessions(settings, until=lambda s: len(_live_users(s)) >= 4)
    assert {k.decode(): orjson.loads(v)["seen"] for (_, k), v in sessions.items() if v is not None} == {
        u: [e] for u, e in again.items()}


# The worker re-sends a wrongly keyed event to partition_for(settings.partitioner, user): with a
# crc32 shop, a murmur2 re-send would split the shopper's session over two changelog partitions.
@pytest.mark.slow
def test_wrongly_keyed_event_joins_its_shoppers_session(settings_factory, worker_factory, index_snapshot,
                                                        catalog_products):
    settings = settings_factory(partitions=4, partitioner="crc32")
    user = next(u for u in SHOPPERS
                if partition_for("crc32", u.encode(), 4) != partition_for("murmur2", u.encode(), 4))
    home = partition_for("crc32", user.encode(), 4)
    wrong = next(k for k in (f"session-{n}".encode() for n in range(100)) if partition_for("crc32", k, 4) != home)
    y, x = _neighbours(index_snapshot, catalog_products)
    base = int(time.time() * 1000) - 60_000
    worker_factory(settings)
    rdkafka_produce(settings, [(user.encode(), orjson.dumps(event(1, user, "purchase", item=x, ts_ms=base)))])
    rdkafka_read(settings, settings.recommendations_topic, until=lambda m: len(m) >= 1)
    rdkafka_produce(settings, [(wrong, orjson.dumps(event(2, user, "view", item=y, ts_ms=base + 1000)))])
    recs = rdkafka_read(settings, settings.recommendations_topic,
                        until=lambda m: any("e2" in orjson.loads(r.value())["event_ids"] for r in m))
    rec = next(r for r in (orjson.loads(m.value()) for m in recs) if "e2" in r["event_ids"])
    assert x not in [i["product_id"] for i in rec["items"]], "the purchase is in the same session"

    resent = rdkafka_read(settings, settings.events_topic,
                          until=lambda m: any(r.key() == user.encode() and b'"e2"' in r.value() for r in m))
    assert sorted(r.partition() for r in resent if r.key() == user.encode()) == [home, home]
    sessions = _sessions(settings, until=lambda s: any(
        v is not None and "e2" in orjson.loads(v)["seen"] for v in s.values()))
    assert {p for p, k in sessions if k == user.encode()} == {home}, "one shopper, one session partition"

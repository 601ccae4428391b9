"""Privacy on a real broker and real workers: pseudonymous ids everywhere, and `forget` that
survives a restart."""
from __future__ import annotations

import time

import orjson

from stream.settings import Secret
from stream.tools.demo import stop_process
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

KEY = "test-pseudonymisation-key"


def _neighbours(index_snapshot, catalog_products):
    """A product Y and its nearest in-stock neighbour X: a session of one view of Y gets X."""
    from index import load_snapshot

    index = load_snapshot(index_snapshot)
    for p in catalog_products[:200]:
        if not p.in_stock:
            continue
        found = index.search(index.vectors_of([p.id]), 2, exclude=[{p.id}])[0]
        if found:
            return p.id, found[0].product_id
    raise AssertionError("no product with a neighbour in the test catalogue")


def test_pseudonymised_ids_and_forget_survives_restart(settings_factory, worker_factory, index_snapshot,
                                                       catalog_products):
    from stream.core.pseudonyms import pseudonym
    from stream.ops.topics import changelog_topic

    settings = settings_factory(pseudonymise_key=Secret(KEY))
    env = {"SHOPSTREAM_PSEUDONYMISE_KEY": KEY}
    y, x = _neighbours(index_snapshot, catalog_products)
    base = int(time.time() * 1000) - 60_000
    # Both shoppers buy X. One of them is forgotten; the other keeps X excluded.
    first = [event(1, "alice@example.com", "purchase", item=x, ts_ms=base),
             event(2, "bob@example.com", "purchase", item=x, ts_ms=base)]
    worker = worker_factory(settings, extra_env=env, name="before")
    run(produce_raw(settings, [keyed(e) for e in first]))
    recs = run(read_topic(settings, settings.recommendations_topic, until=lambda m: len(m) >= 2))
    alice, bob = pseudonym(KEY, "alice@example.com"), pseudonym(KEY, "bob@example.com")
    assert {r["user_id"] for r in recs_of(recs)} == {alice, bob}
    assert {m.key for m in recs} == {alice.encode(), bob.encode()}
    stop_process(worker)

    # the raw ids reach neither the changelog nor the logs
    changelog = run(read_topic(settings, changelog_topic(settings), until=lambda m: len(m) >= 2, timeout=20))
    assert {m.key for m in changelog} == {alice.encode(), bob.encode()}
    assert all(b"alice" not in m.value and b"bob" not in m.value for m in changelog)
    assert "example.com" not in worker.log_path.read_text()

    from stream.ops.erasure import forget

    key, _ = run(forget(settings, "alice@example.com"))
    assert key == alice

    worker_factory(settings, extra_env=env, name="after")
    second = [event(3, "alice@example.com", "view", item=y, ts_ms=base + 1000),
              event(4, "bob@example.com", "view", item=y, ts_ms=base + 1000)]
    run(produce_raw(settings, [keyed(e) for e in second]))
    recs = run(read_topic(settings, settings.recommendations_topic,
                          until=lambda m: {e for r in recs_of(m) for e in r["event_ids"]} >= {"e3", "e4"}))
    # At least once: the first worker may stop before its commit (every second), and then e1, e2
    # come again after the restart -- before the forget request on their partition, possibly in one
    # micro-batch with e3 and e4. Bob's recommendation for e4 may then list ["e2", "e4"]; alice's
    # lists e3 alone, because nothing from before a forget request reaches what follows it.
    after = {r["user_id"]: r for r in recs_of(recs) if {"e3", "e4"} & set(r["event_ids"])}
    assert set(after) == {alice, bob}, [(r["user_id"], r["event_ids"]) for r in recs_of(recs)]
    assert after[alice]["event_ids"] == ["e3"], after[alice]["event_ids"]
    assert after[bob]["event_ids"][-1] == "e4" and set(after[bob]["event_ids"]) <= {"e2", "e4"}
    bob_items = [i["product_id"] for i in after[bob]["items"]]
    alice_items = [i["product_id"] for i in after[alice]["items"]]
    assert x not in bob_items, "bob's purchase was kept across the restart, so X stays excluded"
    assert x in alice_items, "alice was forgotten: her purchase of X no longer excludes it"
    assert orjson.loads(recs[-1].value)["schema_version"] == 1

"""Forgetting a shopper erases the session in the running worker and in the changelog."""
from __future__ import annotations

from index import load_snapshot
from stream.clients import request_forget
from stream.ops.topics import changelog_topic
from stream.tools.demo import stop_process
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of


def _rec(settings, event_id):
    msgs = run(read_topic(settings, settings.recommendations_topic,
                          until=lambda m: any(event_id in r["event_ids"] for r in recs_of(m))))
    return next(r for r in recs_of(msgs) if event_id in r["event_ids"])


def test_forget_erases_running_state_and_survives_restart(settings_factory, worker_factory, index_snapshot):
    settings = settings_factory()
    index = load_snapshot(index_snapshot)
    y = list(index.products)[77]
    x = next(c.product_id for c in index.search(index.vectors_of([y]), 3)[0] if c.product_id != y)
    worker = worker_factory(settings)
    run(produce_raw(settings, [keyed(event(1, "u-gone", "purchase", item=x))]))
    _rec(settings, "e1")
    run(produce_raw(settings, [keyed(event(2, "u-gone", "view", item=y))]))
    assert x not in [i["product_id"] for i in _rec(settings, "e2")["items"]]

    run(request_forget(settings, "u-gone"))
    run(produce_raw(settings, [keyed(event(3, "u-gone", "view", item=y))]))
    after = _rec(settings, "e3")
    assert x in [i["product_id"] for i in after["items"]], "the purchase was forgotten by the running worker"
    assert after["event_ids"] == ["e3"]

    # the tombstone is in the changelog ...
    log = run(read_topic(settings, changelog_topic(settings), timeout=20,
                         until=lambda m: any(r.key == b"u-gone" and r.value is None for r in m)))
    assert any(r.key == b"u-gone" and r.value is None for r in log)
    # ... and a restarted worker recovers the session begun after the erasure, not the one before
    stop_process(worker)
    worker_factory(settings)
    run(produce_raw(settings, [keyed(event(4, "u-gone", "click", item=y))]))
    rec = _rec(settings, "e4")
    assert x in [i["product_id"] for i in rec["items"]]

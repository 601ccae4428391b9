"""A worker restart: sessions come back from the changelog topic."""
from __future__ import annotations

import numpy as np

from index import load_snapshot
from stream.tools.demo import stop_process
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of


def _neighbours(index, pid, k=5):
    vec = index.vectors_of([pid])
    return [c.product_id for c in index.search(vec, k + 1)[0] if c.product_id != pid][:k]


def _recs_for(settings, user, event_id, timeout=60):
    msgs = run(read_topic(settings, settings.recommendations_topic, timeout=timeout,
                          until=lambda m: any(event_id in r["event_ids"] for r in recs_of(m))))
    return [r for r in recs_of(msgs) if r["user_id"] == user and event_id in r["event_ids"]]


def test_purchase_before_restart_still_excluded_after(settings_factory, worker_factory, index_snapshot):
    settings = settings_factory()
    index = load_snapshot(index_snapshot)
    pids = list(index.products)
    # a product Y whose nearest neighbour X we buy first
    y = pids[42]
    x = _neighbours(index, y)[0]

    worker = worker_factory(settings)
    run(produce_raw(settings, [keyed(event(1, "u-restart", "purchase", item=x))]))
    assert _recs_for(settings, "u-restart", "e1")
    stop_process(worker)

    worker_factory(settings)
    run(produce_raw(settings, [keyed(event(2, "u-restart", "view", item=y)),
                               keyed(event(3, "u-fresh", "view", item=y))]))
    after = _recs_for(settings, "u-restart", "e2")
    fresh = _recs_for(settings, "u-fresh", "e3")
    assert after and fresh
    assert x in [i["product_id"] for i in fresh[0]["items"]], "control: X is recommended to a new shopper"
    assert x not in [i["product_id"] for i in after[0]["items"]], "the purchase survived the restart"
    assert np.isfinite([i["score"] for i in after[0]["items"]]).all()


def test_several_events_of_one_user_give_one_up_to_date_recommendation(settings_factory, worker_factory,
                                                                       catalog_products):
    settings = settings_factory(batch_wait_ms=300)
    worker_factory(settings)
    evs = [event(10 + i, "u-batch", "view", item=catalog_products[i].id) for i in range(6)]
    run(produce_raw(settings, [keyed(e) for e in evs]))
    want = {e["event_id"] for e in evs}
    msgs = run(read_topic(settings, settings.recommendations_topic,
                          until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= want))
    recs = recs_of(msgs)
    assert {i for r in recs for i in r["event_ids"]} == want
    assert len(recs) < len(evs), "events of one user in one batch share a recommendation"
    assert max(len(r["event_ids"]) for r in recs) > 1


def test_wrongly_keyed_event_is_rerouted_not_lost(settings_factory, worker_factory, catalog_products):
    settings = settings_factory()
    worker_factory(settings)
    ev = event(20, "u-key", "view", item=catalog_products[3].id)
    run(produce_raw(settings, [(b"someone-else", keyed(ev)[1]), (None, keyed(event(21, "u-key", "click", item=catalog_products[4].id))[1])]))
    msgs = run(read_topic(settings, settings.recommendations_topic,
                          until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= {"e20", "e21"}))
    assert {i for r in recs_of(msgs) for i in r["event_ids"]} == {"e20", "e21"}
    assert all(r["user_id"] == "u-key" for r in recs_of(msgs))

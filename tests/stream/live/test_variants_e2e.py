"""A/B variants in real workers: a shopper keeps their variant across two workers and a restart."""
from __future__ import annotations

from stream.core.variants import assign
from stream.tools.broker import free_port
from stream.tools.demo import stop_process
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

SPEC = "control=pooling:50,treatment=pooling:50"


def _variants(settings, ids):
    msgs = run(read_topic(settings, settings.recommendations_topic, timeout=90,
                          until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= ids))
    out: dict[str, set[str]] = {}
    for r in recs_of(msgs):
        if set(r["event_ids"]) & ids:
            out.setdefault(r["user_id"], set()).add(r["variant"])
    return out


def test_a_shopper_keeps_their_variant_across_two_workers_and_a_restart(settings_factory, worker_factory,
                                                                        catalog_products):
    settings = settings_factory()
    env = {"SHOPSTREAM_VARIANTS": SPEC}
    first = worker_factory(settings, extra_env=env)
    second = worker_factory(settings.replace(web_port=free_port()), extra_env=env)
    users = [f"shopper-{i}" for i in range(30)]
    evs = [event(i, u, item=catalog_products[i].id) for i, u in enumerate(users)]
    run(produce_raw(settings, [keyed(e) for e in evs]))
    before = _variants(settings, {e["event_id"] for e in evs})
    weights = [("control", 50.0), ("treatment", 50.0)]
    expected = {u: assign(u, weights, settings.app_id) for u in users}
    assert set(before) == set(users)
    assert all(before[u] == {expected[u]} for u in users), "each shopper in the variant their key hashes to"
    assert set(expected.values()) == {"control", "treatment"}

    stop_process(first)
    stop_process(second)
    worker_factory(settings, extra_env=env)                     # restarted: one worker, every partition
    evs = [event(100 + i, u, "click", item=catalog_products[50 + i].id) for i, u in enumerate(users)]
    run(produce_raw(settings, [keyed(e) for e in evs]))
    after = _variants(settings, {e["event_id"] for e in evs})
    assert after == before

"""End to end on a real broker: events of many users, bad ones mixed in, nothing lost."""
from __future__ import annotations

import random

import orjson

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

BAD = [
    (b"not json at all", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (orjson.dumps({"event_id": "x", "type": "view", "user_id": "u1", "session_id": "s"}), "missing_field"),
    (orjson.dumps({"event_id": "x", "type": "teleport", "user_id": "u1", "session_id": "s", "ts": 1700000000000}), "unknown_type"),
    (orjson.dumps({"event_id": "x", "type": "view", "user_id": 5, "session_id": "s", "ts": 1700000000000, "item_id": "a"}), "wrong_type"),
    (orjson.dumps({"event_id": "x", "type": "view", "user_id": "u1", "session_id": "s", "ts": 1, "item_id": "a"}), "bad_timestamp"),
    (b'{"event_id": "x", "pad": "' + b"y" * 20000 + b'"}', "oversized"),
    (orjson.dumps({"event_id": "x", "type": "view", "user_id": "u1", "session_id": "s", "ts": 1700000000000, "item_id": "NOPE"}), "unknown_product"),
]


def test_thousand_events_fifty_users_with_bad_ones(settings_factory, worker_factory, catalog_products):
    from pathlib import Path

    settings = settings_factory()
    worker_factory(settings)
    assert (Path(settings.data_dir) / "faust" / settings.app_id / "v1").is_dir()
    assert not (Path.cwd() / f"{settings.app_id}-data").exists(), "Faust's folder left in the working directory"
    rng = random.Random(3)
    pids = [p.id for p in catalog_products]
    users = [f"user-{i}" for i in range(60)]
    messages, valid_ids, bad_offsets = [], set(), 0
    for n in range(1100):
        if n % 40 == 7:
            raw, _ = BAD[(n // 40) % len(BAD)]
            messages.append((b"u1", raw))
            bad_offsets += 1
            continue
        user = rng.choice(users)
        etype = rng.choice(["view", "view", "click", "search", "add_to_cart", "purchase"])
        ev = event(n, user, etype, item=rng.choice(pids))
        messages.append(keyed(ev))
        valid_ids.add(ev["event_id"])
    run(produce_raw(settings, messages))

    def reflected(msgs):
        return {e for r in recs_of(msgs) for e in r["event_ids"]}

    recs = run(read_topic(settings, settings.recommendations_topic, until=lambda m: reflected(m) >= valid_ids))
    dlq = run(read_topic(settings, settings.dead_letter_topic, until=lambda m: len(m) >= bad_offsets, timeout=30))
    seen = reflected(recs)
    assert valid_ids - seen == set(), "valid events missing from recommendations"
    assert seen - valid_ids == set(), "recommendations reflect events that were never sent"
    assert len(dlq) == bad_offsets
    reasons = {dict(m.headers)["shopstream.dead-letter.reason"].decode() for m in dlq}
    assert reasons == {r for _, r in BAD}
    bad_bytes = {raw for raw, _ in BAD}
    assert all(m.value in bad_bytes for m in dlq), "dead letters must carry the original bytes"
    for rec in recs_of(recs):
        assert len(rec["items"]) == settings.top_k
        assert rec["index_version"] and rec["model_version"]


def test_a_lone_event_is_not_held_back_to_fill_a_batch(settings_factory, worker_factory, catalog_products):
    """Below full load a batch goes on as soon as nothing more is waiting (faust_compat.take_ready):
    with a 4 s batch wait, each of five events sent one at a time is answered long before 4 s,
    where Faust's noack_take would hold every one of them the whole wait."""
    import time

    settings = settings_factory(batch_wait_ms=4000)
    worker_factory(settings)
    pids = [p.id for p in catalog_products]
    took = []
    for n in range(5):
        ev = event(n, f"lone-{n}", "view", item=pids[n])
        start = time.monotonic()
        run(produce_raw(settings, [keyed(ev)]))
        recs = run(read_topic(settings, settings.recommendations_topic, timeout=30,
                              until=lambda m, eid=ev["event_id"]: any(eid in r["event_ids"] for r in recs_of(m))))
        assert any(ev["event_id"] in r["event_ids"] for r in recs_of(recs)), f"no recommendation for {ev}"
        took.append(time.monotonic() - start)
    assert max(took) < 2.0, f"seconds from send to recommendation: {took}"

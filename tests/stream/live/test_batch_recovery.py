"""Something that raises around a batch -- after its recommendations are published, before its
session writes and acks -- must not lose an event: the worker drops what it took and did not ack
and starts again from the committed offsets (``LiveBatches.recover``).

The raise is real code raising in the real worker (the test-only hook
``SHOPSTREAM_FAULT_DRIVER_EVENT_IDS``: the driver raises once after publishing a batch that holds
one of the listed events). Faust's own handling -- restart the agent and go on past what it had
taken -- lost such batches.
"""
from __future__ import annotations

import urllib.request

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

FAULTS = ("e20", "e90", "e150")


def test_a_raise_around_a_batch_restarts_from_committed_offsets(settings_factory, worker_factory, catalog_products):
    from stream.core import session_state
    from stream.ops.topics import changelog_topic

    settings = settings_factory(partitions=2)
    proc = worker_factory(settings, extra_env={"SHOPSTREAM_FAULT_DRIVER_EVENT_IDS": ",".join(FAULTS)})
    pids = [p.id for p in catalog_products[:100]]
    events = [event(i, f"rec-u{i % 20}", ("view", "click", "add_to_cart")[i % 3], item=pids[i % 100])
              for i in range(200)]
    run(produce_raw(settings, [keyed(e) for e in events]))
    valid = {e["event_id"]: e["user_id"].encode() for e in events}

    def reflected(msgs):
        return {e for r in recs_of(msgs) for e in r["event_ids"]}

    def sessions_hold_all(msgs):
        latest = {m.key: m.value for m in msgs}
        seen = {k: set((session_state.loads(v) or {}).get("seen", [])) for k, v in latest.items() if v}
        return all(eid in seen.get(key, ()) for eid, key in valid.items())

    recs = run(read_topic(settings, settings.recommendations_topic, until=lambda m: set(valid) <= reflected(m),
                          timeout=90))
    missing = set(valid) - reflected(recs)
    assert not missing, f"{len(missing)} event(s) in no recommendation: {sorted(missing)[:10]}"
    changelog = run(read_topic(settings, changelog_topic(settings), until=sessions_hold_all, timeout=30))
    assert sessions_hold_all(changelog), "events missing from their shopper's session in the changelog"
    dlq = run(read_topic(settings, settings.dead_letter_topic, until=lambda m: False, timeout=1))
    assert not dlq, "a raise in the driver is no message's fault: nothing may be dead-lettered"
    log = proc.log_path.read_text()
    assert log.count("injected driver fault") >= 1 and "starting again from the committed offsets" in log
    assert "Crashed reason=RuntimeError('injected" not in log, "the agent crashed instead of recovering"
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/ready", timeout=2) as r:
        assert r.status == 200

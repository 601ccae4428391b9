"""A state disk that refuses writes, for real: a worker with RocksDB sessions whose file-size limit
(``RLIMIT_FSIZE``, set on the running process with ``prlimit``) is lowered mid-stream below what
any RocksDB write needs, then lifted.

While the limit holds, every write-ahead-log append fails (``File too large``) and so does every
reopen of the database (it must write an options file): the worker must stall, say so on
``/ready`` (503, with the reason) and in ``shopstream_state_store_failing``, and dead-letter
nothing because of it. Once lifted it goes on: every valid event is in a recommendation *and* in
its shopper's session (the changelog's latest value per key), every malformed message is
dead-lettered with its reason. CPython ignores SIGXFSZ, so a write past the limit fails with EFBIG
instead of killing the worker.
"""
from __future__ import annotations

import json
import resource
import time
import urllib.error
import urllib.request

import orjson
import pytest

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

pytest.importorskip("rocksdict")

REASON = "shopstream.dead-letter.reason"
FSIZE_LIMIT = 6000   # below the ~7.5 kB options file RocksDB writes at every open: no write succeeds


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _messages(catalog_products, n: int, users: int, start: int = 0):
    """(key, value, event_id or None, malformed reason or None): one in ten malformed."""
    pids = [p.id for p in catalog_products[:100]]
    out = []
    for i in range(start, start + n):
        user = f"disk-u{i % users}"
        if i % 10 == 9:
            bad = [(b'{"event_id": "bad%d", broken' % i, "not_json"),
                   (orjson.dumps({"event_id": f"bad{i}", "type": "view", "user_id": user}), "missing_field")][i % 20 == 19]
            out.append((user.encode(), bad[0], None, bad[1]))
            continue
        ev = event(i, user, ("view", "click", "add_to_cart")[i % 3], item=pids[i % len(pids)])
        key, value = keyed(ev)
        out.append((key, value, ev["event_id"], None))
    return out


def test_failing_state_disk_stalls_then_loses_nothing(settings_factory, worker_factory, catalog_products):
    from stream.core import session_state
    from stream.ops.topics import changelog_topic

    settings = settings_factory(partitions=2, store="rocksdb")
    proc = worker_factory(settings, extra_env={"SHOPSTREAM_STORE": "rocksdb", "SHOPSTREAM_LOG_LEVEL": "WARNING"})
    users = 30
    before = _messages(catalog_products, 100, users)
    after = _messages(catalog_products, 200, users, start=100)
    everything = before + after
    valid = {eid: key for key, _, eid, _ in everything if eid}
    malformed = {value: why for _, value, _, why in everything if why}

    def reflected(msgs):
        return {e for r in recs_of(msgs) for e in r["event_ids"]}

    # a healthy start: the sessions databases are open and hold data
    run(produce_raw(settings, [(k, v) for k, v, _, _ in before]))
    first = {eid for _, _, eid, _ in before if eid}
    run(read_topic(settings, settings.recommendations_topic, until=lambda m: first <= reflected(m), timeout=90))

    soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (FSIZE_LIMIT, hard))
    try:
        run(produce_raw(settings, [(k, v) for k, v, _, _ in after]))
        deadline = time.monotonic() + 60
        status, body = _get(settings.web_port, "/ready")
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status, body = _get(settings.web_port, "/ready")
        assert status == 503, "the store refuses every write, yet /ready answered 200 for 60 s"
        ready = json.loads(body)
        assert ready["state_store_ok"] is False
        assert "File too large" in ready["reasons"]["state_store_ok"], ready
        assert "sessions store failing on partition" in ready["reasons"]["state_store_ok"], ready
        _, metrics = _get(settings.web_port, "/metrics")
        failing = [ln for ln in metrics.decode().splitlines()
                   if ln.startswith("shopstream_state_store_failing{") and ln.endswith(" 1.0")]
        assert failing and 'store="sessions"' in failing[0], failing
        time.sleep(3)      # still stalled: the store keeps failing, reopened or not
        status, body = _get(settings.web_port, "/ready")
        assert status == 503 and not json.loads(body)["state_store_ok"]
        stalled_dlq = run(read_topic(settings, settings.dead_letter_topic, until=lambda m: False, timeout=2))
        blamed = [m for m in stalled_dlq if m.value not in malformed]
        assert not blamed, f"{len(blamed)} message(s) dead-lettered because the store failed: " \
                           f"{[dict(m.headers).get(REASON) for m in blamed][:5]}"
    finally:
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (soft, hard))

    def settled(recs, dlq):
        return set(valid) <= reflected(recs) and set(malformed) <= {m.value for m in dlq}

    recs = run(read_topic(settings, settings.recommendations_topic, until=lambda m: set(valid) <= reflected(m),
                          timeout=90))
    dlq = run(read_topic(settings, settings.dead_letter_topic,
                         until=lambda m: set(malformed) <= {x.value for x in m}, timeout=30))
    assert settled(recs, dlq), (f"{len(set(valid) - reflected(recs))} valid event(s) in no recommendation, "
                                f"{len(set(malformed) - {m.value for m in dlq})} malformed not dead-lettered")
    for m in dlq:
        assert m.value in malformed, f"a valid event was dead-lettered: {dict(m.headers).get(REASON)}"
        assert dict(m.headers)[REASON].decode() == malformed[m.value]

    def sessions_hold_all(msgs):
        latest = {}
        for m in msgs:
            latest[m.key] = m.value
        seen = {k: set((session_state.loads(v) or {}).get("seen", [])) for k, v in latest.items() if v}
        return not [eid for eid, key in valid.items() if eid not in seen.get(key, ())]

    changelog = run(read_topic(settings, changelog_topic(settings), until=sessions_hold_all, timeout=30))
    assert sessions_hold_all(changelog), "valid events missing from their shopper's session in the changelog"
    status, body = _get(settings.web_port, "/ready")
    assert status == 200, body

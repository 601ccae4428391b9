"""Sessions on disk (RocksDB): restarts read only the changelog tail, standbys keep takeovers warm,
erasure and expiry go through the store.

Real worker processes on the real broker; the worker logs one line per recovery with the changelog
records it read (``stream.live.session_store.RecoveryCounter``), which these tests read.
"""
from __future__ import annotations

import os
import re
import signal
import time

import orjson
import pytest

from stream.clients import request_forget
from stream.ops.topics import changelog_topic
from stream.tools.demo import stop_process, wait_ready
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

RECOVERED = re.compile(r"sessions recovered: (\d+) changelog records, (\d+) bytes")


def _recoveries(proc) -> list[int]:
    return [int(m.group(1)) for m in RECOVERED.finditer(proc.log_path.read_text())]


def _wait_recovery(proc, count: int = 1, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _recoveries(proc)
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no recovery logged by {proc.log_path}")


def _wait_reflected(settings, wanted: set[str], timeout: float = 120.0) -> list[dict]:
    msgs = run(read_topic(settings, settings.recommendations_topic, timeout=timeout,
                          until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= wanted))
    recs = recs_of(msgs)
    assert {i for r in recs for i in r["event_ids"]} >= wanted, "events never reflected"
    return recs


def _changelog(settings, until, timeout: float = 30.0) -> list:
    return run(read_topic(settings, changelog_topic(settings), until=until, timeout=timeout))


def _pair(index_snapshot, n: int) -> tuple[str, str]:
    """A product Y and its nearest neighbour X: buying X keeps X out of Y's recommendations."""
    from index import load_snapshot

    index = load_snapshot(index_snapshot)
    y = list(index.products)[n]
    x = next(c.product_id for c in index.search(index.vectors_of([y]), 3)[0] if c.product_id != y)
    return x, y


def _ids(rec: dict) -> list[str]:
    return [i["product_id"] for i in rec["items"]]


def test_the_default_store_is_rocksdb_on_disk(settings_factory):
    from stream.live.session_store import faust_store_options, session_table_options, store_kind

    settings = settings_factory()
    assert store_kind(settings) == "rocksdb"
    opts = faust_store_options(settings)
    assert opts["store"] == "rocksdb://" and opts["table_standby_replicas"] == 1
    assert str(settings.data_dir) in opts["tabledir"]
    assert session_table_options(settings)["options"]["driver"] == "rocksdict"
    assert store_kind(settings.replace(store="memory")) == "memory"


@pytest.mark.slow
def test_restart_uses_state_on_disk_and_replays_only_the_changelog_tail(settings_factory, worker_factory,
                                                                        index_snapshot, catalog_products):
    settings = settings_factory()
    x, y = _pair(index_snapshot, 42)
    worker = worker_factory(settings)
    assert _wait_recovery(worker) == [0]
    fill = [event(100 + i, f"u-{i}", "view", item=catalog_products[i].id) for i in range(40)]
    fill.append(event(1, "u-buyer", "purchase", item=x))
    run(produce_raw(settings, [keyed(e) for e in fill]))
    _wait_reflected(settings, {e["event_id"] for e in fill})
    stop_process(worker)                                     # graceful
    assert list((settings.data_dir / "state" / settings.app_id / "worker-0").glob("sessions-*.db"))

    # while it is down, another writer appends to the changelog: a purchase of X by u-tail
    tail = event(2, "u-tail", "purchase", item=x)
    state = {"v": 1, "session_id": "s-u-tail", "started": tail["ts"] / 1000, "last": tail["ts"] / 1000,
             "items": [[x, "purchase", tail["ts"] / 1000]], "queries": [], "purchased": [x], "cart": [],
             "counts": {"purchase": 1}, "expired_sessions": 0, "seen": ["e2"], "seen_at": time.time()}
    run(produce_raw(settings, [(b"u-tail", orjson.dumps(state))], topic=changelog_topic(settings)))
    total = len(_changelog(settings, until=lambda m: any(r.key == b"u-tail" for r in m)))

    restarted = worker_factory(settings)
    read = _wait_recovery(restarted)[0]
    assert 1 <= read <= settings.partitions + 1 < total, f"read {read} of {total} changelog records"
    later = [event(3, "u-buyer", "view", item=y), event(4, "u-tail", "view", item=y),
             event(5, "u-new", "view", item=y)]
    run(produce_raw(settings, [keyed(e) for e in later]))
    recs = {r["user_id"]: r for r in _wait_reflected(settings, {"e3", "e4", "e5"}) if r["user_id"] in
            ("u-buyer", "u-tail", "u-new")}
    assert x in _ids(recs["u-new"]), "control: X is recommended to a new shopper"
    assert x not in _ids(recs["u-buyer"]), "the session on disk survived the restart"
    assert x not in _ids(recs["u-tail"]), "the changelog tail was replayed"


@pytest.mark.slow
def test_kill_9_then_restart_keeps_sessions_and_erasures(settings_factory, worker_factory, index_snapshot,
                                                         catalog_products):
    settings = settings_factory()
    x, y = _pair(index_snapshot, 77)
    worker = worker_factory(settings)
    evs = [event(100 + i, f"u-{i}", "click", item=catalog_products[i].id) for i in range(40)]
    evs += [event(1, "u-keep", "purchase", item=x), event(2, "u-gone", "purchase", item=x)]
    run(produce_raw(settings, [keyed(e) for e in evs]))
    _wait_reflected(settings, {e["event_id"] for e in evs})
    run(request_forget(settings, "u-gone"))
    _changelog(settings, until=lambda m: any(r.key == b"u-gone" and r.value is None for r in m))
    total = len(_changelog(settings, until=lambda m: False, timeout=3))

    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    restarted = worker_factory(settings)
    read = _wait_recovery(restarted)[0]
    assert read < total, f"read {read} of {total} changelog records: the state on disk was not used"
    run(produce_raw(settings, [keyed(event(3, "u-keep", "view", item=y)),
                               keyed(event(4, "u-gone", "view", item=y))]))
    recs = {r["user_id"]: r for r in _wait_reflected(settings, {"e3", "e4"}) if r["user_id"] in ("u-keep", "u-gone")}
    assert x not in _ids(recs["u-keep"]), "the session survived kill -9"
    assert x in _ids(recs["u-gone"]) and recs["u-gone"]["event_ids"] == ["e4"], "the erasure survived kill -9"


@pytest.mark.slow
def test_idle_sessions_expire_through_the_store(settings_factory, worker_factory, index_snapshot):
    settings = settings_factory()
    x, y = _pair(index_snapshot, 99)
    worker = worker_factory(settings, extra_env={"SHOPSTREAM_SESSION_RETENTION_S": "2",
                                                 "SHOPSTREAM_SESSION_SWEEP_INTERVAL_S": "1"})
    run(produce_raw(settings, [keyed(event(1, "u-idle", "purchase", item=x))]))
    _wait_reflected(settings, {"e1"})
    log = _changelog(settings, until=lambda m: any(r.key == b"u-idle" and r.value is None for r in m))
    assert any(r.key == b"u-idle" and r.value is None for r in log), "the sweep wrote a tombstone"
    assert "expired 1 idle session" in worker.log_path.read_text()
    stop_process(worker)
    worker_factory(settings)                                 # the deletion is on disk too
    run(produce_raw(settings, [keyed(event(2, "u-idle", "view", item=y))]))
    rec = next(r for r in _wait_reflected(settings, {"e2"}) if "e2" in r["event_ids"])
    assert rec["event_ids"] == ["e2"] and x in _ids(rec), "the expired session did not come back"


@pytest.mark.slow
def test_standby_replica_makes_a_takeover_read_only_the_tail(settings_factory, worker_factory,
                                                             catalog_products):
    settings = settings_factory(partitions=4, session_timeout_s=6.0)
    env = {"SHOPSTREAM_SESSION_TIMEOUT_S": "6", "SHOPSTREAM_TABLE_STANDBY_REPLICAS": "1"}
    a = worker_factory(settings, extra_env=env, name="a")
    b_settings = settings.replace(web_port=__import__("stream.tools.broker", fromlist=["free_port"]).free_port())
    b = worker_factory(b_settings, extra_env=env, name="b")       # same data dir: its own state folder
    wait_ready(settings.web_port, a, timeout=120)
    wait_ready(b_settings.web_port, b, timeout=120)
    evs = [event(100 + i, f"u-{i}", "view", item=catalog_products[i % 50].id) for i in range(300)]
    run(produce_raw(settings, [keyed(e) for e in evs]))
    _wait_reflected(settings, {e["event_id"] for e in evs})
    total = len(_changelog(settings, until=lambda m: False, timeout=3))
    assert (settings.data_dir / "state" / settings.app_id / "worker-1").is_dir(), "b has its own state folder"
    time.sleep(2.0)                                               # standbys catch up (one fetch wait)
    before = len(_recoveries(b))

    os.killpg(a.pid, signal.SIGKILL)                              # b takes every partition
    a.wait()
    read = _wait_recovery(b, before + 1, timeout=120)[before:]
    assert sum(read) < total / 4, f"b read {read} of {total} changelog records taking over"
    more = [event(1000 + i, f"u-{i}", "click", item=catalog_products[i % 50].id) for i in range(300)]
    run(produce_raw(settings, [keyed(e) for e in more]))
    recs = _wait_reflected(settings, {e["event_id"] for e in more}, timeout=180)
    last = {}
    for r in recs:
        last[r["user_id"]] = r
    assert all(len(set(last[f"u-{i}"]["event_ids"])) >= 1 for i in range(300))
    # every session kept its first event: the changelog's last state of each user holds both
    states = {}
    for m in _changelog(settings, until=lambda m: False, timeout=5):
        states[m.key.decode()] = orjson.loads(m.value) if m.value is not None else None
    lost = [u for u in (f"u-{i}" for i in range(300)) if states[u] is None or len(states[u]["seen"]) != 2]
    assert not lost, f"{len(lost)} sessions lost their first event in the takeover"

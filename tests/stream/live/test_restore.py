"""A worker with an empty state folder restores its sessions from the changelog in bulk.

Real worker processes on the real broker; the tables compared are the RocksDB databases the
workers leave on disk, read key by key after they stop (Faust's changelog offset key aside).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import urllib.request

import orjson
import pytest

from stream.clients import request_forget
from stream.ops.topics import changelog_topic, ensure_topics
from stream.tools.demo import stop_process
from tests.conftest import run
from tests.kafka_io import read_topic

BULK = {"SHOPSTREAM_RESTORE_BULK_MIN_RECORDS": "1000"}
OFFSET_KEY = b"__faust\0offset__"


def _state(user: str, seen_at: float) -> bytes:
    now = time.time()
    return orjson.dumps({"v": 1, "session_id": f"s-{user}", "started": now, "last": now,
                         "items": [["p-1", "view", now], ["p-2", "click", now]], "queries": [], "purchased": [],
                         "cart": [], "counts": {"view": 1, "click": 1}, "expired_sessions": 0,
                         "seen": [f"{user}-1", f"{user}-2"] * 8, "seen_at": seen_at})


async def _write(settings, records: list[tuple[bytes, bytes | None]]) -> None:
    """``records`` into the sessions changelog, in order, each on its key's partition."""
    from aiokafka import AIOKafkaProducer

    from stream.core.partitioner import partition_for

    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20,
                                max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    try:
        pending = []
        for key, value in records:
            p = partition_for(settings.partitioner, key, settings.partitions)
            pending.append(await producer.send(changelog_topic(settings), value, key=key, partition=p))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _latest(records: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    table: dict[bytes, bytes] = {}
    for key, value in records:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def _state_dir(settings):
    return settings.data_dir / "state" / settings.app_id / "worker-0"


def _table_on_disk(settings) -> dict[bytes, bytes]:
    import rocksdict

    table: dict[bytes, bytes] = {}
    for p in range(settings.partitions):
        db = rocksdict.Rdict(str(_state_dir(settings) / f"sessions-{p}.db"),
                             options=rocksdict.Options(raw_mode=True))
        try:
            table.update((k, v) for k, v in db.items() if k != OFFSET_KEY)
        finally:
            db.close()
    return table


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _changelog_has(settings, wanted: set[bytes], timeout: float = 60.0) -> None:
    def done(msgs) -> bool:
        return wanted <= {m.key for m in msgs if m.value is None}

    msgs = run(read_topic(settings, changelog_topic(settings), until=done, timeout=timeout))
    assert done(msgs), f"tombstones missing from the changelog: {wanted - {m.key for m in msgs if m.value is None}}"


@pytest.mark.slow
def test_an_empty_disk_restores_the_table_key_by_key_after_forgets_and_expiries(settings_factory, worker_factory):
    settings = settings_factory()
    now = time.time()
    n = 6000
    records: list[tuple[bytes, bytes | None]] = []
    for i in range(n):
        old = i % 10 == 3                                   # idle for ten days: the sweep expires it
        records.append((f"u-{i}".encode(), _state(f"u-{i}", now - 10 * 86400 if old else now)))
    for i in range(0, n, 7):
        records.append((f"u-{i}".encode(), None))           # forgotten (a tombstone in the changelog)
    for i in range(0, n, 21):
        records.append((f"u-{i}".encode(), _state(f"u-{i}", now)))   # ... and back with a new session
    run(_write(settings, records))
    expired = {k for k, v in _latest(records).items() if orjson.loads(v)["seen_at"] < now - 86400}
    assert expired

    a = worker_factory(settings, extra_env={**BULK, "SHOPSTREAM_SESSION_RETENTION_S": "86400",
                                            "SHOPSTREAM_SESSION_SWEEP_INTERVAL_S": "1"})
    assert "restored in bulk" in a.log_path.read_text()
    run(request_forget(settings, "u-1"))                   # erasures by the worker itself
    run(request_forget(settings, "u-2"))
    _changelog_has(settings, expired | {b"u-1", b"u-2"})
    stop_process(a)
    before = _table_on_disk(settings)
    wanted = _latest(records)
    for key in expired | {b"u-1", b"u-2"}:
        wanted.pop(key, None)
    assert before == wanted, "the worker's table is the changelog's latest value of each key"

    shutil.rmtree(_state_dir(settings))                    # a new host: nothing on disk
    b = worker_factory(settings, extra_env=BULK)
    status, body = _get(settings.web_port, "/ready")
    progress = json.loads(body)["restore"]
    assert status == 200 and len(progress) == settings.partitions
    assert all(p["done"] == p["total"] > 1000 for p in progress.values()), progress
    status, metrics = _get(settings.web_port, "/metrics")
    assert status == 200 and b"shopstream_restore_records_done{partition=" in metrics
    log = b.log_path.read_text()
    assert log.count("restored in bulk") == settings.partitions
    stop_process(b)
    after = _table_on_disk(settings)
    assert after.keys() == before.keys(), (f"{len(before.keys() - after.keys())} lost, "
                                           f"{len(after.keys() - before.keys())} resurrected")
    assert after == before, "every session restored with its value"
    assert not list(_state_dir(settings).glob("*.restoring"))


@pytest.mark.slow
def test_a_sigkill_in_the_middle_of_a_restore_then_a_restart_restores_everything(settings_factory,
                                                                                 worker_factory):
    settings = settings_factory()
    now = time.time()
    n = 60_000
    records: list[tuple[bytes, bytes | None]] = [(f"k-{i}".encode(), _state(f"k-{i}", now)) for i in range(n)]
    records += [(f"k-{i}".encode(), None) for i in range(0, n, 5)]
    run(_write(settings, records))
    wanted = _latest(records)

    worker = worker_factory(settings, wait=False, extra_env=BULK)
    deadline = time.monotonic() + 120
    partial = None
    while partial is None and time.monotonic() < deadline and worker.poll() is None:
        try:
            status, body = _get(settings.web_port, "/ready")
            progress = json.loads(body).get("restore") or {}
        except (OSError, ValueError):
            progress = {}
        if any(0 < p["done"] < p["total"] for p in progress.values()):
            partial = progress
        time.sleep(0.02)
    assert partial is not None, "no restore in progress was seen"
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    markers = list(_state_dir(settings).glob("*.restoring"))
    assert markers, f"killed mid-restore ({partial}), the restoring markers are on disk"

    restarted = worker_factory(settings, extra_env=BULK)
    log = restarted.log_path.read_text()
    assert "was being restored when its worker stopped" in log
    stop_process(restarted)
    after = _table_on_disk(settings)
    assert after.keys() == wanted.keys(), (f"{len(wanted.keys() - after.keys())} lost, "
                                           f"{len(after.keys() - wanted.keys())} resurrected")
    assert after == wanted
    assert not list(_state_dir(settings).glob("*.restoring"))

"""Restart benchmark: N sessions in a real worker, then graceful and SIGKILL restarts, per store.

For each store (memory, RocksDB) the run

1. fills N sessions: through the worker (one event per shopper, every shopper distinct: the worst
   case for table writes) when N is at most ``worker_fill_max``; beyond that it writes the session
   states straight to the changelog (what the worker would have written) and lets a first worker
   load them, since on a small machine the worker would take longer than the benchmark should;
2. starts a worker and stops it with SIGTERM, then starts it again and times start -> ``/ready``;
3. kills that worker with SIGKILL and times the next start -> ``/ready`` the same way.

When the fill writes the changelog directly, the first start is an **empty-disk restore** (a new
host: no state folder): its recovery time and records/s are reported on their own
(``empty_disk``), and ``restarts=False`` stops the run there.

For each start it reports seconds to ready, the changelog records and bytes the worker read to
recover (its own log line, ``stream.live.session_store.RecoveryCounter``), and the worker's peak
resident memory until ready (psutil).
"""
from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stream.settings import Settings

RECOVERED = re.compile(r"sessions recovered: (\d+) changelog records, (\d+) bytes read in ([\d.]+) s")
STORES = ("memory", "rocksdb")


class PeakRss:
    """Peak resident memory of a process, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.last = self._proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, self.last)
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _recovered(log_path: Path, skip: int) -> tuple[int, int, float] | None:
    found = RECOVERED.findall(log_path.read_text(errors="replace"))
    if len(found) <= skip:
        return None
    records, nbytes, secs = found[skip]
    return int(records), int(nbytes), float(secs)


def _worker_env(settings: Settings, store: str) -> dict[str, str]:
    return {"SHOPSTREAM_EVENTS_TOPIC": settings.events_topic,
            "SHOPSTREAM_RECOMMENDATIONS_TOPIC": settings.recommendations_topic,
            "SHOPSTREAM_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
            "SHOPSTREAM_CATALOG_TOPIC": settings.catalog_topic,
            "SHOPSTREAM_STORE": store,
            "SHOPSTREAM_SESSION_SWEEP_INTERVAL_S": "86400"}


def _start(settings: Settings, store: str, log_path: Path, timeout: float) -> dict[str, Any]:
    """Start a worker; time it to ``/ready``; its recovery figures and peak RSS until then."""
    from stream.tools.demo import start_worker_process, wait_ready

    skip = len(RECOVERED.findall(log_path.read_text(errors="replace"))) if log_path.exists() else 0
    t0 = time.monotonic()
    proc = start_worker_process(settings, log_path, extra_env=_worker_env(settings, store))
    rss = PeakRss(proc.pid)
    wait_ready(settings.web_port, proc, timeout=timeout)
    ready_s = time.monotonic() - t0
    deadline = time.monotonic() + 10
    rec = _recovered(log_path, skip)
    while rec is None and time.monotonic() < deadline:
        time.sleep(0.1)
        rec = _recovered(log_path, skip)
    time.sleep(1.0)                      # memory just after ready: the recovered table is in place
    peak = rss.stop()
    records, nbytes, recover_s = rec or (None, None, None)
    return {"proc": proc, "ready_s": round(ready_s, 2), "records_read": records, "bytes_read": nbytes,
            "recover_s": recover_s, "rss_mb": round(peak / 2**20, 1)}


def _kill9(proc) -> None:
    import os
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


async def _changelog_size(settings: Settings) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream.live.faust_compat import checked_end_offsets
    from stream.ops.topics import changelog_topic

    c = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                         **settings.kafka_client_options())
    await c.start()
    try:
        tps = [TopicPartition(changelog_topic(settings), p) for p in range(settings.partitions)]
        ends = await checked_end_offsets(settings, await c.end_offsets(tps))
    finally:
        await c.stop()
    return sum(ends.values())


def _session(user: str, partition: int, pids: list[str], i: int, now: float) -> dict:
    a, b = pids[i % len(pids)], pids[(i * 7 + 3) % len(pids)]
    return {"v": 1, "session_id": f"s-{user}", "started": now, "last": now,
            "items": [[a, "view", now], [b, "click", now]], "queries": [], "purchased": [], "cart": [],
            "counts": {"view": 1, "click": 1}, "expired_sessions": 0,
            "seen": [f"{user}-1", f"{user}-2"], "p": partition, "seen_at": now}


async def _write_changelog(settings: Settings, n: int, pids: list[str], run_id: str) -> float:
    """``n`` session states straight into the changelog, on the partition of each key."""
    import orjson
    from aiokafka import AIOKafkaProducer
    from stream.core.partitioner import partition_for
    from stream.ops.topics import changelog_topic

    topic = changelog_topic(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20,
                                max_batch_size=1 << 20, max_request_size=8 << 20, acks=1,
                                **settings.kafka_client_options())
    await producer.start()
    t0 = time.monotonic()
    now = time.time()
    try:
        pending = []
        for i in range(n):
            user = f"r{run_id}-{i}"
            key = user.encode()
            p = partition_for(settings.partitioner, key, settings.partitions)
            pending.append(await producer.send(topic, orjson.dumps(_session(user, p, pids, i, now)),
                                               key=key, partition=p))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - t0


async def _fill_through_worker(settings: Settings, n: int, pids: list[str], run_id: str,
                               timeout: float) -> dict[str, Any]:
    """One event for each of ``n`` distinct shoppers; seconds until all their sessions are written."""
    import orjson
    from aiokafka import AIOKafkaProducer

    from stream.core.partitioner import aiokafka_partitioner

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5,
                                max_batch_size=1 << 18, partitioner=aiokafka_partitioner(settings.partitioner),
                                **settings.kafka_client_options())
    await producer.start()
    t0 = time.monotonic()
    try:
        pending = []
        for i in range(n):
            user = f"w{run_id}-{i}"
            ev = {"event_id": f"{user}-1", "type": "view", "user_id": user, "session_id": f"s-{user}",
                  "item_id": pids[i % len(pids)], "ts": int(time.time() * 1000)}
            pending.append(await producer.send(settings.events_topic, orjson.dumps(ev), key=user.encode()))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    sent_s = time.monotonic() - t0
    deadline = time.monotonic() + timeout
    while (have := await _changelog_size(settings)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker wrote {have} of {n} sessions within {timeout:.0f} s")
        await asyncio.sleep(0.5)
    elapsed = time.monotonic() - t0
    return {"events": n, "send_s": round(sent_s, 2), "elapsed_s": round(elapsed, 2),
            "events_per_second": round(n / elapsed, 1)}


def _dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1) if path.exists() else 0.0


def _empty_disk(first: dict[str, Any]) -> dict[str, Any]:
    """The first start's restore from an empty state folder: seconds, records/s, ready, RSS."""
    records, secs = first["records_read"], first["recover_s"]
    return {"records": records, "restore_s": secs, "ready_s": first["ready_s"], "rss_mb": first["rss_mb"],
            "records_per_second": round(records / secs, 1) if records and secs else None}


def bench_store(base: Settings, store: str, n: int, *, worker_fill_max: int, pids: list[str],
                ready_timeout: float, log_dir: Path, progress, restarts: bool = True) -> dict[str, Any]:
    from stream.live.session_store import state_root
    from stream.ops.topics import ensure_topics
    from stream.tools.broker import free_port
    from stream.tools.demo import stop_process

    run_id = uuid.uuid4().hex[:6]
    settings = base.replace(app_id=f"rb-{run_id}-{store}", events_topic=f"rb-events-{run_id}",
                            recommendations_topic=f"rb-recs-{run_id}", dead_letter_topic=f"rb-dlq-{run_id}",
                            catalog_topic=f"rb-catalog-{run_id}", web_port=free_port())
    asyncio.run(ensure_topics(settings))
    log_path = log_dir / f"bench-recovery-{run_id}-{store}.log"
    out: dict[str, Any] = {"store": store, "sessions": n}
    proc = None
    try:
        if n <= worker_fill_max:
            progress(f"[{store}] filling {n} sessions through the worker ...")
            first = _start(settings, store, log_path, ready_timeout)
            proc = first["proc"]
            out["fill"] = {"how": "through the worker, one event per distinct shopper",
                           **asyncio.run(_fill_through_worker(settings, n, pids, run_id, timeout=max(600, n / 50)))}
        else:
            progress(f"[{store}] writing {n} sessions to the changelog ...")
            secs = asyncio.run(_write_changelog(settings, n, pids, run_id))
            progress(f"[{store}] ... written in {secs:.1f} s; first worker loads them ...")
            first = _start(settings, store, log_path, ready_timeout)
            proc = first["proc"]
            out["fill"] = {"how": "session states written to the changelog directly, loaded by a first start",
                           "write_s": round(secs, 2), "first_start": {k: v for k, v in first.items() if k != "proc"}}
            out["empty_disk"] = _empty_disk(first)
        out["changelog_records"] = asyncio.run(_changelog_size(settings))
        if not restarts:
            return out
        stop_process(proc, timeout=60)                           # graceful
        progress(f"[{store}] restart after a graceful stop ...")
        graceful = _start(settings, store, log_path, ready_timeout)
        proc = graceful.pop("proc")
        out["graceful"] = graceful
        _kill9(proc)                                             # SIGKILL while serving
        progress(f"[{store}] restart after SIGKILL ...")
        killed = _start(settings, store, log_path, ready_timeout)
        proc = killed.pop("proc")
        out["sigkill"] = killed
        if store == "rocksdb":
            out["state_on_disk_mb"] = _dir_mb(state_root(settings))
        return out
    finally:
        stop_process(proc, timeout=60)
        if store == "rocksdb":
            shutil.rmtree(state_root(settings), ignore_errors=True)


def run_recovery_bench(*, sessions: int, stores: tuple[str, ...] = STORES, partitions: int = 4,
                       worker_fill_max: int = 20_000, broker: str | None = None,
                       data_dir: Path | None = None, ready_timeout: float | None = None,
                       restarts: bool = True, progress=lambda line: None) -> dict[str, Any]:
    from index import load_snapshot
    from stream.tools.bench_e2e import _machine
    from stream.tools.bootstrap import prepare_local
    from stream.tools.broker import EmbeddedBroker

    data_dir = data_dir or Path("var")
    ready_timeout = ready_timeout or max(900.0, sessions / 400)   # a full replay of the changelog
    embedded = None
    try:
        if broker is None:
            embedded = EmbeddedBroker(log_file=data_dir / "logs" / "bench-broker.log").start()
            broker = embedded.bootstrap
        base = prepare_local(Settings.from_env(broker=broker, data_dir=data_dir, partitions=partitions))
        pids = list(load_snapshot(base.resolved_index_path).products)
        results = [bench_store(base, store, sessions, worker_fill_max=worker_fill_max, pids=pids,
                               ready_timeout=ready_timeout, log_dir=data_dir / "logs", progress=progress,
                               restarts=restarts)
                   for store in stores]
        return {"machine": _machine(), "broker": "embedded tansu" if embedded else broker,
                "partitions": partitions, "sessions": sessions, "results": results}
    finally:
        if embedded is not None:
            embedded.stop()


def render(r: dict) -> str:
    lines = [f"machine   {r['machine']}  (broker: {r['broker']}, {r['partitions']} partitions, "
             f"{r['sessions']} sessions)"]
    for s in r["results"]:
        fill = s["fill"]
        if "events_per_second" in fill:
            lines.append(f"[{s['store']}] fill: {fill['how']}: {fill['events_per_second']} events/s "
                         f"({fill['elapsed_s']} s)")
        else:
            fs = fill["first_start"]
            lines.append(f"[{s['store']}] fill: {fill['how']}: written in {fill['write_s']} s, "
                         f"first start ready in {fs['ready_s']} s")
        lines.append(f"[{s['store']}] changelog: {s['changelog_records']} records"
                     + (f"; state on disk {s['state_on_disk_mb']} MB" if "state_on_disk_mb" in s else ""))
        if "empty_disk" in s:
            e = s["empty_disk"]
            lines.append(f"[{s['store']}] empty-disk restore: {e['records']} records in {e['restore_s']} s "
                         f"({e['records_per_second']} records/s); ready in {e['ready_s']} s; peak RSS {e['rss_mb']} MB")
        for kind in ("graceful", "sigkill"):
            if kind not in s:
                continue
            m = s[kind]
            mb = "?" if m["bytes_read"] is None else f"{m['bytes_read'] / 2**20:.1f} MB"
            lines.append(f"[{s['store']}] restart after {kind:8}  ready in {m['ready_s']:>7} s   "
                         f"changelog read: {m['records_read']} records, {mb}   peak RSS {m['rss_mb']} MB")
    return "\n".join(lines)

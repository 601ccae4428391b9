"""A clean stop (SIGTERM) mid-stream: what was processed is committed, nothing crashes, and the
restarted worker publishes no recommendation twice."""
from __future__ import annotations

import asyncio
import collections
import os
import signal
import time

from stream.tools.demo import stop_process
from tests.conftest import run
from tests.kafka_io import event, keyed, read_topic, recs_of

EVENTS = 2000
USERS = 60
RATE = 800.0                 # events/s: faster than a loaded worker takes them, so a batch is in flight at SIGTERM


async def _stream(settings, items: list[str], stop_after: int, started: asyncio.Event) -> list[str]:
    from aiokafka import AIOKafkaProducer

    from stream.ops.topics import ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    await producer.start()
    ids = []
    try:
        t0 = time.monotonic()
        for n in range(stop_after):
            ev = event(n, f"u{n % USERS}", "view", item=items[n % len(items)])
            key, value = keyed(ev)
            await producer.send(settings.events_topic, value, key=key)
            ids.append(ev["event_id"])
            if n == 200:
                started.set()
            await asyncio.sleep(max(0.0, t0 + n / RATE - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()
    return ids


def _recs(settings, until, timeout: float = 120.0) -> list:
    return recs_of(run(read_topic(settings, settings.recommendations_topic, timeout=timeout, until=until)))


def test_sigterm_mid_stream_commits_and_restart_repeats_nothing(settings_factory, worker_factory,
                                                                catalog_products):
    settings = settings_factory()
    items = [p.id for p in catalog_products[:200]]
    worker = worker_factory(settings, name="first")

    async def first_run() -> list[str]:
        started = asyncio.Event()
        sender = asyncio.create_task(_stream(settings, items, EVENTS, started))
        await started.wait()
        await asyncio.sleep(1.0)                          # the worker is busy with the stream
        os.killpg(worker.pid, signal.SIGTERM)
        return await sender

    sent = run(first_run())
    code = worker.wait(60)
    first_log = worker.log_path.read_text()
    assert code == 0, f"the worker exited with {code} on SIGTERM:\n{first_log[-3000:]}"
    assert "Crashed" not in first_log, first_log[-5000:]
    assert "Traceback" not in first_log, first_log[-5000:]
    before = _recs(settings, lambda m: False, timeout=5.0)   # what the first worker published
    assert 0 < len({e for r in before for e in r["event_ids"]}) < EVENTS, "the stop came mid-stream"

    second = worker_factory(settings, name="second")
    want = set(sent)
    recs = _recs(settings, lambda m: {e for r in recs_of(m) for e in r["event_ids"]} >= want)
    stop_process(second)
    seen = collections.Counter(e for r in recs for e in r["event_ids"])
    assert set(seen) == want, f"{len(want - set(seen))} event(s) without a recommendation"
    twice = {e: n for e, n in seen.items() if n > 1}
    assert not twice, f"{len(twice)} event(s) recommended again after the restart: {sorted(twice)[:20]}"
    ids = collections.Counter(r["recommendation_id"] for r in recs)
    assert max(ids.values()) == 1
    assert all(r["items"] for r in recs)

"""End-to-end benchmark: real shopper behaviour through broker, worker and recommendations topic.

Latency of an event = arrival at a consumer of the first recommendation that lists it, minus the
event time (the producer stamps ``ts`` when it sends).
"""
from __future__ import annotations

import asyncio
import itertools
import os
import platform
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import orjson

from stream.settings import Settings


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"


def scripted_events(n: int, index, encoder, bad_share: float, run_id: str,
                    users: int | None = None) -> list[tuple[bytes, dict | bytes]]:
    """``n`` valid events of real Online Retail shoppers (WANDS searches with storefront results)
    plus malformed ones at ``bad_share``; values are dicts (stamped at send) or raw bad bytes.

    ``users``: the real shoppers are folded into this many (``users >= n``: every event its own
    shopper, the worst case for session writes); None keeps them as they are."""
    from stream.tools.replay_data import shopper_events

    search_results: dict[str, list[str]] = {}
    out: list[tuple[bytes, dict | bytes]] = []
    every = int(1 / bad_share) if bad_share else 0
    for i, se in enumerate(itertools.islice(shopper_events(known=set(index.products)), n), 1):
        user = se.user_id
        if users is not None:
            user = f"{run_id}-u{i}" if users >= n else f"{run_id}-u{zlib.crc32(user.encode()) % users}"
        ev = {"event_id": f"{run_id}-{i}", "type": se.type, "user_id": user, "session_id": f"s-{user}"}
        if se.item_id:
            ev["item_id"] = se.item_id
        else:
            ev["query"] = se.query
            if se.query not in search_results:
                search_results[se.query] = [c.product_id for c in index.search(encoder.encode([se.query]), 20)[0]]
            ev["results"] = search_results[se.query]
        out.append((user.encode(), ev))
        if every and i % every == 0:
            out.append((user.encode(), b'{"event_id": "broken'))
    return out


def _event_ids_of_recommendation(value: bytes) -> list[str]:
    return orjson.loads(value)["event_ids"]


def _event_id_of_copy(value: bytes) -> list[str]:
    try:
        return [orjson.loads(value)["event_id"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return []


async def _drive(settings: Settings, events, rate: float | None, progress: bool, *,
                 out_topic: str | None = None, ids_of=_event_ids_of_recommendation,
                 count_bad_on: str | None = "dead-letters") -> dict:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream.core.partitioner import aiokafka_partitioner

    valid = {v["event_id"] for _, v in events if isinstance(v, dict)}
    bad = sum(1 for _, v in events if not isinstance(v, dict))
    sent_at: dict[str, float] = {}
    latency: dict[str, float] = {}
    seen_other = 0
    dead = 0
    out_topic = out_topic or settings.recommendations_topic
    topics = [out_topic] + ([settings.dead_letter_topic] if count_bad_on else [])
    consumer = AIOKafkaConsumer(*topics,
                                bootstrap_servers=settings.bootstrap_servers, fetch_max_wait_ms=settings.fetch_max_wait_ms, group_id=None,
                                auto_offset_reset="latest", **settings.kafka_client_options())
    await consumer.start()
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5,
                                max_batch_size=262144, partitioner=aiokafka_partitioner(settings.partitioner),
                                **settings.kafka_client_options())
    await producer.start()
    await producer.partitions_for(settings.events_topic)   # not at the first timed send (it held ~0.5 s of events)
    done = asyncio.Event()
    last_arrival = [0.0]

    async def consume() -> None:
        nonlocal seen_other, dead
        while not done.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.time()
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.topic == settings.dead_letter_topic:
                        dead += 1
                        continue
                    for eid in ids_of(m.value):
                        if eid in sent_at and eid not in latency:
                            latency[eid] = now - sent_at[eid]
                        elif eid not in valid:
                            seen_other += 1
                    last_arrival[0] = now
            if len(latency) >= len(valid) and (dead >= bad or not count_bad_on):
                done.set()

    consumer_task = asyncio.create_task(consume())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(events), desc="events sent", unit="ev")
    t_start = time.time()
    interval = 1.0 / rate if rate else 0.0
    for i, (key, value) in enumerate(events):
        now = time.time()
        if rate:
            due = t_start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
                now = time.time()
        if isinstance(value, dict):
            value["ts"] = int(now * 1000)
            sent_at[value["event_id"]] = now
            raw = orjson.dumps(value)
        else:
            raw = value
        await producer.send(settings.events_topic, raw, key=key)
        if bar is not None and i % 500 == 0:
            bar.update(min(500, len(events) - bar.n))
    await producer.flush()
    t_sent = time.time()
    if bar is not None:
        bar.update(len(events) - bar.n)
        bar.close()
    try:
        await asyncio.wait_for(done.wait(), timeout=max(60.0, len(events) / 500))
    except asyncio.TimeoutError:
        pass
    done.set()
    await consumer_task
    await producer.stop()
    await consumer.stop()
    lat = np.array(list(latency.values())) * 1000 if latency else np.zeros(1)
    # the same without the first second: a new worker's first batches run cold (query cache, models)
    steady = np.array([v for e, v in latency.items() if sent_at[e] - t_start >= 1.0]) * 1000
    steady = steady if steady.size else np.zeros(1)
    elapsed = (last_arrival[0] or time.time()) - t_start
    return {
        "events_valid": len(valid), "events_malformed": bad,
        "offered_rate": rate, "send_seconds": round(t_sent - t_start, 3),
        "elapsed_seconds": round(elapsed, 3),
        "events_per_second": round(len(latency) / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p95": round(float(np.percentile(lat, 95)), 1),
                       "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(lat.max()), 1)},
        "latency_after_first_second_ms": {"p50": round(float(np.percentile(steady, 50)), 1),
                                          "p99": round(float(np.percentile(steady, 99)), 1),
                                          "max": round(float(steady.max()), 1)},
        "reflected": len(latency), "dead_lettered": dead, "missing": len(valid) - len(latency),
        "unexpected": seen_other,
    }


def measure_ceiling(settings: Settings, events, run_id: str, data_dir: Path) -> dict:
    """The same messages through the same broker and partitions, forwarded by a plain aiokafka
    consumer group in a process of its own: what shopstream's events/s is a fraction of."""
    import subprocess
    import sys

    from stream.ops.topics import TopicSpec, ensure_topics
    from stream.tools.demo import stop_process
    from stream.tools.processes import die_with_parent

    source, target = f"ceiling-in-{run_id}", f"ceiling-out-{run_id}"
    asyncio.run(ensure_topics(settings, [TopicSpec(source, settings.partitions),
                                         TopicSpec(target, settings.partitions)]))
    log = open(data_dir / "logs" / f"bench-forwarder-{run_id}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "stream.tools.forwarder", settings.bootstrap_servers[0],
                             source, target, f"ceiling-{run_id}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent)
    try:
        time.sleep(3.0)                 # joined its group before anything is sent
        valid_copies = [(k, dict(v)) if isinstance(v, dict) else (k, v) for k, v in events]
        return asyncio.run(_drive(settings.replace(events_topic=source), valid_copies, None, False,
                                  out_topic=target, ids_of=_event_id_of_copy, count_bad_on=None))
    finally:
        stop_process(proc)
        log.close()


def _wait_group_ready(ports: list[int], procs: list, settle_s: float = 2.0) -> None:
    """Every worker ready, and still ready ``settle_s`` later: a worker that joins the group after
    another answered ready rebalances it, and the events must not meet that rebalance."""
    from stream.tools.demo import wait_ready

    for _ in range(10):
        for port, proc in zip(ports, procs):
            wait_ready(port, proc, timeout=120)
        if len(ports) == 1:
            return
        time.sleep(settle_s)
        try:
            for port, proc in zip(ports, procs):
                wait_ready(port, proc, timeout=0.5)
            return
        except TimeoutError:
            continue


def run_e2e_bench(*, n_events: int, rate: float | None, users: int | None = None, bad_share: float = 0.01,
                  partitions: int = 4, broker: str | None = None, progress: bool = True,
                  data_dir: Path | None = None, with_ceiling: bool = True, workers: int = 1) -> dict:
    from index import load_snapshot
    from stream.live.services import load_text_encoder
    from stream.ops.topics import ensure_topics
    from stream.tools.bootstrap import prepare_local
    from stream.tools.broker import EmbeddedBroker, free_port
    from stream.tools.demo import start_worker_process, stop_process, wait_ready

    data_dir = data_dir or Path("var")
    embedded = None
    procs: list = []
    run_id = uuid.uuid4().hex[:8]
    try:
        if broker is None:
            embedded = EmbeddedBroker(log_file=data_dir / "logs" / "bench-broker.log").start()
            broker = embedded.bootstrap
        settings = Settings.from_env(broker=broker, data_dir=data_dir, partitions=partitions,
                                     app_id=f"bench-{run_id}", events_topic=f"bench-events-{run_id}",
                                     recommendations_topic=f"bench-recs-{run_id}",
                                     dead_letter_topic=f"bench-dlq-{run_id}", web_port=free_port())
        settings = prepare_local(settings)
        index = load_snapshot(settings.resolved_index_path)
        encoder = load_text_encoder(settings)
        events = scripted_events(n_events, index, encoder, bad_share, run_id, users)
        encoder.close()
        ceiling = measure_ceiling(settings, events, run_id, data_dir) if with_ceiling else None
        asyncio.run(ensure_topics(settings))
        ports = [settings.web_port] + [free_port() for _ in range(workers - 1)]
        for n, port in enumerate(ports):
            log_path = data_dir / "logs" / f"bench-worker-{run_id}-{n}.log"
            procs.append(start_worker_process(settings, log_path, extra_env={
                "SHOPSTREAM_WEB_PORT": str(port),
                "SHOPSTREAM_EVENTS_TOPIC": settings.events_topic,
                "SHOPSTREAM_RECOMMENDATIONS_TOPIC": settings.recommendations_topic,
                "SHOPSTREAM_DEAD_LETTER_TOPIC": settings.dead_letter_topic}))
        _wait_group_ready(ports, procs)
        result = asyncio.run(_drive(settings, events, rate, progress))
        if ceiling is not None:
            result["ceiling_events_per_second"] = ceiling["events_per_second"]
            result["ceiling_missing"] = ceiling["missing"]
            if ceiling["events_per_second"] and result["events_per_second"]:
                result["fraction_of_ceiling"] = round(result["events_per_second"] / ceiling["events_per_second"], 3)
        result.update(users=users, machine=_machine(), encoder_artifact=str(settings.encoder_artifact or ""),
                      session_encoder=str(settings.session_encoder), partitions=partitions, index_products=len(index),
                      batch_size=settings.batch_size, batch_wait_ms=settings.batch_wait_ms, workers=workers,
                      broker="embedded tansu" if embedded else broker)
        return result
    finally:
        for proc in procs:
            stop_process(proc)
        if embedded is not None:
            embedded.stop()


def render(r: dict) -> None:
    import click

    lat = r["latency_ms"]
    click.echo(f"machine            {r['machine']}  (broker: {r['broker']}, {r['partitions']} partitions, "
               f"{r.get('workers', 1)} worker(s), "
               f"{r['index_products']} products)")
    click.echo(f"offered load       {r['offered_rate'] or 'max'} events/s; sent in {r['send_seconds']} s")
    click.echo(f"sustained          {r['events_per_second']} events/s over {r['elapsed_seconds']} s")
    if r.get("ceiling_events_per_second"):
        click.echo(f"broker ceiling     {r['ceiling_events_per_second']} events/s (plain aiokafka group forwarding "
                   f"each message, same broker, partitions and messages): shopstream at "
                   f"{r.get('fraction_of_ceiling', 0):.0%} of it")
    click.echo(f"latency (ms)       p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
    st = r.get("latency_after_first_second_ms")
    if st:
        click.echo(f"  after 1st second p50 {st['p50']}  p99 {st['p99']}  max {st['max']}  (worker warm)")
    click.echo(f"events             {r['events_valid']} valid: {r['reflected']} reflected, {r['missing']} missing; "
               f"{r['events_malformed']} malformed: {r['dead_lettered']} dead-lettered; {r['unexpected']} unexpected")

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
from stream.tools.processes import CpuMeter


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


def _prepared(settings: Settings, events, partitions: int) -> list[tuple[bytes, int, bytes, str | None]]:
    """Each event as (key, partition, payload, event id): the payload serialised before any clock
    starts; a valid event's payload ends in ``"ts":`` and gets its send time (ms) and ``}`` at send."""
    from stream.core.partitioner import partition_for

    out = []
    for key, value in events:
        part = partition_for(settings.partitioner, key, partitions)
        if isinstance(value, dict):
            body = {k: v for k, v in value.items() if k != "ts"}
            out.append((key, part, orjson.dumps(body)[:-1] + b',"ts":', value["event_id"]))
        else:
            out.append((key, part, value, None))
    return out


def measure_core(settings: Settings, events, partitions: int) -> dict:
    """The pipeline core alone on the same messages: no broker, no Faust, no process boundary.

    In this process, with the worker's services and pipeline (``build_pipeline``), cut into the
    worker's full batches (``batch_size``), sessions in a dict, the start-up heap frozen as a worker
    freezes it (:mod:`stream.live.heap`); models and the query cache start cold, as a new worker's
    do. Its events/s is what one worker's batch thread could carry if taking, publishing and acking
    events cost nothing: the bound of the core, beside the broker's ceiling."""
    import gc

    from stream.core.dead_letters import Message
    from stream.live.app import build_pipeline
    from stream.live.services import load_services

    services = load_services(settings)
    try:
        pipeline = build_pipeline(settings, services)
        stamp = b"%d}" % int(time.time() * 1000)
        now = time.monotonic()
        messages = [Message(key, payload + stamp if eid is not None else payload, settings.events_topic, part,
                            offset, (), now)
                    for offset, (key, part, payload, eid) in enumerate(_prepared(settings, events, partitions))]
        store: dict[tuple[int, bytes], bytes] = {}

        def read(partition: int, key: bytes) -> bytes | None:
            return store.get((partition, key))

        gc.collect()
        gc.freeze()
        recommendations = dead = 0
        t0 = time.perf_counter()
        for start in range(0, len(messages), settings.batch_size):
            result = pipeline.process(messages[start:start + settings.batch_size], read)
            for w in result.state_writes:
                if w.value is None:
                    store.pop((w.partition, w.key), None)
                else:
                    store[(w.partition, w.key)] = w.value
            recommendations += len(result.recommendations)
            dead += len(result.dead_letters)
        elapsed = time.perf_counter() - t0
        gc.unfreeze()
    finally:
        services.encoder.close()
    return {"events_per_second": round(len(messages) / elapsed, 1), "seconds": round(elapsed, 3),
            "recommendations": recommendations, "dead_lettered": dead}


SEND_CHUNK = 1000      # events stamped with one send time and appended to the batches at once


async def _send_all(producer, topic: str, prepared, sent_at: dict[str, float], bar) -> None:
    """As fast as the broker takes them: events appended straight to one record batch per partition
    (no per-message send coroutine), each full batch handed over without waiting for its delivery;
    all deliveries awaited at the end."""
    builders: dict[int, object] = {}
    pending: list = []
    for start in range(0, len(prepared), SEND_CHUNK):
        now = time.time()
        stamp = b"%d}" % int(now * 1000)
        for key, part, payload, eid in prepared[start:start + SEND_CHUNK]:
            if eid is not None:
                payload += stamp
                sent_at[eid] = now
            builder = builders.get(part)
            if builder is None:
                builder = builders[part] = producer.create_batch()
            if builder.append(key=key, value=payload, timestamp=None) is None:
                pending.append(await producer.send_batch(builder, topic, partition=part))
                builder = builders[part] = producer.create_batch()
                builder.append(key=key, value=payload, timestamp=None)
        for part, builder in list(builders.items()):    # each chunk leaves at once, not at the end
            if builder.record_count():
                pending.append(await producer.send_batch(builder, topic, partition=part))
        builders.clear()
        if bar is not None:
            bar.update(min(SEND_CHUNK, len(prepared) - start))
        await asyncio.sleep(0)
    await asyncio.gather(*pending)


async def _send_at_rate(producer, topic: str, prepared, rate: float, sent_at: dict[str, float], bar) -> None:
    """One event at a time at ``rate`` events/s, each stamped as it is sent (the latency runs)."""
    t_start = time.time()
    interval = 1.0 / rate
    pending = []
    for i, (key, part, payload, eid) in enumerate(prepared):
        due = t_start + i * interval
        now = time.time()
        if due > now:
            await asyncio.sleep(due - now)
            now = time.time()
        if eid is not None:
            payload += b"%d}" % int(now * 1000)
            sent_at[eid] = now
        pending.append(await producer.send(topic, payload, key=key, partition=part))
        if bar is not None and i % 500 == 0:
            bar.update(min(500, len(prepared) - bar.n))
    await asyncio.gather(*pending)


async def _count_arrivals(settings: Settings, topic: str, expected: int, timeout_s: float) -> float | None:
    """When ``expected`` messages have reached ``topic`` (fresh, so its offsets start at 0): the
    time of the fetch that brought the last. Fetches read only record batch headers -- a batch's
    next offset -- not the records in them, so counting costs the driver next to nothing; the
    messages themselves are read once, after the clock stops."""
    from aiokafka import TopicPartition
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords

    client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    await client.bootstrap()
    try:
        await client.add_topic(topic)
        parts = sorted(client.cluster.partitions_for_topic(topic) or ())
        if not parts:
            raise RuntimeError(f"topic {topic} has no partitions the broker reports")
        position = {p: 0 for p in parts}
        by_node: dict[int, list[int]] = {}
        for p in parts:
            by_node.setdefault(client.cluster.leader_for_partition(TopicPartition(topic, p)), []).append(p)
        deadline = time.time() + timeout_s

        async def fetch(node: int, node_parts: list[int]) -> None:
            req = FetchRequest(settings.fetch_max_wait_ms, 1, 64 * 1048576, 0,
                               [(topic, [(p, position[p], 16 * 1048576) for p in node_parts])])
            response = await client.send(node, req)
            for _, partitions in response.topics:
                for partition, error_code, _highwater, *rest in partitions:
                    if error_code:                    # e.g. the topic's leader not elected yet: ask again
                        await asyncio.sleep(0.05)
                        continue
                    records = MemoryRecords(rest[-1] or b"")
                    while (batch := records.next_batch()) is not None:
                        position[partition] = max(position[partition], batch.next_offset)

        while time.time() < deadline:
            await asyncio.gather(*(fetch(node, ps) for node, ps in by_node.items()))
            if sum(position.values()) >= expected:
                return time.time()
        return None
    finally:
        await client.close()


async def _read_ids(settings: Settings, topic: str, expected: int) -> list[str]:
    """The event ids of the first ``expected`` messages of ``topic``, read from its start."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=settings.fetch_max_wait_ms,
                                max_partition_fetch_bytes=4 * 1048576, **settings.kafka_client_options())
    await consumer.start()
    ids: list[str] = []
    seen = 0
    try:
        deadline = time.time() + 60
        while seen < expected and time.time() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=200, max_records=20000)).values():
                seen += len(msgs)
                for m in msgs:
                    ids.extend(_event_id_of_copy(m.value))
    finally:
        await consumer.stop()
    return ids


async def _drive_copies(settings: Settings, events, out_topic: str, meter: CpuMeter | None = None) -> dict:
    """Send ``events`` to the events topic as fast as the broker takes them and time their copies'
    arrival on ``out_topic`` (a fresh topic every message reaches once: the events topic itself for
    the driver alone, or a forwarder's output). Only throughput is timed; ids are checked after."""
    from aiokafka import AIOKafkaProducer

    valid = {v["event_id"] for _, v in events if isinstance(v, dict)}
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_batch_size=262144,
                                **settings.kafka_client_options())
    await producer.start()
    try:
        partitions = await producer.partitions_for(settings.events_topic)
        prepared = _prepared(settings, events, len(partitions))
        sent_at: dict[str, float] = {}
        counter = asyncio.create_task(_count_arrivals(settings, out_topic, len(events),
                                                      timeout_s=max(60.0, len(events) / 500)))
        if meter is not None:
            meter.start()
        t_start = time.time()
        await _send_all(producer, settings.events_topic, prepared, sent_at, None)
        t_sent = time.time()
        t_last = await counter
        cpu = meter.stop(len(events)) if meter is not None else {}
    finally:
        await producer.stop()
    ids = await _read_ids(settings, out_topic, len(events))
    reflected = valid.intersection(ids)
    elapsed = (t_last or time.time()) - t_start
    return {"events_valid": len(valid), "events_malformed": len(events) - len(valid),
            "send_seconds": round(t_sent - t_start, 3), "elapsed_seconds": round(elapsed, 3),
            "events_per_second": round(len(events) / elapsed, 1) if t_last else None,
            "reflected": len(reflected), "missing": len(valid) - len(reflected),
            "unexpected": sum(1 for i in ids if i not in valid), "cpu": cpu}


async def _drive(settings: Settings, events, rate: float | None, progress: bool, *,
                 out_topic: str | None = None, ids_of=_event_ids_of_recommendation,
                 count_bad_on: str | None = "dead-letters", meter: CpuMeter | None = None) -> dict:
    """Send ``events`` to the events topic and time their arrival on ``out_topic``, listed by id in
    the recommendations there (latency per event, sustained events/s).

    The driver must not be what limits a run: payloads are serialised before the clock starts and
    sent a record batch at a time (or one by one at ``rate``); what arrives is kept as raw bytes
    with its arrival time and read for its ids in bulk a few times a second."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    valid = {v["event_id"] for _, v in events if isinstance(v, dict)}
    bad = sum(1 for _, v in events if not isinstance(v, dict))
    sent_at: dict[str, float] = {}
    latency: dict[str, float] = {}
    arrived: list[tuple[float, list[bytes]]] = []   # (arrival time, values) not yet read
    unexpected = 0
    dead = 0
    last_arrival = 0.0
    out_topic = out_topic or settings.recommendations_topic
    dlq = settings.dead_letter_topic if count_bad_on else None
    topics = [out_topic] + ([dlq] if dlq else [])
    consumer = AIOKafkaConsumer(*topics,
                                bootstrap_servers=settings.bootstrap_servers, fetch_max_wait_ms=settings.fetch_max_wait_ms, group_id=None,
                                auto_offset_reset="latest", max_partition_fetch_bytes=4 * 1048576,
                                **settings.kafka_client_options())
    await consumer.start()
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5,
                                max_batch_size=262144, **settings.kafka_client_options())
    await producer.start()
    partitions = await producer.partitions_for(settings.events_topic)
    prepared = _prepared(settings, events, len(partitions))
    done = asyncio.Event()

    def read_arrived() -> None:
        nonlocal unexpected, last_arrival
        for now, values in arrived:
            for value in values:
                new = False
                for eid in ids_of(value):
                    if eid in sent_at and eid not in latency:
                        latency[eid] = now - sent_at[eid]
                        new = True
                    elif eid not in valid:
                        unexpected += 1
                if new:
                    last_arrival = max(last_arrival, now)
        arrived.clear()

    async def consume() -> None:
        nonlocal dead
        last_read = 0.0
        while not done.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=20000)
            now = time.time()
            for tp, msgs in batch.items():
                if tp.topic == dlq:
                    dead += len(msgs)
                else:
                    arrived.append((now, [m.value for m in msgs]))
            if now - last_read >= 0.25 or not batch:
                read_arrived()
                last_read = now
                if len(latency) >= len(valid) and (dead >= bad or not count_bad_on):
                    done.set()

    consumer_task = asyncio.create_task(consume())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(events), desc="events sent", unit="ev")
    if meter is not None:
        meter.start()
    t_start = time.time()
    if rate:
        await _send_at_rate(producer, settings.events_topic, prepared, rate, sent_at, bar)
    else:
        await _send_all(producer, settings.events_topic, prepared, sent_at, bar)
    t_sent = time.time()
    if bar is not None:
        bar.update(len(events) - bar.n)
        bar.close()
    try:
        await asyncio.wait_for(done.wait(), timeout=max(60.0, len(events) / 500))
    except asyncio.TimeoutError:
        pass
    done.set()
    cpu = meter.stop(len(events)) if meter is not None else {}
    await consumer_task
    await producer.stop()
    await consumer.stop()
    read_arrived()
    lat = np.array(list(latency.values())) * 1000 if latency else np.zeros(1)
    # the same without the first second: a new worker's first batches run cold (query cache, models)
    steady = np.array([v for e, v in latency.items() if sent_at[e] - t_start >= 1.0]) * 1000
    elapsed = (last_arrival or time.time()) - t_start
    return {
        "events_valid": len(valid), "events_malformed": bad,
        "offered_rate": rate, "send_seconds": round(t_sent - t_start, 3),
        "elapsed_seconds": round(elapsed, 3),
        "events_per_second": round(len(latency) / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p95": round(float(np.percentile(lat, 95)), 1),
                       "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(lat.max()), 1)},
        "latency_after_first_second_ms": {"p50": round(float(np.percentile(steady, 50)), 1),
                                          "p99": round(float(np.percentile(steady, 99)), 1),
                                          "max": round(float(steady.max()), 1)} if steady.size else None,
        "reflected": len(latency), "dead_lettered": dead, "missing": len(valid) - len(latency),
        "unexpected": unexpected, "cpu": cpu,
    }


def _wait_for_line(path: Path, line: bytes, proc, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while line not in path.read_bytes():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the forwarder did not get ready; see {path}")
        time.sleep(0.05)


def measure_driver(settings: Settings, events, run_id: str) -> dict:
    """The driver alone: the same messages produced into a topic and counted straight back from it,
    no forwarder between. It must move events several times faster than the forwarder, or the
    ceiling below is the driver's, not the broker's."""
    from stream.ops.topics import TopicSpec, ensure_topics

    topic = f"driver-{run_id}"
    asyncio.run(ensure_topics(settings, [TopicSpec(topic, settings.partitions)]))
    return asyncio.run(_drive_copies(settings.replace(events_topic=topic), events, out_topic=topic))


def measure_ceiling(settings: Settings, events, run_id: str, data_dir: Path,
                    broker_pid: int | None = None) -> dict:
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
        _wait_for_line(data_dir / "logs" / f"bench-forwarder-{run_id}.log", b"forwarder ready", proc)
        meter = CpuMeter({"forwarder": [proc.pid], "driver": [None],
                          **({"broker": [broker_pid]} if broker_pid else {})})
        return asyncio.run(_drive_copies(settings.replace(events_topic=source), events, out_topic=target,
                                         meter=meter))
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
        core = measure_core(settings, events, partitions) if with_ceiling else None
        driver = measure_driver(settings, events, run_id) if with_ceiling else None
        ceiling = measure_ceiling(settings, events, run_id, data_dir,
                                  embedded.pid if embedded else None) if with_ceiling else None
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
        meter = CpuMeter({"workers": [p.pid for p in procs], "driver": [None],
                          **({"broker": [embedded.pid]} if embedded else {})})
        result = asyncio.run(_drive(settings, events, rate, progress, meter=meter))
        if ceiling is not None:
            result["driver_events_per_second"] = driver["events_per_second"]
            result["driver_missing"] = driver["missing"]
            result["ceiling_events_per_second"] = ceiling["events_per_second"]
            result["ceiling_missing"] = ceiling["missing"]
            result["ceiling_cpu"] = ceiling["cpu"]
            ours, theirs = result["cpu"].get("cpu_us_per_event", {}), ceiling["cpu"].get("cpu_us_per_event", {})
            if ours.get("total") and theirs.get("total"):
                result["cpu_over_ceiling"] = round(ours["total"] / theirs["total"], 2)
            if driver["events_per_second"] and ceiling["events_per_second"]:
                result["driver_over_ceiling"] = round(driver["events_per_second"] / ceiling["events_per_second"], 2)
            if ceiling["events_per_second"] and result["events_per_second"]:
                result["fraction_of_ceiling"] = round(result["events_per_second"] / ceiling["events_per_second"], 3)
            result["core_events_per_second"] = core["events_per_second"]
            result["core_dead_lettered"] = core["dead_lettered"]
            if ceiling["events_per_second"]:
                result["core_fraction_of_ceiling"] = round(core["events_per_second"] / ceiling["events_per_second"], 3)
            if core["events_per_second"] and result["events_per_second"]:
                result["fraction_of_core"] = round(result["events_per_second"] / core["events_per_second"], 3)
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


def _cpu_line(us: dict, cores: dict) -> str:
    parts = ", ".join(f"{role} {us[role]:.0f}" for role in us if role != "total")
    return f"{parts}: {us['total']:.0f} us in all ({cores['total']:.2f} cores over the run)"


def render(r: dict) -> None:
    import click

    lat = r["latency_ms"]
    click.echo(f"machine            {r['machine']}  (broker: {r['broker']}, {r['partitions']} partitions, "
               f"{r.get('workers', 1)} worker(s), "
               f"{r['index_products']} products)")
    click.echo(f"offered load       {r['offered_rate'] or 'max'} events/s; sent in {r['send_seconds']} s")
    click.echo(f"sustained          {r['events_per_second']} events/s over {r['elapsed_seconds']} s")
    if r.get("driver_events_per_second"):
        click.echo(f"driver alone       {r['driver_events_per_second']} events/s (produced into a topic and counted "
                   f"straight back; {r['driver_missing']} missing): {r.get('driver_over_ceiling', 0)}x the ceiling")
    if r.get("ceiling_events_per_second"):
        click.echo(f"broker ceiling     {r['ceiling_events_per_second']} events/s (plain aiokafka group forwarding "
                   f"each message, same broker, partitions and messages; {r['ceiling_missing']} missing): "
                   f"shopstream at {r.get('fraction_of_ceiling', 0):.1%} of it")
    if r.get("core_events_per_second"):
        click.echo(f"core alone         {r['core_events_per_second']} events/s (the pipeline core in one process, "
                   f"same messages and batch size, no broker; {r['core_dead_lettered']} dead-lettered): "
                   f"{r.get('core_fraction_of_ceiling', 0):.1%} of the ceiling; "
                   f"shopstream at {r.get('fraction_of_core', 0):.1%} of it")
    cpu = r.get("cpu", {}).get("cpu_us_per_event")
    if cpu:
        click.echo(f"cpu per event      {_cpu_line(cpu, r['cpu']['cores'])}")
        theirs = r.get("ceiling_cpu", {}).get("cpu_us_per_event")
        if theirs:
            click.echo(f"  the ceiling's    {_cpu_line(theirs, r['ceiling_cpu']['cores'])}: shopstream uses "
                       f"{r.get('cpu_over_ceiling', 0)}x its CPU per event")
    click.echo(f"latency (ms)       p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
    st = r.get("latency_after_first_second_ms")
    if st:
        click.echo(f"  after 1st second p50 {st['p50']}  p99 {st['p99']}  max {st['max']}  (worker warm)")
    click.echo(f"events             {r['events_valid']} valid: {r['reflected']} reflected, {r['missing']} missing; "
               f"{r['events_malformed']} malformed: {r['dead_lettered']} dead-lettered; {r['unexpected']} unexpected")

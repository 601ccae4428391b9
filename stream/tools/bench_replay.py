"""Online against offline on the same shoppers: ``shopstream bench online-replay``.

The held-out shoppers of a data set's test fold (leave-one-out, as ``shopstream eval``) are replayed
through a real broker into one worker serving a trained session encoder (with its id vectors where
it has them), over an index built from the data set's products by the ``shopstream index build``
step. Each shopper's input events go in with their own times; the recommendation that follows the
last of them is ranked against the held-out product: online NDCG@10 and Recall@10. The same
shoppers are scored offline by ``shopstream eval``'s protocol (full ranking, history excluded) and
both figures are printed side by side.

The worker runs with sessions that never expire and every purchase excluded (as the offline
protocol excludes the whole history); everything else is the product as it serves.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import numpy as np

from stream.settings import Settings

log = logging.getLogger(__name__)

K = 10


def replay_events(data, fold, run_id: str) -> tuple[list[tuple[bytes, dict]], list[str], list[str]]:
    """Events of each shopper's input, in order, and (user id, last event id) per shopper."""
    from learn.data import KIND_CODES, SEARCH

    names = {code: kind for kind, code in KIND_CODES.items()}
    out, users, last = [], [], []
    for u, s in enumerate(fold.inputs):
        user = f"{run_id}-{s.user}"
        base = time.time() - len(s) - 60.0
        for j, (tok, kind, t) in enumerate(zip(s.tokens, s.kinds, s.times)):
            ts = float(t) if np.isfinite(t) else base + j        # no clock: one event a second
            ev = {"event_id": f"{run_id}-{u}-{j}", "type": names[int(kind)], "user_id": user,
                  "session_id": f"s-{user}", "ts": int(round(ts * 1000))}
            if int(kind) == SEARCH:
                ev["query"] = data.texts[int(tok)]
            else:
                ev["item_id"] = data.item_ids[int(tok)]
            out.append((user.encode(), ev))
        users.append(user)
        last.append(out[-1][1]["event_id"])
    return out, users, last


async def _replay(settings: Settings, events, last_ids: list[str], timeout_s: float) -> dict[str, dict]:
    """Send every event; the recommendation that answered each shopper's last event."""
    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream.core.partitioner import aiokafka_partitioner

    wanted = set(last_ids)
    got: dict[str, dict] = {}
    consumer = AIOKafkaConsumer(settings.recommendations_topic, bootstrap_servers=settings.bootstrap_servers,
                                group_id=None, auto_offset_reset="earliest", **settings.kafka_client_options())
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5,
                                partitioner=aiokafka_partitioner(settings.partitioner),
                                **settings.kafka_client_options())
    await consumer.start()
    await producer.start()
    try:
        for key, ev in events:
            await producer.send(settings.events_topic, orjson.dumps(ev), key=key)
        await producer.flush()
        deadline = time.monotonic() + timeout_s
        while len(got) < len(wanted) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for msgs in batch.values():
                for m in msgs:
                    rec = orjson.loads(m.value)
                    for eid in rec["event_ids"]:
                        if eid in wanted:
                            got[eid] = rec
    finally:
        await producer.stop()
        await consumer.stop()
    return got


def online_ranks(data, fold, recs: dict[str, dict], last_ids: list[str]) -> np.ndarray:
    """Rank (0-based) of each held-out product in the recommendation to the shopper's last event;
    ``K`` or more when it is not in the top ``K`` (or no recommendation came)."""
    ranks = np.full(len(fold), np.iinfo(np.int32).max, dtype=np.int64)
    for i, (eid, target) in enumerate(zip(last_ids, fold.targets)):
        rec = recs.get(eid)
        if rec is None:
            continue
        items = [x["product_id"] for x in rec["items"]]
        pid = data.item_ids[int(target)]
        if pid in items:
            ranks[i] = items.index(pid)
    return ranks


def run_online_replay(data, model: Path, *, users: int = 200, seed: int = 0, broker: str | None = None,
                      data_dir: Path | None = None, partitions: int = 2, timeout_s: float = 600.0) -> dict:
    from engines.session_model import load_session_encoder, read_manifest
    from learn.evaluate import TrainedEncoder, evaluate
    from learn.metrics import summarise
    from learn.report import machine
    from learn.split import Fold, leave_one_out
    from stream.cli.evaluate import text_vectors_for
    from stream.ops.topics import ensure_topics
    from stream.tools.bootstrap import build_default_index
    from stream.tools.broker import EmbeddedBroker, free_port
    from stream.tools.demo import start_worker_process, stop_process, wait_ready

    data_dir = Path(data_dir or "var")
    manifest = read_manifest(model)
    split = leave_one_out(data)
    pick = np.sort(np.random.default_rng(seed).permutation(len(split.test))[:users])
    fold = Fold([split.test.inputs[i] for i in pick], split.test.targets[pick])
    run_id = uuid.uuid4().hex[:8]
    work = data_dir / "bench" / f"replay-{run_id}"
    work.mkdir(parents=True, exist_ok=True)
    catalog = work / "catalog.jsonl"
    import orjson

    # a catalogue record needs a title: a product without one (7 of Amazon Beauty's) is named by its id
    catalog.write_bytes(b"".join(orjson.dumps({"id": pid, "title": text.strip() or pid}) + b"\n"
                                 for pid, text in zip(data.item_ids, data.texts[:data.n_items])))
    embedded = worker = None
    try:
        if broker is None:
            embedded = EmbeddedBroker(log_file=data_dir / "logs" / "bench-replay-broker.log").start()
            broker = embedded.bootstrap
        settings = Settings.from_env(broker=broker, data_dir=data_dir, partitions=partitions, app_id=f"replay-{run_id}",
                                     events_topic=f"replay-events-{run_id}", recommendations_topic=f"replay-recs-{run_id}",
                                     dead_letter_topic=f"replay-dlq-{run_id}", catalog_topic=f"replay-catalog-{run_id}",
                                     models_topic=f"replay-models-{run_id}", web_port=free_port(),
                                     session_encoder=str(model), index_path=work / "index", top_k=K)
        vecs, _ = text_vectors_for(data, settings, progress=False)
        # offline: shopstream eval's method (fp32, the backend auto picks) on these shoppers
        t0 = time.perf_counter()
        enc = load_session_encoder(model, precision="fp32")
        method = TrainedEncoder(enc, vecs, data.n_items, name="offline", item_ids=data.item_ids)
        offline = evaluate([method], data, fold, progress=False)["offline"]
        offline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_default_index(settings, catalog, settings.index_path, progress=False)
        index_s = time.perf_counter() - t0
        asyncio.run(ensure_topics(settings))
        events, _, last_ids = replay_events(data, fold, run_id)
        worker = start_worker_process(settings, data_dir / "logs" / f"bench-replay-worker-{run_id}.log", extra_env={
            "SHOPSTREAM_EVENTS_TOPIC": settings.events_topic,
            "SHOPSTREAM_RECOMMENDATIONS_TOPIC": settings.recommendations_topic,
            "SHOPSTREAM_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
            "SHOPSTREAM_CATALOG_TOPIC": settings.catalog_topic,
            "SHOPSTREAM_MODELS_TOPIC": settings.models_topic,
            "SHOPSTREAM_TOP_K": str(K),
            "SHOPSTREAM_SESSION_TTL_S": "1e12",                  # one session per shopper, as offline
            "SHOPSTREAM_SESSION_MAX_PURCHASED": "100000",        # every bought product excluded, as offline
            "SHOPSTREAM_SESSION_MAX_ITEMS": str(max(50, int(manifest["config"]["max_len"])))})
        wait_ready(settings.web_port, worker, timeout=300)
        t0 = time.perf_counter()
        recs = asyncio.run(_replay(settings, events, last_ids, timeout_s))
        replay_s = time.perf_counter() - t0
    finally:
        stop_process(worker)
        if embedded is not None:
            embedded.stop()
    online = summarise(online_ranks(data, fold, recs, last_ids), (K,))
    served = sorted({r["session_model_version"] for r in recs.values()})
    gap = (online["ndcg@10"] - offline["ndcg@10"]) / offline["ndcg@10"] if offline["ndcg@10"] else float("nan")
    return {"dataset": data.summary()["name"], "model": str(model), "model_version": manifest["model_version"],
            "id_vectors": int(manifest["config"].get("item_ids") or 0), "shoppers": len(fold),
            "events": len(events), "answered": len(recs), "served_by": served,
            "online": {k: round(float(online[k]), 5) for k in ("ndcg@10", "recall@10")},
            "offline": {k: round(float(offline[k]), 5) for k in ("ndcg@10", "recall@10")},
            "relative_gap_ndcg@10": round(gap, 4), "seconds": {"offline": round(offline_s, 1),
                                                               "index_build": round(index_s, 1),
                                                               "replay": round(replay_s, 1)},
            "machine": machine(), "broker": "embedded tansu" if embedded else broker}


def render(r: dict) -> None:
    import click

    click.echo(f"machine     {r['machine']} (broker: {r['broker']})")
    click.echo(f"model       {r['model']} ({r['model_version']}, {r['id_vectors']} id vectors); served by "
               f"{', '.join(r['served_by']) or 'nothing'}")
    click.echo(f"shoppers    {r['shoppers']} held out of {r['dataset']} (test fold), {r['events']} events replayed, "
               f"{r['answered']} answered")
    click.echo(f"online      NDCG@10 {r['online']['ndcg@10']:.4f}  Recall@10 {r['online']['recall@10']:.4f}  "
               "(the worker's top 10 after each shopper's last event)")
    click.echo(f"offline     NDCG@10 {r['offline']['ndcg@10']:.4f}  Recall@10 {r['offline']['recall@10']:.4f}  "
               "(shopstream eval's protocol on the same shoppers)")
    click.echo(f"gap         {r['relative_gap_ndcg@10']:+.2%} NDCG@10 online vs offline")

"""Online A/B proof: real shoppers through a real broker and worker with two variants, 50/50.

``shopstream bench online --events N`` replays Online Retail shoppers (with WANDS searches) at an
offered rate through the embedded broker and one worker serving ``control=pooling:50`` and
``candidate=<trained session encoder>:50``. The worker joins the shoppers' later clicks,
add-to-carts and purchases with what it showed them (the feedback topic); the report then gives
each variant's online hit rate @k with its 95% interval and the two-proportion test's verdict.
Last, ``learn`` runs once on the replayed events (where that command exists) and what it announced
on the models topic is shown.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from pathlib import Path

from stream.settings import Settings

log = logging.getLogger(__name__)


def ensure_variant_index(settings: Settings, model: str, echo=log.info) -> Path:
    """The index of ``model``'s product space, built once (an explicit build step, as for the
    worker's own index): ``<data_dir>/index/items-<model version>``."""
    from stream.live.services import (
        ProductEncoder,
        load_session_model,
        load_text_encoder,
        variant_index_path,
    )
    from stream.tools.bootstrap import build_default_index

    text = load_text_encoder(settings)
    try:
        products = ProductEncoder(text, load_session_model(model, text.dim))
        path = variant_index_path(settings, products)
        if not (path / "manifest.json").exists():
            # pooling too: the worker's own index is in the shipped model's item space by default
            echo(f"building the index of {products.model_version}'s product space into {path} (once) ...")
            session = str(_shipped()) if model == "default" else model
            build_default_index(settings.replace(session_encoder=session), out=path, progress=False)
        return path
    finally:
        text.close()


def _shipped() -> Path:
    from stream.live.services import SHIPPED_SESSION_ENCODER

    return SHIPPED_SESSION_ENCODER


def run_learn_once(settings: Settings) -> dict:
    """``learn`` once on the replayed events, when this install has it (branch learnloop)."""
    try:
        from stream.ops.continuous_training import learn_once
    except ImportError:
        return {"available": False, "note": "shopstream learn is not available in this build"}
    try:
        result = learn_once(settings)
        if inspect.isawaitable(result):
            result = asyncio.run(result)
    except Exception as exc:  # noqa: BLE001 - reported, the A/B figures stand on their own
        return {"available": True, "error": f"{type(exc).__name__}: {exc}"}
    from stream.ops.models import latest

    records = asyncio.run(_read_models(settings))
    return {"available": True, "result": result if isinstance(result, (dict, list, str, type(None))) else repr(result),
            "models": {v: {"state": r.state, "share": r.share, "reason": r.reason}
                       for v, r in latest(records).items()}}


async def _read_models(settings: Settings) -> list[tuple[bytes | None, bytes | None]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = settings.models_topic
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, **settings.kafka_client_options())
    await consumer.start()
    out = []
    try:
        await consumer.topics()                  # metadata of every topic
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pos = {tp: 0 for tp in tps}
        deadline = time.monotonic() + 20
        idle_since = time.monotonic()
        while time.monotonic() < deadline and (any(pos[tp] < ends[tp] for tp in tps)
                                               or time.monotonic() - idle_since < 1.0):
            batch = await consumer.getmany(timeout_ms=300)
            if batch:
                idle_since = time.monotonic()
            for tp, msgs in batch.items():
                for m in msgs:
                    pos[tp] = m.offset + 1
                    out.append((m.key, m.value))
    finally:
        await consumer.stop()
    return out


def run_online_bench(*, n_events: int, rate: float | None = 400.0, candidate: str = "default",
                     partitions: int = 4, broker: str | None = None, progress: bool = True,
                     data_dir: Path | None = None, alpha: float = 0.05, png: Path | None = None,
                     learn: bool = True) -> dict:
    from index import load_snapshot
    from stream.live.services import load_text_encoder
    from stream.ops.online_report import plot, read_served_and_hits, summarize
    from stream.ops.topics import ensure_topics
    from stream.tools.bench_e2e import _drive, _machine, scripted_events
    from stream.tools.bootstrap import prepare_local
    from stream.tools.broker import EmbeddedBroker, free_port
    from stream.tools.demo import start_worker_process, stop_process, wait_ready

    data_dir = data_dir or Path("var")
    embedded = worker = None
    run_id = uuid.uuid4().hex[:8]
    variants = f"control=pooling:50,candidate={candidate}:50"
    try:
        if broker is None:
            embedded = EmbeddedBroker(log_file=data_dir / "logs" / "bench-broker.log").start()
            broker = embedded.bootstrap
        settings = Settings.from_env(broker=broker, data_dir=data_dir, partitions=partitions,
                                     app_id=f"online-{run_id}", events_topic=f"online-events-{run_id}",
                                     recommendations_topic=f"online-recs-{run_id}",
                                     dead_letter_topic=f"online-dlq-{run_id}", models_topic=f"online-models-{run_id}",
                                     web_port=free_port())
        settings = prepare_local(settings)
        ensure_variant_index(settings, "pooling")         # the control
        ensure_variant_index(settings, candidate)
        index = load_snapshot(settings.resolved_index_path)
        encoder = load_text_encoder(settings)
        events = scripted_events(n_events, index, encoder, 0.0, run_id, None)
        encoder.close()
        asyncio.run(ensure_topics(settings))
        worker = start_worker_process(settings, data_dir / "logs" / f"bench-online-worker-{run_id}.log", extra_env={
            "SHOPSTREAM_EVENTS_TOPIC": settings.events_topic,
            "SHOPSTREAM_RECOMMENDATIONS_TOPIC": settings.recommendations_topic,
            "SHOPSTREAM_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
            "SHOPSTREAM_MODELS_TOPIC": settings.models_topic,
            "SHOPSTREAM_VARIANTS": variants})
        wait_ready(settings.web_port, worker, timeout=180)
        throughput = asyncio.run(_drive(settings, events, rate, progress))
        time.sleep(2.0)                        # the last hits are published with the last batch
        served, hits = asyncio.run(read_served_and_hits(settings))
        report = summarize(served, hits, control="control", alpha=alpha)
        if png is not None:
            report["png"] = str(plot(report, png))
        result = {"variants_spec": variants, "report": report,
                  "verdict": report["comparisons"].get("candidate", {}).get("verdict", "inconclusive"),
                  "throughput": throughput, "machine": _machine(), "events": n_events, "offered_rate": rate,
                  "feedback_horizon": {"events": settings.feedback_horizon_events,
                                       "seconds": settings.feedback_horizon_s},
                  "broker": "embedded tansu" if embedded else broker, "partitions": partitions,
                  "index_products": len(index)}
        if learn:
            result["learn"] = run_learn_once(settings)
        return result
    finally:
        stop_process(worker)
        if embedded is not None:
            embedded.stop()


def render(r: dict) -> None:
    import click

    from stream.ops.online_report import render as render_report

    t = r["throughput"]
    click.echo(f"machine      {r['machine']}  (broker: {r['broker']}, {r['partitions']} partitions, "
               f"{r['index_products']} products)")
    click.echo(f"variants     {r['variants_spec']}; horizon {r['feedback_horizon']['events']} events / "
               f"{r['feedback_horizon']['seconds']:.0f} s")
    click.echo(f"replayed     {t['events_valid']} events at {r['offered_rate'] or 'max'}/s offered: "
               f"{t['events_per_second']} events/s, {t['missing']} missing, p99 {t['latency_ms']['p99']} ms")
    click.echo(render_report(r["report"]))
    click.echo(f"verdict      candidate against control: {r['verdict']}")
    learn = r.get("learn")
    if learn is not None:
        if not learn.get("available"):
            click.echo(f"learn        {learn['note']}")
        elif "error" in learn:
            click.echo(f"learn        failed: {learn['error']}")
        else:
            res = learn.get("result") if isinstance(learn.get("result"), dict) else {}
            off = res.get("offline") or {}
            if off:
                click.echo(f"learn        {res.get('events_read')} events, {res.get('users')} shoppers, "
                           f"{off['held_out_users']} held out ({off['fold']}): NDCG@10 new "
                           f"{off['ndcg@10']:.4f} vs serving {off['serving_ndcg@10']:.4f} "
                           f"({off['serving_version']}), margin {off['margin']}")
            if res:
                click.echo(f"learn        announced: {res.get('announced') or 'nothing'}; {res.get('reason', '')}")
            for version, m in learn["models"].items():
                click.echo(f"learn        {version}: {m['state']} (share {m['share']}) {m['reason']}")

"""``shopstream report online``: online hit rates per variant and model, compared with the control.

Reads a deployment's recommendations topic (what was served: variant, session model, when) and its
feedback topic (hits: a served product clicked, carted or bought within the horizon). A
recommendation is a trial; it is a hit when the feedback topic credits it (duplicates after a
redelivery count once, by recommendation id). Each variant is compared with the control by a
two-sided two-proportion z-test (:func:`stream.core.online_stats.compare`).
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import orjson

from stream.core.online_stats import HitRate, compare
from stream.errors import ConfigError

PLOT_HINT = "the plot needs matplotlib: pip install 'shopstream[eval]'"


def _ts(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def shopper_bootstrap(per_user_a: list[tuple[int, int]], per_user_b: list[tuple[int, int]], *,
                      rounds: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Interval of (hit rate b - hit rate a) resampling *shoppers* with replacement.

    A shopper's recommendations are not independent trials (the same person, the same visit); the
    z-test treats them as if they were, this does not. ``per_user_*``: (hits, served) per shopper."""
    import numpy as np

    if not per_user_a or not per_user_b:
        return {"diff": 0.0, "ci95": [0.0, 0.0], "significant": False, "shoppers": [len(per_user_a), len(per_user_b)]}
    rng = np.random.default_rng(seed)
    a, b = np.asarray(per_user_a, dtype=np.float64), np.asarray(per_user_b, dtype=np.float64)

    def rates(x: np.ndarray) -> np.ndarray:
        idx = rng.integers(0, len(x), size=(rounds, len(x)))
        return x[idx, 0].sum(1) / np.maximum(x[idx, 1].sum(1), 1)

    diffs = rates(b) - rates(a)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    diff = b[:, 0].sum() / b[:, 1].sum() - a[:, 0].sum() / a[:, 1].sum()
    return {"diff": round(float(diff), 6), "ci95": [round(float(lo), 6), round(float(hi), 6)],
            "significant": bool(lo > 0 or hi < 0), "shoppers": [len(a), len(b)]}


def summarize(served: Iterable[dict], hits: Iterable[dict], *, control: str | None = None,
              alpha: float = 0.05, min_served: int = 100, windows: int = 10) -> dict:
    """Hit rate @k per variant and per (variant, model), each variant against the control, and
    hit rates over ``windows`` equal time windows (for the plot). Pure: dicts in, a dict out."""
    recs: dict[str, tuple[str, str, float]] = {}
    shopper: dict[str, str] = {}
    k = 0
    for r in served:
        recs[r["recommendation_id"]] = (r.get("variant", "default"), r["session_model_version"],
                                        _ts(r["produced_at"]))
        shopper[r["recommendation_id"]] = r.get("user_id", r["recommendation_id"])
        k = max(k, len(r.get("items", ())))
    hit_type: dict[str, str] = {}
    for h in hits:
        if h["recommendation_id"] in recs:
            hit_type.setdefault(h["recommendation_id"], h["event_type"])
    per_variant: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_model: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    by_type: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for rid, (variant, model, _) in recs.items():
        hit = rid in hit_type
        for agg in (per_variant[variant], per_model[(variant, model)]):
            agg[0] += hit
            agg[1] += 1
        if hit:
            by_type[(variant, model)][hit_type[rid]] += 1
    variants = sorted(per_variant)
    if control is None:
        control = next((c for c in ("control", "default") if c in per_variant), variants[0] if variants else None)
    rates = {v: HitRate(*per_variant[v]) for v in variants}
    per_user: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for rid, (variant, _, _) in recs.items():
        cell = per_user[variant][shopper[rid]]
        cell[0] += rid in hit_type
        cell[1] += 1
    comparisons = {}
    if control in rates:
        for v in variants:
            if v != control:
                comparisons[v] = compare(rates[control], rates[v], alpha, min_served).to_dict()
                comparisons[v]["shopper_bootstrap"] = shopper_bootstrap(
                    list(map(tuple, per_user[control].values())), list(map(tuple, per_user[v].values())),
                    alpha=alpha)
    timeline: list[dict] = []
    if recs and windows:
        t0 = min(t for _, _, t in recs.values())
        t1 = max(t for _, _, t in recs.values())
        width = max((t1 - t0) / windows, 1e-9)
        cells: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
        for rid, (variant, _, t) in recs.items():
            cell = cells[(min(int((t - t0) / width), windows - 1), variant)]
            cell[0] += rid in hit_type
            cell[1] += 1
        for (w, variant), (h, n) in sorted(cells.items()):
            timeline.append({"window": w, "start": round(t0 + w * width, 3), "end": round(t0 + (w + 1) * width, 3),
                             "variant": variant, **HitRate(h, n).to_dict()})
    return {
        "k": k, "control": control, "alpha": alpha,
        "variants": {v: rates[v].to_dict() for v in variants},
        "models": [{"variant": v, "session_model_version": m, **HitRate(*per_model[(v, m)]).to_dict(),
                    "hits_by_event_type": dict(sorted(by_type[(v, m)].items()))}
                   for v, m in sorted(per_model)],
        "comparisons": comparisons,
        "timeline": timeline,
    }


def render(report: dict) -> str:
    k = report["k"]
    header = (f"{'variant':<12} {'session model':<28} {'served':>8} {'hits':>7} {f'hit rate@{k}':>12} "
              f"{'95% interval':>17}  hits by event type")
    lines = [header]
    for m in report["models"]:
        lo, hi = m["ci95"]
        types = ", ".join(f"{t} {n}" for t, n in m["hits_by_event_type"].items()) or "-"
        lines.append(f"{m['variant']:<12} {m['session_model_version'][:28]:<28} {m['served']:>8} {m['hits']:>7} "
                     f"{m['hit_rate']:>12.4f} {f'[{lo:.4f}, {hi:.4f}]':>17}  {types}")
    if len({m["variant"] for m in report["models"]}) < len(report["models"]):
        for v, r in report["variants"].items():
            lo, hi = r["ci95"]
            lines.append(f"{v:<12} {'(all models)':<28} {r['served']:>8} {r['hits']:>7} {r['hit_rate']:>12.4f} "
                         f"{f'[{lo:.4f}, {hi:.4f}]':>17}")
    for v, c in report["comparisons"].items():
        sig = "significant" if c["verdict"] != "inconclusive" else "not significant"
        lines.append(f"{v} vs {report['control']}: lift {c['lift']:+.1%}, z {c['z']:.2f}, p {c['p_value']:.4g} "
                     f"-> {c['verdict']} ({sig} at alpha {c['alpha']})")
        b = c.get("shopper_bootstrap")
        if b:
            lines.append(f"{'':<{len(v)}}    resampling shoppers ({b['shoppers'][0]} and {b['shoppers'][1]}): difference "
                         f"{b['diff']:+.4f}, 95% [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] -> "
                         f"{'significant' if b['significant'] else 'not significant'}")
    if not report["models"]:
        lines.append("(nothing served yet)")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Hit rate per variant over time windows, with 95% interval bands."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(PLOT_HINT) from exc
    fig, ax = plt.subplots(figsize=(8, 4.5))
    t0 = min((w["start"] for w in report["timeline"]), default=0.0)
    for variant in report["variants"]:
        rows = [w for w in report["timeline"] if w["variant"] == variant]
        x = [((w["start"] + w["end"]) / 2 - t0) for w in rows]
        ax.plot(x, [w["hit_rate"] for w in rows], marker="o", label=variant)
        ax.fill_between(x, [w["ci95"][0] for w in rows], [w["ci95"][1] for w in rows], alpha=0.2)
    ax.set_xlabel("seconds since the first recommendation")
    ax.set_ylabel(f"hit rate @{report['k']}")
    ax.set_title("online hit rate per variant (95% Wilson intervals)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


async def read_served_and_hits(settings, timeout: float = 60.0) -> tuple[list[dict], list[dict]]:
    """Every message now on the recommendations and feedback topics (read to their end offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topics = {settings.recommendations_topic: [], settings.resolved_feedback_topic: []}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **settings.kafka_client_options())
    from stream.ops.topics import start_client

    await start_client(consumer, settings)
    try:
        known = await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics if t in known for p in consumer.partitions_for_topic(t) or ()]
        if not tps:
            return [], []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        pos = {tp: 0 for tp in tps}
        idle_since = time.monotonic()
        # to the end offsets, then until nothing more comes for a second: a broker's reported end
        # offset can trail its last produced batch (tansu does), and a report must not miss those
        while time.monotonic() < deadline and (any(pos[tp] < ends[tp] for tp in tps)
                                               or time.monotonic() - idle_since < 1.0):
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            if batch:
                idle_since = time.monotonic()
            for tp, msgs in batch.items():
                for m in msgs:
                    pos[tp] = m.offset + 1
                    if m.value is not None:
                        try:
                            topics[tp.topic].append(orjson.loads(m.value))
                        except orjson.JSONDecodeError:
                            continue
    finally:
        await consumer.stop()
    return topics[settings.recommendations_topic], topics[settings.resolved_feedback_topic]


def online_report(settings, *, control: str | None = None, alpha: float = 0.05, windows: int = 10,
                  min_served: int = 100) -> dict:
    served, hits = asyncio.run(read_served_and_hits(settings))
    return summarize(served, hits, control=control, alpha=alpha, windows=windows, min_served=min_served)

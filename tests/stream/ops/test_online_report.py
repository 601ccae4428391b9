"""``shopstream report online`` from lists: hit rates per variant and model, the verdict, the plot."""
from __future__ import annotations

import random

import pytest

from stream.ops.online_report import render, summarize


def synthetic(n, rates, seed=3):
    rng = random.Random(seed)
    served, hits = [], []
    for i in range(n):
        variant = "control" if i % 2 else "candidate"
        model = {"control": "pooling-384", "candidate": "session-tf-1"}[variant]
        rid = f"r{i}"
        served.append({"recommendation_id": rid, "variant": variant, "user_id": f"u{i % 400}", "session_model_version": model,
                       "produced_at": f"2026-11-23T10:{i * 60 // n:02d}:00.000Z",
                       "items": [{"product_id": "p", "score": 0.1}] * 10})
        if rng.random() < rates[variant]:
            hit = {"recommendation_id": rid, "variant": variant, "session_model_version": model,
                   "event_type": "click" if i % 3 else "purchase"}
            hits += [hit, hit]                  # a redelivered hit counts once
    hits.append({"recommendation_id": "unknown", "event_type": "click"})   # its recommendation not read
    return served, hits


def test_better_candidate_is_significant_and_counted_once_per_recommendation():
    served, hits = synthetic(4000, {"control": 0.10, "candidate": 0.16})
    report = summarize(served, hits, windows=4)
    assert report["k"] == 10 and report["control"] == "control"
    c = report["comparisons"]["candidate"]
    assert c["verdict"] == "better" and c["p_value"] < 0.05
    n_hits = len({h["recommendation_id"] for h in hits if h["recommendation_id"] != "unknown"})
    assert sum(v["hits"] for v in report["variants"].values()) == n_hits
    cand = next(m for m in report["models"] if m["variant"] == "candidate")
    assert cand["session_model_version"] == "session-tf-1"
    assert sum(cand["hits_by_event_type"].values()) == cand["hits"]
    lo, hi = cand["ci95"]
    assert lo < cand["hit_rate"] < hi
    assert {w["window"] for w in report["timeline"]} == {0, 1, 2, 3}
    text = render(report)
    assert "candidate vs control" in text and "better (significant" in text
    boot = c["shopper_bootstrap"]
    assert boot["significant"] and boot["ci95"][0] > 0 and boot["shoppers"] == [200, 200]


def test_equal_variants_are_inconclusive():
    served, hits = synthetic(2000, {"control": 0.1, "candidate": 0.1})
    same = summarize(served, hits)["comparisons"]["candidate"]
    assert same["verdict"] == "inconclusive" and not same["shopper_bootstrap"]["significant"]
    assert "nothing served" in render(summarize([], []))


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from stream.ops.online_report import plot

    served, hits = synthetic(1000, {"control": 0.1, "candidate": 0.2})
    out = plot(summarize(served, hits, windows=5), tmp_path / "online.png")
    assert out.stat().st_size > 1000


def test_report_command_reads_a_deployments_topics(settings_factory, tmp_path):
    import os
    import subprocess
    import sys

    import orjson

    from tests.conftest import run
    from tests.kafka_io import produce_raw

    settings = settings_factory()
    served, hits = synthetic(600, {"control": 0.05, "candidate": 0.3})
    run(produce_raw(settings, [(r["recommendation_id"].encode(), orjson.dumps(r)) for r in served],
                    topic=settings.recommendations_topic))
    run(produce_raw(settings, [(b"u", orjson.dumps(h)) for h in hits], topic=settings.resolved_feedback_topic))
    env = {**os.environ, "SHOPSTREAM_RECOMMENDATIONS_TOPIC": settings.recommendations_topic}
    out = subprocess.run([sys.executable, "-m", "stream", "report", "online", "--broker", settings.broker,
                          "--app-id", settings.app_id, "--json", "--png", str(tmp_path / "o.png")],
                         capture_output=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    report = orjson.loads(out.stdout)
    assert report["variants"]["control"]["served"] == 300
    assert report["comparisons"]["candidate"]["verdict"] == "better"
    assert (tmp_path / "o.png").exists()


def test_prometheus_exports_served_and_hits_per_variant_and_model():
    pytest.importorskip("prometheus_client")
    from stream.ops.prometheus import PrometheusMetrics

    m = PrometheusMetrics()
    m.on_served("candidate", "session-tf-1", 3)
    m.on_hit("candidate", "session-tf-1", "click")
    body = m.exposition()[0].decode()
    assert 'shopstream_served_total{model="session-tf-1",variant="candidate"} 3.0' in body
    assert 'shopstream_hits_total{event_type="click",model="session-tf-1",variant="candidate"} 1.0' in body

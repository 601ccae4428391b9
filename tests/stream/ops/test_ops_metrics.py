"""/metrics, /ready and structured logs of a real worker while it processes real events."""
from __future__ import annotations

import json
import time
import urllib.request

import orjson

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic

MARKER = "zebra-print-umbrella-7f3a"     # a query no log line may contain


def _get(port: int, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def test_metrics_endpoint_serves_every_metric_while_processing(settings_factory, worker_factory, catalog_products):
    from prometheus_client.parser import text_string_to_metric_families

    settings = settings_factory()
    worker = worker_factory(settings, extra_env={"SHOPSTREAM_LOG_FORMAT": "json"})
    pids = [p.id for p in catalog_products[:50]]
    events = [event(i, f"user-{i % 7}", ("view", "search", "add_to_cart", "purchase")[i % 4], item=pids[i % 50],
                    query=MARKER) for i in range(40)]
    run(produce_raw(settings, [keyed(e) for e in events] + [(b"user-1", b"{not json " + MARKER.encode())]))
    run(read_topic(settings, settings.dead_letter_topic, until=lambda m: len(m) >= 1, timeout=60))
    wanted = {e["event_id"] for e in events}
    run(read_topic(settings, settings.recommendations_topic,
                   until=lambda m: {i for x in m for i in orjson.loads(x.value)["event_ids"]} >= wanted))

    status, ctype, body = _get(settings.web_port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    samples = {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in families.values()}

    def value(family: str, sample: str, **labels) -> float:
        return sum(v for n, lab, v in samples[family] if n == sample and all(lab.get(k) == w for k, w in labels.items()))

    assert value("shopstream_events_in", "shopstream_events_in_total", type="view") == 10
    assert value("shopstream_events_in", "shopstream_events_in_total", type="search") == 10
    assert value("shopstream_dead_lettered", "shopstream_dead_lettered_total", reason="not_json") == 1
    assert value("shopstream_recommendations_out", "shopstream_recommendations_out_total") >= 7
    assert value("shopstream_batch_events", "shopstream_batch_events_sum") == 40
    # every recommendation's session was either computed or took a kept one-event result
    assert value("shopstream_sessions_recommended", "shopstream_sessions_recommended_total") == \
        value("shopstream_recommendations_out", "shopstream_recommendations_out_total")
    assert value("shopstream_sessions_recommended", "shopstream_sessions_recommended_total", how="computed") >= 7
    for hist in ("shopstream_encoder_seconds", "shopstream_index_seconds", "shopstream_end_to_end_seconds",
                 "shopstream_batch_users"):
        assert value(hist, hist + "_count") >= 1, hist
    assert value("shopstream_index_products", "shopstream_index_products") == 800
    assert [lab["version"] for n, lab, _ in samples["shopstream_index_info"]][0]
    assert [lab["version"] for n, lab, _ in samples["shopstream_model_info"]][0]
    lag = {lab["partition"]: v for n, lab, v in samples["shopstream_consumer_lag"]
           if lab["topic"] == settings.events_topic}
    assert set(lag) == {"0", "1"} and all(v >= 0 for v in lag.values())

    status, _, ready = _get(settings.web_port, "/ready")
    assert status == 200 and json.loads(ready)["ready"] is True

    time.sleep(0.5)
    log_text = worker.log_path.read_text()
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert MARKER not in log_text, "no raw event payload in the logs"

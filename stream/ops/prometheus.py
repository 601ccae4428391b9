"""Prometheus export of :class:`stream.core.metrics.Metrics` (needs the ``metrics`` extra).

Each :class:`PrometheusMetrics` has its own registry, so tests and tools can make several in one
process; the worker serves it at ``/metrics`` on its web server.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Mapping

from stream.core.metrics import Metrics
from stream.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "Prometheus metrics need prometheus-client: pip install 'shopstream[metrics]'"
# Prometheus' classic text format; aiohttp wants the charset apart from the content type.
CONTENT_TYPE = "text/plain; version=0.0.4"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

LagSource = Callable[[], Mapping[tuple[str, int], int]]


def _client():
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    return prometheus_client


class PrometheusMetrics(Metrics):
    """Counters, histograms and gauges of one worker, under the ``shopstream_`` prefix."""

    def __init__(self) -> None:
        pc = _client()
        self.registry = r = pc.CollectorRegistry(auto_describe=True)
        self.events_in = pc.Counter("shopstream_events_in", "Valid events taken in, by type.",
                                    ["type"], registry=r)
        self.dead_letters = pc.Counter("shopstream_dead_lettered", "Events sent to the dead-letter topic, by reason.",
                                       ["reason"], registry=r)
        self.recommendations = pc.Counter("shopstream_recommendations_out", "Recommendations published.",
                                          registry=r)
        self.batch_events = pc.Histogram("shopstream_batch_events", "Valid events per micro-batch.",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.batch_users = pc.Histogram("shopstream_batch_users", "Distinct users per micro-batch.",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.encoder_seconds = pc.Histogram("shopstream_encoder_seconds", "Query-encoder time per batch.",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.index_seconds = pc.Histogram("shopstream_index_seconds", "Index search time per batch.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.sessions_recommended = pc.Counter(
            "shopstream_sessions_recommended", "Sessions recommended for, by how: 'kept' took the result of an "
            "earlier one-event session like it (no encoder call, no search), 'computed' were encoded and searched.",
            ["how"], registry=r)
        self.e2e_seconds = pc.Histogram("shopstream_end_to_end_seconds",
                                        "From the event time to the recommendation's publication.",
                                        buckets=E2E_BUCKETS, registry=r)
        self.served = pc.Counter("shopstream_served", "Recommendations served, by variant and session model "
                                 "(hit rate @k = shopstream_hits_total / shopstream_served_total).",
                                 ["variant", "model"], registry=r)
        self.hits = pc.Counter("shopstream_hits", "Recommendations with a product clicked, carted or bought within "
                               "the feedback horizon, by variant, session model and the event that made the hit.",
                               ["variant", "model", "event_type"], registry=r)
        self.index_size = pc.Gauge("shopstream_index_products", "Products in the index in use.", registry=r)
        self.index_info = pc.Info("shopstream_index", "Version of the index in use.", registry=r)
        self.model_info = pc.Info("shopstream_model", "Version of the text encoder in use.", registry=r)
        self.catalog_restarts = pc.Counter("shopstream_catalog_sync_restarts",
                                           "Times catalogue sync failed and was restarted.", registry=r)
        self.catalog_healthy = pc.Gauge("shopstream_catalog_sync_healthy",
                                        "1 while catalogue sync runs, 0 while it waits to be restarted.",
                                        registry=r)
        self.catalog_synced = pc.Gauge("shopstream_catalog_sync_caught_up",
                                       "1 once the catalog topic was read to its end at start.", registry=r)
        self.store_failing = pc.Gauge("shopstream_state_store_failing",
                                      "1 while the named state store refuses writes on a partition: the worker "
                                      "takes no events and acks nothing until they succeed.",
                                      ["store", "partition"], registry=r)
        self.send_wait = pc.Gauge("shopstream_send_wait_seconds",
                                  "How long the worker's oldest undelivered send to Kafka has waited (0: none).",
                                  registry=r)
        self.control_skipped = pc.Counter("shopstream_control_records_skipped",
                                          "Control records (catalogue updates, forget requests, model decisions) "
                                          "that were not valid: logged with their topic, partition and offset, "
                                          "and skipped; by kind and reason.", ["kind", "reason"], registry=r)
        self.artifact_bytes = pc.Counter("shopstream_registry_fetched_bytes",
                                         "Bytes of model and index artifacts fetched from the registry.", registry=r)
        self.artifact_refused = pc.Counter("shopstream_registry_refused",
                                           "Registry artifacts refused (not fetched, or failing the sha256 check).",
                                           ["reason"], registry=r)
        self._events_in: dict[str, Any] = {}
        self._lag_source: LagSource | None = None
        self._restore_source: Callable[[], Mapping[str, Mapping[str, int]]] | None = None
        r.register(_LagCollector(self))
        r.register(_RestoreCollector(self))

    # -- the Metrics interface --------------------------------------------------------------------
    def on_event_in(self, event_type: str) -> None:
        child = self._events_in.get(event_type)        # ``labels()`` per event was 4% of the core
        if child is None:
            child = self._events_in[event_type] = self.events_in.labels(event_type)
        child.inc()

    def on_dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason).inc()

    def on_recommendation_out(self, n: int = 1) -> None:
        self.recommendations.inc(n)

    def on_batch(self, events: int, users: int) -> None:
        self.batch_events.observe(events)
        self.batch_users.observe(users)

    def observe_encoder(self, seconds: float) -> None:
        self.encoder_seconds.observe(seconds)

    def observe_index(self, seconds: float) -> None:
        self.index_seconds.observe(seconds)

    def on_one_event_results(self, kept: int, computed: int) -> None:
        if kept:
            self.sessions_recommended.labels("kept").inc(kept)
        if computed:
            self.sessions_recommended.labels("computed").inc(computed)

    def observe_end_to_end(self, seconds: float) -> None:
        self.e2e_seconds.observe(max(seconds, 0.0))

    def on_served(self, variant: str, model: str, n: int = 1) -> None:
        self.served.labels(variant, model).inc(n)

    def on_hit(self, variant: str, model: str, event_type: str) -> None:
        self.hits.labels(variant, model, event_type).inc()

    def set_index(self, version: str, size: int) -> None:
        self.index_size.set(size)
        self.index_info.info({"version": str(version)})

    def set_model(self, version: str) -> None:
        self.model_info.info({"version": str(version)})

    def on_catalog_restart(self) -> None:
        self.catalog_restarts.inc()

    def set_catalog_healthy(self, healthy: bool) -> None:
        self.catalog_healthy.set(1 if healthy else 0)

    def set_catalog_synced(self, synced: bool) -> None:
        self.catalog_synced.set(1 if synced else 0)

    def set_store_failing(self, store: str, partition: int, failing: bool) -> None:
        self.store_failing.labels(store, str(partition)).set(1 if failing else 0)

    def watch_send_wait(self, source: Callable[[], float]) -> None:
        self.send_wait.set_function(source)

    def on_control_record_skipped(self, kind: str, reason: str) -> None:
        self.control_skipped.labels(kind, reason).inc()
    def on_artifact_fetched(self, size: int) -> None:
        self.artifact_bytes.inc(size)

    def on_artifact_refused(self, reason: str) -> None:
        self.artifact_refused.labels(reason).inc()

    def watch_lag(self, source: LagSource) -> None:
        self._lag_source = source

    def watch_restore(self, source: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self._restore_source = source

    def exposition(self) -> tuple[bytes, str]:
        return _client().generate_latest(self.registry), CONTENT_TYPE


class _LagCollector:
    """Consumer lag per partition, read from the consumer when Prometheus scrapes."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("shopstream_consumer_lag", "Messages not yet processed, per partition.",
                                   labels=["topic", "partition"])
        source = self.metrics._lag_source
        if source is not None:
            try:
                lags = source()
            except Exception:  # noqa: BLE001 - a scrape must never fail on a consumer mid-rebalance
                log.debug("consumer lag unavailable", exc_info=True)
                lags = {}
            for (topic, partition), lag in sorted(lags.items()):
                family.add_metric([topic, str(partition)], lag)
        yield family


class _RestoreCollector:
    """Sessions restore progress per partition (changelog records done, and to do), read when scraped."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        done = GaugeMetricFamily("shopstream_restore_records_done",
                                 "Changelog records restored into the sessions table in the latest recovery, "
                                 "per partition.", labels=["partition"])
        total = GaugeMetricFamily("shopstream_restore_records_total",
                                  "Changelog records the latest recovery of the sessions table reads, per partition.",
                                  labels=["partition"])
        source = self.metrics._restore_source
        progress = {}
        if source is not None:
            try:
                progress = source()
            except Exception:  # noqa: BLE001 - a scrape must never fail on a recovery mid-rebalance
                log.debug("restore progress unavailable", exc_info=True)
        for partition, p in sorted(progress.items(), key=lambda kv: int(kv[0])):
            done.add_metric([str(partition)], p["done"])
            total.add_metric([str(partition)], p["total"])
        yield done
        yield total


def faust_consumer_lag(app, topic: str) -> dict[tuple[str, int], int]:
    """Lag of ``topic``'s assigned partitions: high-water mark minus the committed offset."""
    from stream.live.faust_compat import committed_offset

    consumer = app.consumer
    out: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        if tp.topic != topic:
            continue
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        committed = committed_offset(consumer, tp)
        out[(tp.topic, tp.partition)] = max(int(highwater) - int(committed or 0), 0)
    return out


def create_metrics(*, required: bool = False) -> Metrics:
    """Prometheus metrics when prometheus-client is installed, else the no-op interface."""
    try:
        return PrometheusMetrics()
    except ConfigError:
        if required:
            raise
        log.warning("%s; /metrics is disabled", INSTALL_HINT)
        return Metrics()

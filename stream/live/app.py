"""The Faust app, built by a factory from one settings object (no module-level singleton)."""
from __future__ import annotations

import functools
import logging
from typing import Any

from stream.live.batches import BatchHandler
from stream.live.catalog_sync import start_catalog_sync
from stream.live.services import Services
from stream.ops.topics import SESSIONS_TABLE
from stream.settings import Settings

log = logging.getLogger(__name__)


def broker_credentials(settings: Settings) -> Any:
    import faust

    if settings.security_protocol == "PLAINTEXT":
        return None
    ctx = settings.kafka_client_options().get("ssl_context")
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.sasl_username, password=str(settings.sasl_password),
                                     mechanism=settings.sasl_mechanism, ssl_context=ctx)
    return faust.SSLCredentials(ctx)


def faust_options(settings: Settings) -> dict[str, Any]:
    return dict(
        broker=settings.faust_broker,
        broker_credentials=broker_credentials(settings),
        store="memory://",                      # state lives in the changelog; recovered at start
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,              # ensure_topics() made them, with their partition counts
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger_ms=5,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        web_enabled=settings.web_enabled,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        autodiscover=False,
        key_serializer="raw",                   # shopstream (de)serialises with orjson itself
        value_serializer="raw",
        table_cleanup_interval=60.0,
        logging_config=None,
    )


async def set_fetch_max_wait(app: Any, ms: int) -> None:
    """Bound how long a fetch waits for data on the worker's consumer.

    Faust fixes its consumer's ``fetch_max_wait_ms`` at 1500. A broker that answers a fetch only
    when that wait ends, rather than as soon as data arrives (tansu, the embedded default, does so
    here), then adds up to 1.5 s to every event. aiokafka reads the value per request, so it is set
    on the running consumer's fetcher as soon as the consumer thread has made one.
    """
    import asyncio

    for _ in range(600):
        thread = getattr(app.consumer, "_thread", None)
        consumer = getattr(thread, "_consumer", None)
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None:
            fetcher._fetch_max_wait_ms = ms
            log.info("consumer fetch_max_wait_ms = %d", ms)
            return
        await asyncio.sleep(0.1)
    log.warning("could not set the consumer's fetch_max_wait_ms; fetches may wait up to 1.5 s")


def create_app(settings: Settings, services: Services) -> Any:
    """A Faust app whose agent turns events into recommendations with ``services``."""
    import faust

    app = faust.App(settings.app_id, **faust_options(settings))
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
               partitions=settings.partitions)
    events = app.topic(settings.events_topic, **raw)
    recommendations = app.topic(settings.recommendations_topic, **raw)
    dead_letters = app.topic(settings.dead_letter_topic, **raw)
    sessions = app.Table(SESSIONS_TABLE, default=None, partitions=settings.partitions,
                         key_type=bytes, value_type=bytes)
    handler = BatchHandler(services, sessions=sessions, recommendations_topic=recommendations,
                           dead_letter_topic=dead_letters, events_topic=events)
    catalog = start_catalog_sync(app, services, settings)     # every worker applies every catalogue update
    if settings.pseudonymise_key:
        from stream.core.pseudonyms import pseudonym, pseudonymiser

        handler.pseudonymise = pseudonymiser(str(settings.pseudonymise_key))
        handler.pseudonymise_id = functools.partial(pseudonym, str(settings.pseudonymise_key))

    @app.agent(events, name="recommend")
    async def recommend(stream):  # noqa: ANN001 - faust injects the stream
        within = settings.batch_wait_ms / 1000.0 or 0.001
        async for batch in stream.take_events(settings.batch_size, within=within):
            await handler.handle(batch)

    @app.task
    async def tune_fetch_wait() -> None:
        await set_fetch_max_wait(app, settings.fetch_max_wait_ms)

    @app.timer(interval=settings.session_sweep_interval_s)
    async def sweep_sessions() -> None:
        n = handler.sweep(settings.session_retention_s)
        if n:
            log.info("expired %d idle session(s)", n)

    def readiness() -> dict[str, Any]:
        recovery = app.tables.recovery
        checks = {
            "model_loaded": True,                     # services are loaded before the app is built
            "index_loaded": len(services.index.current) > 0,
            "partitions_assigned": bool(app.consumer.assignment()) if app.consumer else False,
            "recovery_done": recovery.completed.is_set() and not app.in_recovery,
            "not_rebalancing": not app.rebalancing,
            "catalog_synced": catalog.caught_up,
        }
        return checks

    @app.page("/metrics")
    async def metrics(web, request):  # noqa: ANN001
        exported = services.metrics.exposition()
        if exported is None:
            return web.json({"error": "metrics disabled: pip install 'shopstream[metrics]'"}, status=404)
        body, content_type = exported
        return web.bytes(body, content_type=content_type)

    @app.page("/health")
    async def health(web, request):  # noqa: ANN001
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web, request):  # noqa: ANN001
        checks = readiness()
        ok = all(checks.values())
        return web.json({"ready": ok, **checks, "index_version": services.index.current.version,
                         "model_version": services.encoder.model_version}, status=200 if ok else 503)

    def consumer_lag() -> dict:
        from stream.ops.prometheus import faust_consumer_lag

        return faust_consumer_lag(app, settings.events_topic) if app.consumer else {}

    services.metrics.watch_lag(consumer_lag)

    app.shopstream = {"services": services, "handler": handler, "sessions": sessions,
                      "topics": {"events": events, "recommendations": recommendations,
                                 "dead_letters": dead_letters}}
    return app

"""The Faust app, built by a factory from one settings object (no module-level singleton)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stream.core.pipeline import Pipeline
from stream.live.batches import LiveBatches
from stream.live.catalog_sync import start_catalog_sync
from stream.live.faust_compat import FAUST_VIEW_SETTINGS
from stream.live.services import Services
from stream.live.session_store import faust_store_options, session_table_options
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


def faust_datadir(settings: Settings) -> dict[str, Any]:
    """Faust's own folder (``<datadir>/v1``, made when the app starts) under the data directory:
    Faust's default, ``<app_id>-data``, is relative to wherever the worker was started."""
    if settings.data_dir is None:
        return {}
    parent = Path(settings.data_dir) / "faust"
    parent.mkdir(parents=True, exist_ok=True)
    return {"datadir": str((parent / settings.app_id).resolve())}


def faust_options(settings: Settings) -> dict[str, Any]:
    return dict(
        broker=settings.faust_broker,
        broker_credentials=broker_credentials(settings),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,              # ensure_topics() made them, with their partition counts
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,   # 0: a batch's sends go at once (issue 13)
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_wait_empty=False,               # an in-flight batch checks for a rebalance itself
        web_enabled=settings.web_enabled,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        **FAUST_VIEW_SETTINGS,                  # no Faust view: /table would serve any shopper's session
        autodiscover=False,
        key_serializer="raw",                   # shopstream (de)serialises with orjson itself
        value_serializer="raw",
        table_cleanup_interval=60.0,
        stream_buffer_maxsize=settings.buffer_events,   # Faust's 4,096 stalled a loaded worker (issue 13)
        logging_config=None,
        **faust_store_options(settings),        # RocksDB on disk by default; memory for tests
        **faust_datadir(settings),
    )


def create_app(settings: Settings, services: Services) -> Any:
    """A Faust app whose agent turns events into recommendations with ``services``."""
    import faust

    from stream.live.faust_compat import (SessionTable, install_batched_drain, install_changelog_fetch_pause,
                                          install_fetch_max_wait, install_skip_ack_guard, only_own_web_pages,
                                          take_batches)

    install_changelog_fetch_pause()                   # a changelog Faust does not read is not fetched
    install_skip_ack_guard(settings.events_topic)     # Faust may not ack an event it skipped (issue #9)
    install_batched_drain()                           # one wait per fetch, not four tasks per message (issue 13)
    install_fetch_max_wait(settings.fetch_max_wait_ms)   # from the first fetch on, not after ready
    app = faust.App(settings.app_id, **faust_options(settings))
    if settings.web_enabled:
        only_own_web_pages(app)                       # /health, /ready, /metrics and nothing else
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
               partitions=settings.partitions)
    events = app.topic(settings.events_topic, **raw)
    table = app.Table(SESSIONS_TABLE, default=None, partitions=settings.partitions,
                      key_type=bytes, value_type=bytes, **session_table_options(settings))
    sessions = SessionTable(table)
    pipeline = build_pipeline(settings, services)
    batches = LiveBatches(pipeline, app=app, sessions=sessions, events_topic=settings.events_topic,
                          recommendations_topic=settings.recommendations_topic,
                          dead_letter_topic=settings.dead_letter_topic,
                          dead_letter_max_bytes=settings.dead_letter_max_bytes,
                          feedback_topic=settings.resolved_feedback_topic)
    catalog = start_catalog_sync(app, services, settings)     # every worker applies every catalogue update
    models = None
    if not settings.variants and settings.follow_models:      # variants set by hand win over the topic
        from stream.live.model_follow import start_model_follower

        models = start_model_follower(app, services, settings, catalog)

    @app.agent(events, name="recommend")
    async def recommend(stream):  # noqa: ANN001 - faust injects the stream
        within = settings.batch_wait_ms / 1000.0 or 0.001
        await catalog.wait_caught_up()      # events are processed against the whole catalogue
        batches.stream = stream
        async for batch in take_batches(stream, settings.batch_size, within):   # no wait when none is waiting
            await batches.handle(batch)

    @app.task
    async def drop_faust_monitor() -> None:
        """Faust's Monitor sensor keeps per-event statistics for Faust's own web views, which a
        worker does not serve (its /metrics is shopstream's); every event pays for them on the
        event loop. Removed (public ``app.sensors``): +4.5% events/s with 2,000 shoppers (issue 13)."""
        if app.monitor in app.sensors:
            app.sensors.remove(app.monitor)

    @app.timer(interval=0.25)
    async def retry_held() -> None:
        await batches.retry_held()

    @app.on_partitions_revoked.connect
    async def release_revoked(app, revoked, **kwargs) -> None:  # noqa: ANN001 - faust signal
        batches.release({tp.partition for tp in revoked if tp.topic == settings.events_topic})

    @app.timer(interval=settings.session_sweep_interval_s)
    async def sweep_sessions() -> None:
        n = await batches.sweep(settings.session_retention_s)
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
            "catalog_healthy": catalog.healthy,
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

    app.shopstream = {"services": services, "batches": batches, "sessions": sessions, "catalog": catalog,
                      "models": models}
    return app


def build_pipeline(settings: Settings, services: Services) -> Pipeline:
    """The pipeline core as this worker runs it (replay builds its own the same way)."""
    pseudonymise = pseudonymise_id = None
    if settings.pseudonymise_key:
        from stream.core.pseudonyms import pseudonymiser

        pseudonymise = pseudonymiser(str(settings.pseudonymise_key))
        pseudonymise_id = pseudonymise.user_id
    fail = frozenset(x.strip() for x in settings.fault_event_ids.split(",") if x.strip())
    if fail:
        log.warning("TEST HOOK: the encoder fails for %d event id(s) (SHOPSTREAM_FAULT_EVENT_IDS)", len(fail))
    from stream.core.session_state import FeedbackHorizon

    return Pipeline(validator=services.validator, recommender=services.variants or services.recommender,
                    limits=services.limits,
                    horizon=FeedbackHorizon(settings.feedback_horizon_events, settings.feedback_horizon_s),
                    metrics=services.metrics, pseudonymise=pseudonymise, pseudonymise_id=pseudonymise_id,
                    partitioner=settings.partitioner, partitions=settings.partitions,
                    hold_unknown_s=settings.unknown_product_hold_s, fail_event_ids=fail)

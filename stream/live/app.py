"""The Faust app, built by a factory from one settings object (no module-level singleton)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from stream.core.pipeline import Pipeline
from stream.errors import StateStoreError
from stream.live.batches import LiveBatches
from stream.live.catalog_sync import start_catalog_sync
from stream.live.faust_compat import FAUST_VIEW_SETTINGS
from stream.live.services import Services
from stream.live.session_store import RecoveryCounter, faust_store_options, session_table_options
from stream.ops.topics import SESSIONS_TABLE
from stream.settings import Settings

log = logging.getLogger(__name__)

STOP_BATCH_WAIT_S = 8.0     # a clean stop waits this long for the batch in flight (docker stop gives 10 s)
_app_class: Any = None


def app_class() -> Any:
    """``faust.App`` with a clean stop that lets the batch in flight finish first.

    Faust stops an app by stopping its fetcher, clearing the agents' queues and stopping its
    tables (``App.on_stop``), then its children in reverse start order: agents (cancelled), the
    consumer (whose ``on_stop`` commits the acked offsets), the producer. A batch in flight would
    be cancelled between publishing its recommendations and acking its events, and the restarted
    worker would publish them again. ``on_stop`` -- Faust's override point -- first waits for that
    batch (:meth:`LiveBatches.finish`), so its acks are in the consumer's final commit.
    """
    global _app_class
    if _app_class is None:
        import faust

        class ShopstreamApp(faust.App):
            shopstream_batches: Any = None

            async def on_stop(self) -> None:
                batches = self.shopstream_batches
                if batches is not None:
                    t0 = time.monotonic()
                    if await batches.finish(STOP_BATCH_WAIT_S):
                        log.info("stopping: the batch in flight finished in %.2fs; its offsets are committed "
                                 "with the consumer's last commit", time.monotonic() - t0)
                    else:
                        log.warning("stopping: the batch in flight did not finish within %.0fs; its events are "
                                    "not acked and will be processed again after the restart", STOP_BATCH_WAIT_S)
                await super().on_stop()

        _app_class = ShopstreamApp
    return _app_class


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
        stream_processing_timeout=settings.stall_log_after_s,   # Faust's stall check (its livelock detector)
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
        consumer_max_fetch_size=settings.fetch_partition_max_bytes,   # aiokafka's max_partition_fetch_bytes
        logging_config=None,
        **faust_store_options(settings),        # RocksDB on disk by default; memory for tests
        **faust_datadir(settings),
    )


def create_app(settings: Settings, services: Services) -> Any:
    """A Faust app whose agent turns events into recommendations with ``services``."""
    from stream.live.faust_compat import (SessionTable, install_batched_drain, install_bulk_restore,
                                          install_changelog_apply_guard, install_changelog_fetch_pause,
                                          install_fetch_max_wait, install_skip_ack_guard, only_own_web_pages,
                                          restore_progress, take_batches)
    from stream.live.restore import BulkRestore

    install_changelog_fetch_pause()                   # a changelog Faust does not read is not fetched
    install_changelog_apply_guard()                   # a failed write of recovered records loses nothing
    install_skip_ack_guard(settings.events_topic)     # Faust may not ack an event it skipped (issue #9)
    install_batched_drain()                           # one wait per fetch, not four tasks per message (issue 13)
    install_fetch_max_wait(settings.fetch_max_wait_ms,   # from the first fetch on, not after ready
                           max_bytes=settings.fetch_max_bytes)
    app = app_class()(settings.app_id, **faust_options(settings))
    if settings.web_enabled:
        only_own_web_pages(app)                       # /health, /ready, /metrics and nothing else
    counter = RecoveryCounter()
    install_bulk_restore(BulkRestore(settings, min_records=settings.restore_bulk_min_records,
                                     on_records=counter.add))   # an empty partition in bulk (issue 27)
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
               partitions=settings.partitions)
    events = app.topic(settings.events_topic, **raw)
    table = app.Table(SESSIONS_TABLE, default=None, partitions=settings.partitions,
                      key_type=bytes, value_type=bytes, **session_table_options(settings, counter))
    sessions = SessionTable(table)
    pipeline = build_pipeline(settings, services)
    batches = LiveBatches(pipeline, app=app, sessions=sessions, events_topic=settings.events_topic,
                          recommendations_topic=settings.recommendations_topic,
                          dead_letter_topic=settings.dead_letter_topic,
                          dead_letter_max_bytes=settings.dead_letter_max_bytes,
                          feedback_topic=settings.resolved_feedback_topic)
    driver_faults = {x.strip() for x in settings.fault_driver_event_ids.split(",") if x.strip()}
    if driver_faults:
        log.warning("TEST HOOK: the driver raises once after publishing each of %d event id(s) "
                    "(SHOPSTREAM_FAULT_DRIVER_EVENT_IDS)", len(driver_faults))
        batches.fault_driver_ids = driver_faults
    app.shopstream_batches = batches
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
        while True:
            try:
                async for batch in take_batches(stream, settings.batch_size, within):   # no wait when none is waiting
                    await batches.handle(batch)
                return
            except Exception as exc:  # noqa: BLE001 - recovered in-process (docs/operations.md)
                if stream.should_stop or app.should_stop:
                    raise
                # Faust would restart the agent with the events it took neither processed nor
                # acked, and go on past them: start again from the committed offsets instead.
                await batches.recover(exc)

    @app.task
    async def drop_faust_monitor() -> None:
        """Faust's Monitor sensor keeps per-event statistics for Faust's own web views, which a
        worker does not serve (its /metrics is shopstream's); every event pays for them on the
        event loop. Removed (public ``app.sensors``): +4.5% events/s with 2,000 shoppers (issue 13)."""
        if app.monitor in app.sensors:
            app.sensors.remove(app.monitor)

    @app.timer(interval=0.25)
    async def retry_held() -> None:
        try:
            await batches.retry_held()
        except Exception as exc:  # noqa: BLE001 - as in the agent: from the committed offsets again
            await batches.recover(exc)

    @app.on_partitions_revoked.connect
    async def release_revoked(app, revoked, **kwargs) -> None:  # noqa: ANN001 - faust signal
        batches.release({tp.partition for tp in revoked if tp.topic == settings.events_topic})

    @app.timer(interval=settings.session_sweep_interval_s)
    async def sweep_sessions() -> None:
        try:
            n = await batches.sweep(settings.session_retention_s)
        except StateStoreError as exc:        # the next batch's writes stall on it; a sweep can wait
            log.warning("session sweep skipped: %s", exc)
            return
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
            "state_store_ok": batches.store_fault is None,
            "sends_ok": batches.sends.waited() < settings.send_unready_after_s,
        }
        return checks

    def reasons() -> dict[str, str]:
        """Why the store and send checks fail, for an operator reading /ready."""
        out = {}
        fault = batches.store_fault
        if fault is not None:
            out["state_store_ok"] = (f"{fault.store} store failing on partition {fault.partition} for "
                                     f"{time.monotonic() - fault.since:.0f} s: {fault.reason}")
        waited = batches.sends.waited()
        if waited >= settings.send_unready_after_s:
            out["sends_ok"] = (f"sends to Kafka undelivered for {waited:.0f} s "
                               f"(SHOPSTREAM_SEND_UNREADY_AFTER_S={settings.send_unready_after_s:g}): "
                               f"{batches.sends.error or 'no answer from the broker'}")
        return out

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
        why = reasons() if not ok else {}
        return web.json({"ready": ok, **checks, **({"reasons": why} if why else {}),
                         "index_version": services.index.current.version,
                         "model_version": services.encoder.model_version,
                         "restore": restore_progress(app)}, status=200 if ok else 503)

    def consumer_lag() -> dict:
        from stream.ops.prometheus import faust_consumer_lag

        return faust_consumer_lag(app, settings.events_topic) if app.consumer else {}

    services.metrics.watch_lag(consumer_lag)
    services.metrics.watch_send_wait(batches.sends.waited)
    services.metrics.watch_restore(lambda: restore_progress(app))

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

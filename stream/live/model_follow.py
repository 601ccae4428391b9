"""Follow the ``models`` topic: serve its ``default`` as the control and its ``candidate`` beside it.

Every worker reads the whole compacted topic (one partition) with its own consumer, outside the
Faust group, like the catalogue sync. When the records it serves change:

* the latest ``default`` record becomes the ``control`` variant (before there is one, the worker's
  own configured session model is the control);
* the latest ``candidate`` becomes the ``candidate`` variant with its ``share`` of shoppers;
  ``withdrawn`` or ``retired`` (or a candidate promoted to default) takes it out.

A model and the index of its product space are loaded together, off the event loop; a model whose
index is missing or made for another space is refused and logged, and the worker keeps what it
serves. The new set of variants replaces the old one atomically between two batches
(:meth:`VariantRecommender.set_arms`), after the catalogue updates the new index lacks are applied
to it, so no event is lost or recommended with half a model.

With a registry (``SHOPSTREAM_REGISTRY``) a record names its model and index by content address
and sha256: they are fetched into this host's cache and verified before anything is loaded; an
artifact that cannot be fetched or fails the check is refused (logged, counted in
``shopstream_registry_refused_total``) and the worker keeps what it serves; when the registry could
not be reached at all it is tried again, backing off from 5 s to 2 minutes, until it answers or the
topic says something newer. A record of any other
shape is logged once with its partition and offset, counted
(``shopstream_control_records_skipped_total{kind="models"}``) and skipped.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stream.core.variants import Arm
from stream.errors import ConfigError, RegistryError
from stream.live import heap
from stream.live.services import Services, load_arm
from stream.ops.models import ModelRecord, read_log, serving
from stream.settings import Settings

log = logging.getLogger(__name__)

CONTROL, CANDIDATE = "control", "candidate"


def desired(records: dict[str, ModelRecord]) -> tuple[ModelRecord | None, ModelRecord | None]:
    """(default, candidate) the worker should serve; a candidate with no share serves nobody."""
    default, candidate = serving(records)
    if candidate is not None and (candidate.share <= 0 or (default and candidate.version == default.version)):
        candidate = None
    return default, candidate


class ModelFollower:
    def __init__(self, settings: Settings, services: Services, catalog: Any = None) -> None:
        self.settings = settings
        self.services = services
        self.catalog = catalog                      # CatalogSync: its updates go into a new index
        self.records: dict[str, ModelRecord] = {}
        self.serving: tuple[str | None, str | None, float] = (None, None, 0.0)   # default, candidate, share
        self.swaps = 0
        self._base = services.variants.arms[0] if services.variants else None    # the worker's own model
        self._loaded: dict[str, Arm] = {}           # version -> arm, reused while served
        if self._base is not None:                  # a host that joined with the default is serving it
            self._loaded[self._base.recommender.session_encoder.model_version] = self._base
        self._registry = None
        self._invalid_seen: set[tuple[int, int]] = set()   # (partition, offset) logged once
        self.refused: dict[str, str] = {}           # version -> why its artifact was refused
        self.retry_at: float | None = None          # monotonic time of the next try after an unreachable registry
        self._retry_s = 5.0
        self._consumer = None
        self._executor: ThreadPoolExecutor | None = None

    # -- deciding and swapping (pure of Kafka; tests call these) --------------------------------
    def apply(self, pairs: list[tuple]) -> bool:
        """Take (key, value) or (key, value, partition, offset[, timestamp ms]) records of the topic
        in order; swap the variants if what is to be served changed. True when a swap happened."""
        written_ms = max((row[4] for row in pairs if len(row) >= 5 and row[4]), default=None)
        for row in pairs:
            found, bad = read_log([row])
            for b in bad:
                where = (b.partition, b.offset) if len(row) >= 4 else None
                if where is None or where not in self._invalid_seen:
                    if where is not None:
                        self._invalid_seen.add(where)
                    log.warning("models topic: skipped an invalid record on %s partition %d offset %d (key %r): %s",
                                self.settings.models_topic, b.partition, b.offset, b.key, b.reason)
                    self.services.metrics.on_control_record_skipped("models", "invalid")
            self.records.update(found)
            if not bad and row[0] is not None and row[1] is None:
                self.records.pop(row[0].decode("utf-8", "replace"), None)
        default, candidate = desired(self.records)
        want = (default.version if default else None, candidate.version if candidate else None,
                candidate.share if candidate else 0.0)
        if want == self.serving:
            self.retry_at = None
            return False
        try:
            arms = self._arms_for(default, candidate)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be served never stops the stream
            if isinstance(exc, RegistryError):
                self.services.metrics.on_artifact_refused(exc.reason)
            log.error("models topic: cannot serve default=%s candidate=%s, keeping %s: %s", want[0], want[1],
                      [f"{a.name}={a.recommender.session_encoder.model_version}" for a in self.services.variants.arms],
                      exc)
            if isinstance(exc, RegistryError) and exc.reason == "unreachable":
                # the registry may come back: tried again (backing off) while nothing newer is said
                self.retry_at, self._retry_s = time.monotonic() + self._retry_s, min(self._retry_s * 2, 120.0)
                return False
            self.serving = want                     # not retried until the topic says something new
            self.retry_at = None
            return False
        self.retry_at, self._retry_s = None, 5.0
        with self.services.catalog_lock:            # no catalogue update between catch-up and swap
            for arm in arms:
                self._catch_up(arm)
            self.services.variants.set_arms(arms)
        self._loaded = {a.recommender.session_encoder.model_version: a for a in arms}
        self.serving = want
        self.swaps += 1
        after = "" if written_ms is None else f", {time.time() - written_ms / 1000:.2f}s after the record was written"
        log.info("models topic: now serving %s%s", ", ".join(
            f"{a.name}={a.recommender.session_encoder.model_version} ({a.weight:.0%})" for a in arms), after)
        heap.refreeze("a model swap")             # the models let go may sit in reference cycles
        return True

    def _arms_for(self, default: ModelRecord | None, candidate: ModelRecord | None) -> list[Arm]:
        share = candidate.share if candidate else 0.0
        control = self._arm(CONTROL, 1.0 - share, default)
        arms = [control]
        if candidate is not None:
            arms.append(self._arm(CANDIDATE, share, candidate))
        return arms

    def _arm(self, name: str, weight: float, record: ModelRecord | None) -> Arm:
        if record is None:
            base = self._base
            return dataclasses.replace(base, name=name, weight=weight,
                                       recommender=dataclasses.replace(base.recommender, variant=name))
        have = self._loaded.get(record.version)
        if have is not None:
            return dataclasses.replace(have, name=name, weight=weight,
                                       recommender=dataclasses.replace(have.recommender, variant=name))
        artifact, index = record.artifact, record.index
        if record.artifact_sha256 or record.index_sha256:
            artifact, index = self.fetch(record)
        elif self.settings.registry and (artifact or index):
            raise RegistryError(f"model {record.version} names {artifact or index!r}, not an address in the "
                                f"registry with its sha256: a host with a registry loads only from it", "address")
        arm = load_arm(self.settings, self.services, name, weight, artifact or "pooling", index)
        loaded = arm.recommender.session_encoder.model_version
        if record.artifact and loaded != record.version:
            raise ConfigError(f"the artifact at {record.artifact} is {loaded}, the record says {record.version}")
        arm.recommender.popularity = self.services.recommender.popularity
        return arm

    def fetch(self, record: ModelRecord) -> tuple[str, str]:
        """The record's model and index folders in this host's cache, fetched and verified."""
        from stream.ops.registry import Registry

        if not self.settings.registry:
            raise RegistryError(f"model {record.version} is in a registry and SHOPSTREAM_REGISTRY is not set",
                                "config")
        if self._registry is None:
            self._registry = Registry(self.settings.registry, self.settings.resolved_registry_cache,
                                      metrics=self.services.metrics)
        try:
            artifact = str(self._registry.fetch(record.artifact, record.artifact_sha256)) if record.artifact else ""
            index = str(self._registry.fetch(record.index, record.index_sha256)) if record.index else ""
        except RegistryError as exc:
            self.refused[record.version] = str(exc)
            raise
        return artifact, index

    def _catch_up(self, arm: Arm) -> None:
        holder = arm.recommender.index
        if self.catalog is None or holder is self.services.index or getattr(holder, "caught_up", False):
            return
        from stream.core.catalog import apply_updates

        updates = [dataclasses.replace(u, vector=None) for u in self.catalog.applied.values()]
        updates.sort(key=lambda u: (u.partition, u.offset))
        if updates:                                  # re-embedded in this model's product space
            apply_updates(holder.current, updates, arm.products.encode)
        holder.caught_up = True

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="models")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=f"{s.app_id}-models", **s.kafka_client_options())
        await self._consumer.start()
        try:
            parts = None
            for _ in range(50):
                if s.models_topic in await self._consumer.topics():
                    parts = self._consumer.partitions_for_topic(s.models_topic)
                    if parts:
                        break
                await asyncio.sleep(0.1)
            tps = [TopicPartition(s.models_topic, p) for p in sorted(parts or {0})]
            self._consumer.assign(tps)
            for tp in tps:
                await self._consumer.seek_to_beginning(tp)
            log.info("following the models topic %s", s.models_topic)
            while True:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=500)
                pairs = [(m.key, m.value, m.partition, m.offset, m.timestamp)
                         for msgs in batch.values() for m in sorted(msgs, key=lambda m: m.offset)]
                if pairs or (self.retry_at is not None and time.monotonic() >= self.retry_at):
                    await loop.run_in_executor(self._executor, self.apply, pairs)
        finally:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
            self._executor.shutdown(wait=False)


def start_model_follower(app: Any, services: Services, settings: Settings, catalog: Any = None) -> ModelFollower:
    """Run a :class:`ModelFollower` as a supervised task of the Faust ``app``."""
    follower = ModelFollower(settings, services, catalog)

    @app.task
    async def follow_models() -> None:
        delay = 1.0
        while True:
            try:
                await follower.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the stream goes on with the variants it has
                log.exception("following the models topic failed; retrying in %.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    return follower

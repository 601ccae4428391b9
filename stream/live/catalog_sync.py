"""Catalogue updates as a stream, and snapshot hot swap.

The compacted ``catalog`` topic holds one record per product: key = product id, value = the
product as JSON (``index.Product`` fields), and a tombstone (no value) deletes the product.
Every worker holds a full replica of the index, so every worker applies every update: each reads
all partitions of the topic with its own consumer, outside the Faust consumer group.

Updates are applied in batches: changed titles (brand, category) are re-embedded with the worker's
text encoder in one call; price and stock changes touch only the product record. A deleted or
out-of-stock product is filtered from every search from then on.

Hot swap: the worker polls the snapshot path (``index_watch_s``). When its manifest names a new
version, the snapshot is loaded beside the live index, the catalogue updates it does not already
hold are re-applied to it, and it replaces the live one atomically (``IndexHolder.swap``); a
snapshot that is refused (corrupt, other dimension or model) is logged and the live one kept.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from index import CatalogError, SnapshotError, load_snapshot, read_manifest
from stream.core.catalog import CatalogUpdate, apply_updates, parse_record
from stream.live.services import Services
from stream.settings import Settings

log = logging.getLogger(__name__)


class CatalogSync:
    """Reads the whole catalog topic, applies it to the live index, and hot-swaps snapshots."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        self.applied: dict[str, CatalogUpdate] = {}     # the latest applied update per product
        self.caught_up = False                           # every update present at start applied
        self.positions: dict[int, int] = {}
        self.swaps = 0
        self._consumer = None
        self._executor: ThreadPoolExecutor | None = None
        self._refused: tuple[str, float] | None = None
        self._next_watch = 0.0

    # -- applying updates ---------------------------------------------------------------------
    def apply_records(self, records: Iterable[Any]) -> int:
        updates = []
        for r in records:
            try:
                updates.append(parse_record(r.key, r.value, r.partition, r.offset))
            except CatalogError as exc:
                log.error("skipping catalogue record %s/%d: %s", r.partition, r.offset, exc)
        if not updates:
            return 0
        t0 = time.perf_counter()
        with self.services.catalog_lock:       # every variant's index, in its own product space
            spaces = self.services.product_spaces()
            done = apply_updates(self.services.index.current, updates, self.services.products.encode)
            for holder, products in spaces[1:]:
                apply_updates(holder.current, updates, products.encode)
            for u in done:
                self.applied[u.product_id] = u
        index = self.services.index.current
        self.services.metrics.set_index(index.version, len(index))
        log.info("applied %d catalogue update(s) to index %s in %.0f ms", len(done), index.version,
                 (time.perf_counter() - t0) * 1e3)
        return len(done)

    # -- hot swap -----------------------------------------------------------------------------
    def check_snapshot(self) -> bool:
        """Swap to the snapshot at the index path if its version is new; True when swapped."""
        path = self.settings.resolved_index_path
        try:
            manifest = read_manifest(path)
            stamp = (manifest["version"], (path / "manifest.json").stat().st_mtime)
        except (SnapshotError, OSError):
            return False                     # absent or being replaced: look again next time
        if manifest["version"] == self.services.index.current.version or stamp == self._refused:
            return False
        return self.swap_to(path, stamp)

    def swap_to(self, path, stamp: tuple[str, float] | None = None) -> bool:
        encoder = self.services.products
        t0 = time.perf_counter()
        try:
            fresh = load_snapshot(path, dim=encoder.dim, model_version=encoder.model_version,
                                  device=self.settings.index_device)
        except SnapshotError as exc:
            self._refused = stamp
            log.error("refused index snapshot at %s, keeping %s: %s", path,
                      self.services.index.current.version, exc)
            return False
        offsets = read_manifest(path).get("catalog_offsets") or {}
        replay = [u for u in self.applied.values() if u.offset >= int(offsets.get(str(u.partition), 0))]
        replay.sort(key=lambda u: (u.partition, u.offset))
        if replay:
            apply_updates(fresh, replay, encoder.encode)
        old = self.services.index.swap(fresh)
        self.swaps += 1
        self.services.metrics.set_index(fresh.version, len(fresh))
        log.info("swapped index %s -> %s (%d products, %d catalogue update(s) re-applied) in %.2fs",
                 old.version, fresh.version, len(fresh), len(replay), time.perf_counter() - t0)
        return True

    # -- the loop -----------------------------------------------------------------------------
    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=f"{s.app_id}-catalog", **s.kafka_client_options())
        await self._consumer.start()
        parts = None
        for _ in range(50):                      # topics() refreshes the metadata of every topic
            if s.catalog_topic in await self._consumer.topics():
                parts = self._consumer.partitions_for_topic(s.catalog_topic)
                if parts:
                    break
            await asyncio.sleep(0.1)
        tps = [TopicPartition(s.catalog_topic, p) for p in sorted(parts or {0})]
        self._consumer.assign(tps)
        offsets = self._snapshot_offsets()
        for tp in tps:
            start = int(offsets.get(str(tp.partition), 0))
            if start:
                self._consumer.seek(tp, start)
            else:
                await self._consumer.seek_to_beginning(tp)
        self._end_at_start = {tp.partition: off for tp, off in (await self._consumer.end_offsets(tps)).items()}
        log.info("catalogue sync reads %s (%d partition(s)) from %s", s.catalog_topic, len(tps),
                 offsets or "the beginning")

    def _snapshot_offsets(self) -> dict:
        try:
            return read_manifest(self.settings.resolved_index_path).get("catalog_offsets") or {}
        except SnapshotError:
            return {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.start()
        try:
            while True:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.catalog_batch_size)
                records = [m for msgs in batch.values() for m in msgs]
                if records:
                    await loop.run_in_executor(self._executor, self.apply_records, records)
                    for m in records:
                        self.positions[m.partition] = m.offset + 1
                if not self.caught_up and all(self.positions.get(p, 0) >= end or end == 0
                                              for p, end in self._end_at_start.items()):
                    self.caught_up = True
                    log.info("catalogue sync caught up: %d update(s) applied", len(self.applied))
                watch = self.settings.index_watch_s
                if watch and time.monotonic() >= self._next_watch:
                    self._next_watch = time.monotonic() + watch
                    await loop.run_in_executor(self._executor, self.check_snapshot)
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


def start_catalog_sync(app: Any, services: Services, settings: Settings) -> CatalogSync:
    """Run a :class:`CatalogSync` as a task of the Faust ``app`` (started once tables recover)."""
    sync = CatalogSync(settings, services)

    @app.task
    async def catalog_sync() -> None:
        try:
            await sync.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the stream goes on with the index it has
            log.exception("catalogue sync stopped; the worker keeps serving index %s",
                          services.index.current.version)

    return sync

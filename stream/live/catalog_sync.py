"""Catalogue updates as a stream, and snapshot hot swap.

The compacted ``catalog`` topic holds one record per product: key = product id, value = the
product as JSON (``index.Product`` fields), and a tombstone (no value) deletes the product.
Every worker holds a full replica of the index, so every worker applies every update: each reads
all partitions of the topic with its own consumer, outside the Faust consumer group.

Updates are applied in batches: changed titles (brand, category) are re-embedded with the worker's
text encoder in one call; price and stock changes touch only the product record. A deleted or
out-of-stock product is filtered from every search from then on.

The catalogue is a bootstrapped table: :attr:`CatalogSync.caught_up` turns true (and
:meth:`CatalogSync.wait_caught_up` returns) once the consumer's position on every partition has
reached the end offset the topic had when sync started (checked with a fetch, as some brokers
list a short end), so the agent can hold its first batch until every product published before the
worker started is in the index. That holds also when the snapshot already covers the whole topic
(nothing is delivered) and when the topic is empty.

Sync is supervised: whatever fails (broker, encoder, a bug), the loop is restarted with an
exponential backoff from the positions it had applied, never from the start, and never silently:
:attr:`CatalogSync.healthy`, :attr:`CatalogSync.restarts` and :attr:`CatalogSync.last_error` say
how it goes, for ``/ready`` and the ``shopstream_catalog_sync_*`` metrics.

Each batch of recommendations reads one consistent index: the recommender holds
``IndexHolder.lock`` for a batch, and an update embeds new titles outside that lock and changes
the index (and swaps it) inside it.

Hot swap: the worker polls the snapshot path (``index_watch_s``). When its manifest names a new
version, the snapshot is loaded beside the live index, the catalogue updates it does not already
hold are re-applied to it, and it replaces the live one atomically (``IndexHolder.swap``); a
snapshot that is refused (corrupt, other dimension or model) is logged and the live one kept.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from index import CatalogError, SnapshotError, load_snapshot, read_manifest
from stream.core.catalog import CatalogUpdate, apply_prepared, parse_record, prepare_updates
from stream.live import heap
from stream.live.services import Services
from stream.settings import Settings

log = logging.getLogger(__name__)

CATALOG_FETCH_WAIT_MS = 100     # a fetch of the catalog topic waits at most this long for data
END_PROBE_TIMEOUT_S = 5.0       # how long the fetch that checks the topic's end may take


class CatalogSync:
    """Reads the whole catalog topic, applies it to the live index, and hot-swaps snapshots."""

    #: After a failure the loop waits this long before it starts again, doubling up to the max;
    #: a run that lasted longer than the max starts the next wait from the min again.
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0

    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        self.applied: dict[str, CatalogUpdate] = {}     # the latest applied update per product
        self.positions: dict[int, int] = {}              # per partition: the next offset to apply
        self.caught_up = False                           # every update present at start applied
        self.healthy = False                             # the loop runs (False while it waits to restart)
        self.restarts = 0
        self.last_error: str | None = None
        self.bootstrap_s: float | None = None            # from start to caught up
        self.swaps = 0
        self.skipped = 0                                 # records not valid, logged and skipped
        self._reported: dict[int, int] = {}              # per partition: the last skipped offset logged
        self._caught_up = asyncio.Event()
        self._end_at_start: dict[int, int] | None = None
        self._started_at: float | None = None
        self._consumer = None
        self._tps: list = []
        self._executor: ThreadPoolExecutor | None = None
        self._refused: tuple[str, float] | None = None
        self._next_watch = 0.0

    async def wait_caught_up(self) -> None:
        """Return once every catalogue update present when sync started is in the index."""
        await self._caught_up.wait()

    # -- applying updates ---------------------------------------------------------------------
    def apply_records(self, records: Iterable[Any]) -> int:
        """Parse and apply a batch of records. A record that is not a valid update, or whose update
        fails on its own while others of its batch apply, is logged once (topic, partition, offset),
        counted (``shopstream_control_records_skipped_total{kind="catalog"}``) and skipped; a batch
        in which every update fails raises (something beyond the records: supervised restart)."""
        updates = []
        for r in records:
            try:
                updates.append(parse_record(r.key, r.value, r.partition, r.offset))
            except CatalogError as exc:
                self._skip(r.topic, r.partition, r.offset, getattr(exc, "reason", "invalid"), str(exc))
            except Exception as exc:  # noqa: BLE001 - no record may stop the follower
                self._skip(r.topic, r.partition, r.offset, "unparseable", f"{type(exc).__name__}: {exc}")
        if not updates:
            return 0
        t0 = time.perf_counter()
        try:
            done = self._apply(updates)
        except Exception as exc:  # noqa: BLE001 - isolated below
            if len(updates) == 1:
                raise
            log.warning("a batch of %d catalogue update(s) failed (%s: %s); applying them one by one",
                        len(updates), type(exc).__name__, exc)
            done, failed = [], []
            for u in updates:
                try:
                    done += self._apply([u])
                except Exception as one:  # noqa: BLE001
                    failed.append((u, one))
            if not done:
                raise
            for u, one in failed:
                self._skip(self.settings.catalog_topic, u.partition, u.offset, "apply_failed",
                           f"product {u.product_id!r}: {type(one).__name__}: {one}")
        index = self.services.index.current
        self.services.metrics.set_index(index.version, len(index))
        log.info("applied %d catalogue update(s) to index %s in %.0f ms", len(done), index.version,
                 (time.perf_counter() - t0) * 1e3)
        return len(done)

    def _apply(self, updates: list[CatalogUpdate]) -> list[CatalogUpdate]:
        services = self.services
        lock = getattr(services, "catalog_lock", None) or contextlib.nullcontext()
        with lock:                             # the live index, then every variant's in its own space
            spaces = services.product_spaces() if hasattr(services, "product_spaces") else []
            done = self._apply_to(self.services.index, updates, self.services.products.encode)
            for holder, products in spaces[1:]:
                self._apply_to(holder, updates, products.encode)
            for u in done:
                self.applied[u.product_id] = u
        return done

    def _skip(self, topic: str, partition: int, offset: int, reason: str, detail: str) -> None:
        """Log (once per record, also when a restart reads it again) and count a skipped record."""
        if offset <= self._reported.get(partition, -1):
            return
        self._reported[partition] = offset
        self.skipped += 1
        self.services.metrics.on_control_record_skipped("catalog", reason)
        log.error("skipped catalogue record %s/%d@%d (%s): %s", topic, partition, offset, reason, detail[:300])

    @staticmethod
    def _apply_to(holder, updates, encode) -> list[CatalogUpdate]:
        while True:
            index = holder.current
            prepared = prepare_updates(index, updates, encode)     # embeds: no lock
            with holder.lock:
                if holder.current is index:      # else swapped meanwhile: prepare for the new one
                    return apply_prepared(prepared)

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
        if replay:                           # the fresh index is not live yet: no lock needed
            apply_prepared(prepare_updates(fresh, replay, encoder.encode))
        with self.services.index.lock:       # never in the middle of a batch
            old = self.services.index.swap(fresh)
        self.swaps += 1
        self.services.metrics.set_index(fresh.version, len(fresh))
        log.info("swapped index %s -> %s (%d products, %d catalogue update(s) re-applied) in %.2fs",
                 old.version, fresh.version, len(fresh), len(replay), time.perf_counter() - t0)
        del old
        heap.refreeze("an index swap")            # the index let go may sit in reference cycles
        return True

    # -- the supervised loop ------------------------------------------------------------------
    async def run(self) -> None:
        """Sync until cancelled; every failure is logged, counted and followed by a restart."""
        if self._started_at is None:
            self._started_at = time.monotonic()
        backoff = self.backoff_min_s
        while True:
            began = time.monotonic()
            try:
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - supervised: any failure restarts the loop
                self._set_healthy(False)
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.services.metrics.on_catalog_restart()
                if time.monotonic() - began > self.backoff_max_s:
                    backoff = self.backoff_min_s         # it ran well for a while: start over
                log.exception("catalogue sync failed (restart %d in %.1fs, resuming from %s); the worker "
                              "keeps serving index %s", self.restarts, backoff, self.positions or "the start",
                              self.services.index.current.version)
            finally:
                await self._stop_quietly()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _sync(self) -> None:
        from aiokafka.errors import CorruptRecordException

        unreadable = (CorruptRecordException, UnicodeDecodeError)    # a record aiokafka cannot decode
        loop = asyncio.get_running_loop()
        await self.start()
        self._set_healthy(True)
        await self._check_caught_up()
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.catalog_batch_size)
            except unreadable as exc:
                batch = await self._past_unreadable(exc, unreadable)
            records = [m for msgs in batch.values() for m in msgs]
            if records:
                await loop.run_in_executor(self._executor, self.apply_records, records)
            # positions move only once what was read is applied: a restart re-reads a failed batch
            await self._record_positions()
            await self._check_caught_up()
            watch = self.settings.index_watch_s
            if watch and time.monotonic() >= self._next_watch:
                self._next_watch = time.monotonic() + watch
                await loop.run_in_executor(self._executor, self.check_snapshot)

    async def _past_unreadable(self, exc: BaseException, unreadable: tuple) -> dict:
        """Read past a record aiokafka cannot decode.

        aiokafka decodes a whole record batch at once and raises on every fetch of one it cannot
        decode (a header key that is not UTF-8, a corrupt batch): without this the follower would
        restart on it forever and never apply a later record. Each partition is read one record at
        a time; a record that cannot be read is skipped (logged, counted as ``unreadable``) -- the
        records after it in the same producer batch cannot be read either, and go the same way.
        """
        log.warning("the catalogue topic has a record that cannot be decoded (%s: %s); reading one record "
                    "at a time past it", type(exc).__name__, exc)
        out: dict = {}
        for tp in self._tps:
            try:
                out.update(await self._consumer.getmany(tp, timeout_ms=200, max_records=1))
            except unreadable as one:
                offset = await self._consumer.position(tp)
                self._skip(tp.topic, tp.partition, offset, "unreadable", f"{type(one).__name__}: {one}")
                self._consumer.seek(tp, offset + 1)
        return out

    async def start(self) -> None:
        """Connect, assign every partition and seek: to the applied positions on a restart, else to
        the snapshot's catalogue offsets (or the beginning). The first start also takes the end."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=f"{s.app_id}-catalog",
            fetch_max_wait_ms=CATALOG_FETCH_WAIT_MS, **s.kafka_client_options())
        await self._consumer.start()
        parts = None
        for _ in range(50):                      # topics() refreshes the metadata of every topic
            if s.catalog_topic in await self._consumer.topics():
                parts = self._consumer.partitions_for_topic(s.catalog_topic)
                if parts:
                    break
            await asyncio.sleep(0.1)
        self._tps = tps = [TopicPartition(s.catalog_topic, p) for p in sorted(parts or {0})]
        self._consumer.assign(tps)
        if self._end_at_start is None:
            ends = await self._true_end_offsets()
            self._end_at_start = {tp.partition: ends[tp] for tp in tps}
        offsets = self._snapshot_offsets()
        for tp in tps:
            start = self.positions.get(tp.partition, int(offsets.get(str(tp.partition), 0)))
            if start:
                self._consumer.seek(tp, start)
            else:
                await self._consumer.seek_to_beginning(tp)
        await self._record_positions()
        log.info("catalogue sync reads %s (%d partition(s)) from %s, end at start %s", s.catalog_topic,
                 len(tps), self.positions, self._end_at_start)

    async def _true_end_offsets(self) -> dict:
        """End offsets, raised to the high-water mark a fetch from there reports.

        tansu 0.x answers ListOffsets(latest) with the base offset of the last record batch; the
        fetch response carries the real high-water mark (on Apache Kafka the two agree).
        """
        consumer = self._consumer
        listed = await consumer.end_offsets(self._tps)
        for tp in self._tps:
            consumer.seek(tp, listed[tp])
        seen: dict = {}
        deadline = time.monotonic() + END_PROBE_TIMEOUT_S
        while len(seen) < len(self._tps) and time.monotonic() < deadline:
            await consumer.getmany(*self._tps, timeout_ms=200, max_records=1)   # records dropped: we seek after
            for tp in self._tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    seen[tp] = hw
        missing = [tp.partition for tp in self._tps if tp not in seen]
        if missing:
            log.warning("no fetch answer for catalogue partition(s) %s; trusting their listed end", missing)
        return {tp: max(int(listed[tp]), int(seen.get(tp, 0))) for tp in self._tps}

    async def _record_positions(self) -> None:
        for tp in self._tps:
            self.positions[tp.partition] = await self._consumer.position(tp)

    async def _check_caught_up(self) -> None:
        if self.caught_up or self._end_at_start is None:
            return
        if all(self.positions.get(p, 0) >= end for p, end in self._end_at_start.items()):
            self.caught_up = True
            self.bootstrap_s = time.monotonic() - (self._started_at or time.monotonic())
            self._caught_up.set()
            self.services.metrics.set_catalog_synced(True)
            log.info("catalogue sync caught up in %.2fs: %d update(s) applied, positions %s",
                     self.bootstrap_s, len(self.applied), self.positions)

    def _set_healthy(self, healthy: bool) -> None:
        self.healthy = healthy
        self.services.metrics.set_catalog_healthy(healthy)

    def _snapshot_offsets(self) -> dict:
        try:
            return read_manifest(self.settings.resolved_index_path).get("catalog_offsets") or {}
        except SnapshotError:
            return {}

    async def _stop_quietly(self) -> None:
        try:
            await self.stop()
        except Exception:  # noqa: BLE001 - a consumer that fails to close must not end supervision
            log.warning("closing the catalogue consumer failed", exc_info=True)

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


def start_catalog_sync(app: Any, services: Services, settings: Settings) -> CatalogSync:
    """Run a supervised :class:`CatalogSync` as a task of the Faust ``app`` (started once tables recover)."""
    sync = CatalogSync(settings, services)

    @app.task
    async def catalog_sync() -> None:
        await sync.run()

    return sync

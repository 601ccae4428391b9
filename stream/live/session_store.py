"""Where a worker keeps its shoppers' sessions: RocksDB on local disk, or memory for tests.

faust-streaming's RocksDB store (``rocksdb://``, driven by the ``rocksdict`` wheel) keeps one
database per changelog partition under the worker's state directory, together with the changelog
offset it holds. A restarted worker opens them and reads only the changelog written since, instead
of the whole topic; a standby replica (``table_standby_replicas``) keeps the same databases warm on
another worker, so a worker that takes over a dead worker's partitions reads only their tail too.
Memory stays bounded: each partition's database has a block cache and two memtables of a fixed size.

``rocksdict://`` is not a store URL in faust-streaming 0.15.3 (the scheme resolves to the rocksdict
module itself); its RocksDB store is ``rocksdb://`` and uses rocksdict when it is installed. The
driver is named explicitly here all the same.

Functions, called once when a worker builds its Faust app:

- :func:`store_kind`: ``rocksdb`` or ``memory`` from :attr:`Settings.store` (``auto`` is RocksDB
  whenever the worker has a data directory; the choice and any fallback are logged);
- :func:`faust_store_options`: the Faust app settings (``store``, ``tabledir``,
  ``table_standby_replicas``);
- :func:`session_table_options`: the sessions table's RocksDB options and its recovery counter;
- :func:`check_state_dir`: before Faust starts, drop local partitions that are ahead of their
  changelog (a new broker, or a changelog that was deleted), which Faust would refuse to start on,
  and partitions whose bulk restore never finished (``stream.live.restore``).
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.errors import ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)

MB = 1024 * 1024
MIN_PARTITION_CACHE = 8 * MB
_claimed: dict[Path, tuple[Path, Any]] = {}   # state root -> (claimed dir, open lock file), per process


def store_kind(settings: Settings) -> str:
    """``rocksdb`` or ``memory``: where this worker keeps sessions."""
    if settings.store == "memory":
        return "memory"
    try:
        import rocksdict  # noqa: F401
    except ImportError as exc:
        if settings.store == "rocksdb":
            raise ConfigError("store=rocksdb needs the rocksdict wheel: pip install rocksdict") from exc
        log.warning("rocksdict is not installed: sessions are kept in memory and recovered from the "
                    "whole changelog at every start (pip install rocksdict)")
        return "memory"
    if settings.data_dir is None:
        if settings.store == "rocksdb":
            raise ConfigError("store=rocksdb needs a data directory (SHOPSTREAM_DATA_DIR)")
        log.warning("no data directory: sessions are kept in memory")
        return "memory"
    return "rocksdb"


def state_root(settings: Settings) -> Path:
    """The folder under which this consumer group's workers keep their sessions databases."""
    return (Path(settings.data_dir) / "state" / settings.app_id).resolve()


def claim_state_dir(settings: Settings) -> Path:
    """The first ``<state root>/worker-N`` no other live process holds, locked for this process.

    Workers that share a data directory (several on one machine, the tests) then never open one
    RocksDB database twice, and a restarted worker takes its old folder back, with its data: the
    lock of a worker that stopped, or was killed, went with its process.
    """
    root = state_root(settings)
    if root in _claimed:
        return _claimed[root][0]
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1024):
        path = root / f"worker-{n}"
        lock = open(root / f"worker-{n}.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        path.mkdir(exist_ok=True)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        _claimed[root] = (path, lock)
        log.info("sessions state directory: %s", path)
        return path
    raise ConfigError(f"no free state directory under {root}")


def partition_cache_bytes(settings: Settings) -> int:
    """Block cache of one partition's database: the worker's budget over all partitions."""
    return max(MIN_PARTITION_CACHE, settings.state_cache_mb * MB // settings.partitions)


def faust_store_options(settings: Settings) -> dict[str, Any]:
    """Faust app settings for the sessions store (merged into ``faust_options``)."""
    kind = store_kind(settings)
    opts: dict[str, Any] = {"table_standby_replicas": settings.table_standby_replicas}
    if kind == "memory":
        opts["store"] = "memory://"
        return opts
    opts["store"] = "rocksdb://"
    opts["tabledir"] = str(claim_state_dir(settings))
    return opts


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    """``faust.stores.rocksdb.RocksDBOptions`` keywords: memory a fixed amount per partition."""
    return {
        "driver": "rocksdict",
        "block_cache_size": partition_cache_bytes(settings),
        "write_buffer_size": settings.state_write_buffer_mb * MB,
        "max_write_buffer_number": 2,
        "target_file_size_base": 32 * MB,
    }


@dataclass
class RecoveryCounter:
    """Changelog records and bytes a worker read to recover its active sessions partitions.

    Faust calls :meth:`on_event` for every changelog record it applies (standby records too, which
    are not counted) and :meth:`on_recovered` when recovery ends; each recovery is logged as one
    line, which ``bench recovery`` and the tests read.
    """

    records: int = 0
    bytes: int = 0
    started: float | None = None          # the first record (or the start of a bulk restore)
    total_records: int = 0
    total_bytes: int = 0

    async def on_event(self, event: Any) -> None:
        msg = event.message
        if msg.tp not in event.app.tables.recovery.active_tps:
            return
        if self.started is None:
            self.started = time.monotonic()
        self.records += 1
        self.bytes += len(msg.key or b"") + len(msg.value or b"")

    def add(self, records: int, nbytes: int) -> None:
        """Records applied outside Faust's per-record path (``stream.live.restore``: in bulk);
        ``add(0, 0)`` when such a restore begins starts the clock."""
        if self.started is None:
            self.started = time.monotonic()
        self.records += records
        self.bytes += nbytes

    async def on_recovered(self) -> None:
        self.total_records += self.records
        self.total_bytes += self.bytes
        log.info("sessions recovered: %d changelog records, %d bytes read in %.2f s",
                 self.records, self.bytes, time.monotonic() - self.started if self.started is not None else 0.0)
        self.records = self.bytes = 0
        self.started = None


def session_table_options(settings: Settings, counter: RecoveryCounter | None = None) -> dict[str, Any]:
    """Keywords for ``app.Table`` of the sessions: RocksDB options and the recovery counter."""
    counter = counter or RecoveryCounter()
    opts: dict[str, Any] = {"on_changelog_event": counter.on_event, "on_recover": counter.on_recovered}
    if store_kind(settings) == "rocksdb":
        opts["options"] = rocksdb_options(settings)
    return opts


async def check_state_dir(settings: Settings, changelog: str) -> list[int]:
    """Remove local partition databases that hold more than their changelog has; returns them.

    A database's stored offset beyond the changelog's end means the changelog is not the one it
    was built from (the embedded broker forgets everything when it stops; a topic was deleted).
    Faust would stop with a ConsistencyError; the partition is rebuilt from the changelog instead.
    """
    if store_kind(settings) != "rocksdb":
        return []
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream.live.faust_compat import checked_end_offsets
    from stream.live.restore import wipe_half_restored

    tabledir = claim_state_dir(settings)
    local = {}
    for p in range(settings.partitions):
        path = tabledir / f"sessions-{p}.db"
        wipe_half_restored(path)                # a bulk restore that never finished: never trusted
        if path.is_dir():
            local[p] = (path, _stored_offset(path))
    if not local:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, **settings.kafka_client_options())
    await consumer.start()
    try:
        tps = [TopicPartition(changelog, p) for p in local]
        ends = await checked_end_offsets(settings, await consumer.end_offsets(tps))
    finally:
        await consumer.stop()
    dropped = []
    for tp, end in ends.items():
        path, offset = local[tp.partition]
        if offset is not None and end is not None and offset >= end:
            log.warning("local sessions of partition %d are at changelog offset %d but %s ends at %d: "
                        "rebuilding that partition from the changelog", tp.partition, offset, changelog, end)
            shutil.rmtree(path, ignore_errors=True)
            dropped.append(tp.partition)
    return dropped


def _stored_offset(path: Path) -> int | None:
    import rocksdict
    from faust.stores.rocksdb import Store

    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        raw = db.get(Store.offset_key)          # where faust keeps the changelog offset it holds
        return int(raw) if raw is not None else None
    finally:
        db.close()

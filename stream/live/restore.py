"""Restoring an empty sessions partition from its changelog in bulk, and restore progress.

A worker whose state folder has no database for a partition it is assigned (a new host, a pod
without a persistent volume, a lost disk) must rebuild every session of that partition from the
changelog. Faust's own recovery path does that one record at a time: a ``ConsumerMessage`` and an
``Event`` per record, a trip through the conductor and the changelog queue, the recovery loop's
bookkeeping (``need_recovery`` builds a Counter over all partitions per record), then writes of
1,000 records at a time -- about 14,000 records/s on a 2-core machine.

:class:`BulkRestore` takes such a partition over instead (``faust_compat.install_bulk_restore``
hands it the partitions when Faust's recovery seeks its changelogs; Faust is sought to their end,
so it reads nothing of them): its own consumer reads the changelog with large fetches, and each
fetch goes into the partition's RocksDB database as one ``WriteBatch`` (tombstones are deletes,
in changelog order, so a forgotten or expired shopper stays gone), written **without the WAL**,
with the changelog offset it reaches in the same batch.

Crash safety: without the WAL, what a SIGKILL leaves on disk is whatever RocksDB had flushed. So
before the first write a marker file ``<table>-<partition>.restoring`` is created (and synced);
it is removed only after the restore's last batch is flushed to the database's files. A worker
that starts and finds a marker deletes that partition's database (``session_store.
check_state_dir``) and restores it again; a restore interrupted within the process (a rebalance)
starts again from the beginning of the changelog when the partition comes back.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stream.settings import Settings

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".restoring"
FETCH_BYTES = 8 * 1024 * 1024          # per partition and fetch: ~23,000 sessions of ~360 bytes
# While a partition is restored, RocksDB does not compact it: each level-0 compaction would rewrite
# the level below it, which grows with the restore (time per record grew by half from the first
# 100,000 records of a partition to its millionth). The files are compacted once, in the
# background, when the restore ends (RocksDB's default triggers are put back).
BULK_LOAD_OPTIONS = {"disable_auto_compactions": "true", "level0_slowdown_writes_trigger": "1000000",
                     "level0_stop_writes_trigger": "1000000"}
SERVING_OPTIONS = {"disable_auto_compactions": "false", "level0_slowdown_writes_trigger": "20",
                   "level0_stop_writes_trigger": "36"}


def marker_path(db_path: Path) -> Path:
    """``<table>-<partition>.restoring`` next to ``<table>-<partition>.db``."""
    name = db_path.name[:-3] if db_path.name.endswith(".db") else db_path.name
    return db_path.with_name(name + MARKER_SUFFIX)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_marker(db_path: Path) -> None:
    path = marker_path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        os.fsync(fh.fileno())
    _sync_dir(path.parent)


def clear_marker(db_path: Path) -> None:
    path = marker_path(db_path)
    path.unlink(missing_ok=True)
    _sync_dir(path.parent)


def wipe_half_restored(db_path: Path) -> bool:
    """Delete a database whose restore never finished (its marker is there); True when it did."""
    if not marker_path(db_path).exists():
        return False
    log.warning("%s was being restored when its worker stopped: deleted, it is restored again", db_path.name)
    shutil.rmtree(db_path, ignore_errors=True)
    clear_marker(db_path)
    return True


@dataclass
class Job:
    """One partition to restore: changelog offsets ``start`` (first to read) .. ``end`` (high-water)."""

    tp: Any                  # Faust's TP of the changelog partition
    db: Any                  # the partition's rocksdict.Rdict, opened by Faust's store
    path: Path               # the partition's database folder
    offset_key: bytes        # where Faust keeps the changelog offset the database holds
    start: int
    end: int
    done: int = 0
    nbytes: int = 0
    started: float = field(default_factory=time.monotonic)


class BulkRestore:
    """Restores empty partitions of the sessions table in bulk; keeps restore progress per partition.

    ``on_records(records, bytes)`` is told what each write batch held (the worker's recovery
    counter); ``min_records`` is the smallest changelog partition restored this way (below it,
    Faust's own path costs less than a second consumer).
    """

    def __init__(self, settings: Settings, *, min_records: int,
                 on_records: Callable[[int, int], None] = lambda n, b: None) -> None:
        self.settings = settings
        self.min_records = min_records
        self.on_records = on_records
        self.progress: dict[int, dict[str, int]] = {}     # partition -> {"done", "total"}

    # -- what Faust's recovery asks --------------------------------------------------------------
    def wanted(self, db_path: Path, persisted_offset: Callable[[], int | None], records: int) -> bool:
        """Is the partition at ``db_path``, with ``records`` changelog records to read, restored in bulk?"""
        if marker_path(Path(db_path)).exists():
            return True      # a restore of this process that did not finish: from the start, whatever its size
        return records >= self.min_records and persisted_offset() is None     # an empty database

    async def run(self, jobs: list[Job], on_progress: Callable[[Job], None]) -> None:
        """Read each job's changelog from ``start`` to ``end`` into its database."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from rocksdict import WriteBatch, WriteOptions

        self.on_records(0, 0)                           # the clock starts here: consumer start and first fetch count
        wopts = WriteOptions()
        wopts.disable_wal = True
        by_atp = {TopicPartition(j.tp.topic, j.tp.partition): j for j in jobs}
        pending = dict(by_atp)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=FETCH_BYTES,
                                    fetch_max_bytes=FETCH_BYTES * max(1, len(jobs)),
                                    fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
                                    **self.settings.kafka_client_options())
        for job in jobs:
            set_marker(job.path)
            job.db.set_options(BULK_LOAD_OPTIONS)
        try:
            await consumer.start()
            consumer.assign(list(by_atp))
            for atp, job in by_atp.items():
                consumer.seek(atp, max(job.start, 0))
            while pending:
                fetched = await consumer.getmany(*pending, timeout_ms=1000)
                for atp, records in fetched.items():
                    job = pending.get(atp)
                    if job is None or not records:
                        continue
                    batch = WriteBatch(raw_mode=True)
                    put, delete = batch.put, batch.delete
                    nbytes = 0
                    last = job.start - 1
                    for r in records:
                        if r.offset >= job.end:
                            break
                        key, value = r.key, r.value
                        last = r.offset
                        if key is None:
                            continue                    # not a session (Faust writes none without a key)
                        if value is None:
                            delete(key)
                        else:
                            put(key, value)
                            nbytes += len(value)
                        nbytes += len(key)
                    if last < job.start:
                        continue
                    n = len(batch)
                    put(job.offset_key, str(last).encode())
                    job.db.write(batch, wopts)
                    job.done += n
                    job.nbytes += nbytes
                    job.start = last + 1
                    self.on_records(n, nbytes)
                    on_progress(job)
                for atp, job in list(pending.items()):
                    if job.start >= job.end or await consumer.position(atp) >= job.end:
                        job.start = max(job.start, job.end)
                        self._finish(job)
                        del pending[atp]
                        on_progress(job)
                await asyncio.sleep(0)
        finally:
            for job in pending.values():
                job.db.set_options(SERVING_OPTIONS)     # unfinished (a rebalance): compacted as usual again
            await consumer.stop()

    def _finish(self, job: Job) -> None:
        job.db.flush(True)                 # everything written without the WAL is in the files now
        clear_marker(job.path)
        job.db.set_options(SERVING_OPTIONS)
        secs = time.monotonic() - job.started
        log.info("sessions partition %d restored in bulk: %d changelog records, %d bytes in %.2f s "
                 "(%.0f records/s)", job.tp.partition, job.done, job.nbytes, secs, job.done / max(secs, 1e-9))

"""Every reach into faust-streaming's and aiokafka's internals, in one place.

Each reach says why no public API does the job; ``tests/stream/live/test_faust_compat.py`` fails
loudly when the pinned versions (faust-streaming 0.15.3, aiokafka 0.14.0) stop having what is used.

1. :func:`install_highwater_check` -- true end offsets for table recovery (below).
2. :func:`install_fetch_max_wait` -- the consumer's fetch wait, which Faust fixes at 1,500 ms.
3. :class:`SessionTable` -- reads, writes and deletes of the sessions table that name their
   partition, instead of Faust's ambient "current event".
4. :func:`committed_offset` -- the last committed offset of a partition (consumer lag, and the
   offset the first event after a rebalance must have: see ``LiveBatches``' gap guard).
5. :func:`install_skip_ack_guard` -- Faust must not ack an event it skipped without delivering.
6. :func:`forget_gap` -- Faust must not commit over offsets the gap guard sought back to.
7. :func:`install_batched_drain` -- Faust's fetch loop without four asyncio tasks per message.
8. :func:`take_batches` -- micro-batches straight from the agent's queue, not event by event through its stream.
9. :func:`install_changelog_fetch_pause` -- a changelog partition Faust does not read is not fetched.
10. :func:`install_changelog_apply_guard` -- a failed write of changelog records Faust applies loses nothing.
11. :func:`install_bulk_restore` -- an empty sessions partition restored in bulk, not record by record.
12. :func:`only_own_web_pages` -- the web server serves shopstream's pages and none of Faust's.

True end offsets: Faust recovers a table by reading its changelog up to the end offsets that ListOffsets reports.
tansu 0.x (the embedded broker) answers with the base offset of the partition's last record batch,
so a recovering worker would stop before that batch and lose the latest sessions on a restart or
rebalance. :func:`install` makes the worker check each end offset with a fetch from there, whose
response carries the real high-water mark; on Apache Kafka the two agree and nothing changes.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Mapping

from stream.errors import StateStoreError
from stream.settings import Settings

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
_installed: dict[str, Any] = {}


async def checked_end_offsets(settings: Settings, listed: Mapping[Any, int]) -> dict[Any, int]:
    """``listed`` raised to the high-water mark a fetch from there reports, per partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    out = dict(listed)
    wanted = {TopicPartition(tp.topic, tp.partition): tp for tp, off in listed.items() if off is not None}
    if not wanted:
        return out
    probe = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                             enable_auto_commit=False, max_partition_fetch_bytes=64 * 1024,
                             **settings.kafka_client_options())
    await probe.start()
    try:
        probe.assign(list(wanted))
        for atp, tp in wanted.items():
            probe.seek(atp, listed[tp])
        pending = set(wanted)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            await probe.getmany(*pending, timeout_ms=200, max_records=1)
            for atp in list(pending):
                hw = probe.highwater(atp)
                if hw is not None:
                    pending.discard(atp)
                    if hw > listed[wanted[atp]]:
                        log.info("end offset of %s-%d is %d, not %d as listed", atp.topic, atp.partition,
                                 hw, listed[wanted[atp]])
                        out[wanted[atp]] = hw
    finally:
        await probe.stop()
    return out


def install_highwater_check(settings: Settings) -> None:
    """Make Faust's aiokafka consumer check the end offsets it recovers tables up to."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    _installed["settings"] = settings
    if "original" in _installed:
        return
    original = _installed["original"] = AIOKafkaConsumerThread._highwaters

    async def _highwaters(self, partitions):  # noqa: ANN001 - faust's signature
        listed = await original(self, partitions)
        if self.consumer.in_transaction:
            return listed
        return await checked_end_offsets(_installed["settings"], listed)

    AIOKafkaConsumerThread._highwaters = _highwaters


# -- 2. the consumer's fetch wait ------------------------------------------------------------------
def install_fetch_max_wait(ms: int, max_bytes: int | None = None) -> None:
    """Give Faust's consumer ``fetch_max_wait_ms`` (and ``fetch_max_bytes``) from its creation on.

    Faust fixes its consumer's ``fetch_max_wait_ms`` at 1500 and offers no setting for it. A broker
    that answers a fetch only when that wait ends (tansu, the embedded default) then adds up to
    1.5 s to every event. aiokafka's consumer keeps the value (``_fetch_max_wait_ms``) until
    ``start()`` hands it to its fetcher, so it is set on the consumer Faust creates, before its
    first fetch. (Setting it on the running fetcher from an app task, as before, came after the
    worker was ready, while a fetch with 1,500 ms could still be waiting: a new worker's first
    events waited ~0.5 s for it -- issue 13.)

    ``fetch_max_bytes`` -- the most one fetch response may hold, all partitions together -- Faust
    leaves at aiokafka's 50 MiB and offers no setting for either; it is set the same way
    (``_fetch_max_bytes``, handed to the fetcher in ``start()`` as well). Faust's own
    ``consumer_max_fetch_size`` is aiokafka's per-partition ``max_partition_fetch_bytes``.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    _installed["fetch_max_wait_ms"] = ms
    _installed["fetch_max_bytes"] = max_bytes
    if "create_worker_consumer" in _installed:
        return
    original = _installed["create_worker_consumer"] = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self, transport):  # noqa: ANN001, ANN202 - faust's signature
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _installed["fetch_max_wait_ms"]
        if _installed.get("fetch_max_bytes"):
            consumer._fetch_max_bytes = _installed["fetch_max_bytes"]
        log.info("consumer fetch_max_wait_ms = %d, fetch_max_bytes = %d, max_partition_fetch_bytes = %d",
                 consumer._fetch_max_wait_ms, consumer._fetch_max_bytes, consumer._max_partition_fetch_bytes)
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer


def install_changelog_fetch_pause() -> None:
    """Make Faust's pause of a changelog partition stop aiokafka fetching it, and its resume resume it.

    Faust "pauses" a partition only in its own bookkeeping (``Consumer.pause_partitions`` takes it
    out of the set ``getmany`` asks aiokafka for); aiokafka's fetcher still fetches every assigned
    partition. A worker's own sessions changelog, which it writes and does not read once recovered,
    was therefore fetched too, and the fetched records sat in aiokafka's buffer, never taken. While
    such a buffered result is younger than aiokafka's ``prefetch_backoff`` (100 ms), aiokafka sends
    *no* fetch to that broker at all: each changelog partition's first write held every event
    partition back for ~100 ms -- the first second's 90-190 ms latency tail (issue 13).

    Here every pause and resume of a *changelog* partition (Faust's recovery resumes them to read,
    and pauses them when done; standbys stay resumed) is applied to aiokafka's consumer as well,
    in the consumer's own thread and event loop (aiokafka's pause makes a future there). A partition
    no longer assigned when that runs is skipped: the next assignment pauses and resumes afresh.
    Event partitions are left exactly to Faust.

    Faust's stall check (``Consumer.verify_all_partitions_active``, every 2.5 commit intervals)
    logs an ERROR for any assigned partition aiokafka has sent no fetch for in
    ``stream_processing_timeout``; a changelog paused here is not fetched by design, so from then on
    an idle, healthy worker logged it every few seconds for every sessions partition. The check is
    skipped for a changelog partition Faust has paused; event partitions are still checked.
    """
    from aiokafka import TopicPartition
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer

    if "pause_partitions" in _installed:
        return
    pause = _installed["pause_partitions"] = Consumer.pause_partitions
    resume = _installed["resume_partitions"] = Consumer.resume_partitions

    def mirror(consumer, tps: set, paused: bool) -> None:  # noqa: ANN001
        changelogs = consumer.app.tables.changelog_topics
        wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps if tp.topic in changelogs]
        thread = getattr(consumer, "_thread", None)
        loop = getattr(thread, "thread_loop", None)
        what = "pause" if paused else "resume"
        if not wanted or loop is None or loop.is_closed():
            return

        def apply() -> None:
            aio = getattr(thread, "_consumer", None)
            if aio is None:
                return
            for tp in wanted:
                try:
                    getattr(aio, what)(tp)
                except Exception:  # noqa: BLE001 - not assigned (any more): nothing to pause
                    log.debug("changelog partition %s not assigned; fetch %s skipped", tp, what)

        try:
            loop.call_soon_threadsafe(apply)
        except RuntimeError:       # the consumer's loop closed meanwhile (a stopping worker)
            log.debug("consumer loop closed; changelog fetch %s skipped", what)

    def pause_partitions(self, tps) -> None:  # noqa: ANN001 - faust's signature
        tps = set(tps)
        pause(self, tps)
        mirror(self, tps, True)

    def resume_partitions(self, tps) -> None:  # noqa: ANN001 - faust's signature
        tps = set(tps)
        resume(self, tps)
        mirror(self, tps, False)

    Consumer.pause_partitions = pause_partitions
    Consumer.resume_partitions = resume_partitions

    verify = _installed["verify_event_path"] = AIOKafkaDriverConsumer.verify_event_path

    def verify_event_path(self, now: float, tp) -> None:  # noqa: ANN001 - faust's signature
        if tp in self._paused_partitions and tp.topic in self.app.tables.changelog_topics:
            return None                  # paused in aiokafka too: no fetch is due
        return verify(self, now, tp)

    AIOKafkaDriverConsumer.verify_event_path = verify_event_path


# -- 3. the sessions table, partition by partition -------------------------------------------------
class SessionTable:
    """The sessions table with every access naming its partition (quix-streams' way).

    Faust's ``Table.__setitem__`` sends the changelog record to the partition of the *current
    event* (a contextvar), which a micro-batch spanning partitions cannot honestly set; its
    RocksDB store also *reads* from the current event's partition. Here a write goes to the local
    store at once and its changelog record to :attr:`outbox` (partition, key, value), which the
    driver sends for the whole batch (``LiveBatches``) and then reports with :meth:`delivered`:
    the partition's RocksDB database records the changelog offset it holds (what a restart resumes
    from), as Faust's own delivery callback does.

    Faust's ``Table.send_changelog`` was used before: it queues each record in Faust's producer
    buffer, which sends them one by one from a task, and whose back-pressure
    (``ProducerBuffer.wait_until_ebb``: more than 100 queued) stops the fetch loop's hand-on until
    100 went out, awaiting each with its own ``asyncio.wait_for``. A batch of 256 new shoppers
    wrote 256 records at once and stalled it every batch (issue 10).

    Two stores (``stream.live.session_store`` picks one):

    - RocksDB (``faust.stores.rocksdb.Store``): one database per partition, ``Store._dbs``,
      opened by ``Store._db_for_partition``; ``Store._key_index`` is its key -> partition cache.
      Reads run in the batch executor's thread (RocksDB reads are thread-safe); opening a database
      is serialised by a lock, since Faust opens them from the event loop too.
    - memory (``faust.stores.memory.Store``): ``Store.data`` and ``Store._key_partition``, which
      Faust uses to drop revoked keys after recovery; writes keep it up to date so sweeps and
      revocations touch only the right partitions.
    """

    def __init__(self, table: Any) -> None:
        import threading

        self.table = table
        self._opening = threading.Lock()
        self.outbox: list[tuple[int, bytes, bytes | None]] = []     # changelog records not sent yet

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def take_outbox(self) -> list[tuple[int, bytes, bytes | None]]:
        out, self.outbox = self.outbox, []
        return out

    def delivered(self, tp: Any, offset: int) -> None:
        """The changelog holds this partition's writes up to ``offset``: a restart resumes after it."""
        self._store.set_persisted_offset(tp, offset)

    @property
    def _store(self) -> Any:
        return self.table.data

    @property
    def on_disk(self) -> bool:
        return hasattr(self._store, "_db_for_partition")

    def _db(self, partition: int) -> Any:
        store = self._store
        db = store._dbs.get(partition)
        if db is None:
            with self._opening:
                db = store._db_for_partition(partition)
        return db

    def get(self, partition: int, key: bytes) -> bytes | None:
        if self.on_disk:
            try:
                return self._db(partition).get(key)
            except Exception as exc:  # noqa: BLE001 - as in set(): a store fault, never a bad message
                raise StateStoreError(self.name, partition, exc) from exc
        return self._store.data.get(key)

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        """Write one session; a store that refuses it raises :class:`StateStoreError`."""
        store = self._store
        if self.on_disk:
            try:
                self._db(partition).put(key, value)
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception("IO error: ...")
                raise StateStoreError(self.name, partition, exc) from exc
            store._key_index[key] = partition
        else:
            store.data[key] = value
            store._key_partition[key] = partition
        self.outbox.append((partition, key, value))

    def delete(self, partition: int, key: bytes) -> None:
        store = self._store
        if self.on_disk:
            try:
                self._db(partition).delete(key)
            except Exception as exc:  # noqa: BLE001 - as in set()
                raise StateStoreError(self.name, partition, exc) from exc
            store._key_index.pop(key, None)
        else:
            store.data.pop(key, None)
            store._key_partition.pop(key, None)
        self.outbox.append((partition, key, None))

    def reopen(self, partition: int) -> None:
        """Close a partition's database after a failed write and open it again.

        RocksDB keeps a failed write-ahead-log append as a background error: every later write
        fails with it, even once the disk has room again, until the database is reopened (which
        replays its log: every write that succeeded is kept). Closing raises that same error after
        releasing the database. Opening raises while the disk still refuses writes; the caller
        retries. Memory: nothing to do.
        """
        if not self.on_disk:
            return
        store = self._store
        with self._opening:
            db = store._dbs.pop(partition, None)
            if db is not None:
                try:
                    db.close()
                except Exception as exc:  # noqa: BLE001 - the error that made us reopen it
                    log.debug("closing the %s database of partition %d: %s", self.name, partition, exc)
                del db
            try:
                store._db_for_partition(partition)
            except Exception as exc:  # noqa: BLE001 - still failing: the caller retries
                store._dbs.pop(partition, None)
                raise StateStoreError(self.name, partition, exc) from exc
        log.info("reopened the %s database of partition %d", self.name, partition)

    @property
    def name(self) -> str:
        return str(self.table.name)

    def items(self, partitions: set[int]) -> Iterator[tuple[int, bytes, bytes]]:
        """(partition, key, value) of the sessions held for ``partitions``."""
        store = self._store
        if self.on_disk:
            offset_key = store.offset_key           # the changelog offset, kept beside the sessions
            for partition in sorted(partitions):
                db = store._dbs.get(partition)      # only databases open here: nothing is created
                if db is None:
                    continue
                for key, value in db.items():
                    if key != offset_key:
                        yield partition, key, value
            return
        for key, partition in list(store._key_partition.items()):
            if partition in partitions:
                value = store.data.get(key)
                if value is not None:
                    yield partition, key, value

    def release(self, partitions: set[int]) -> int:
        """Drop the sessions of ``partitions`` (revoked: another worker owns them now) from memory.

        RocksDB: flush the partition's memtable to its files and let go of the database (it
        closes when the last reader lets go too; its files stay, with their offset, for when the
        partition comes back); returns 0. Memory: forget the keys; returns how many.
        """
        store = self._store
        if self.on_disk:
            for partition in partitions:
                db = store._dbs.pop(partition, None)
                if db is not None:
                    db.flush()
                    log.info("closed the sessions database of partition %d", partition)
            return 0
        gone = [k for k, p in store._key_partition.items() if p in partitions]
        for key in gone:
            store.data.pop(key, None)
            store._key_partition.pop(key, None)
        return len(gone)


# -- 4. committed offsets --------------------------------------------------------------------------
def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset last committed for ``tp`` by this worker (Faust keeps no public accessor)."""
    return consumer._committed_offset.get(tp)


def forget_tracked(consumer: Any, topic: str) -> int:
    """Drop ``topic``'s messages that a stream took (``tracked``) and nobody acked from Faust's
    ``consumer.unacked``, after the driver gave them up (``LiveBatches.recover``): they are
    delivered again, as new messages, from the committed offset, and Faust must not wait for the
    old ones (``Consumer.wait_empty``) at the next rebalance or stop."""
    unacked = consumer.unacked
    stale = [m for m in list(unacked) if m.topic == topic and not m.acked]
    for m in stale:
        unacked.discard(m)
    return len(stale)


# -- 5. no ack for an event Faust skipped ------------------------------------------------------------
_guarded_topics: set[str] = set()


def install_skip_ack_guard(topic: str) -> None:
    """Refuse Faust's acks of ``topic``'s messages that no stream ever took in.

    A stream drops a message it takes from its queue while ``app.flow_control`` is suspended or
    whose ``generation_id`` is not the consumer's current one (both happen around a rebalance).
    The Cython iterator (``faust/_cython/streams.pyx``, the one that runs when it is built) drops it
    without an ack; the pure-Python one (``Stream._py_aiter``) *acks* it ("We want to ack the
    filtered out message"), so the next commit could pass an event nothing processed. Such a
    message is never marked ``tracked``: a stream marks a message tracked just before it hands it
    on, after that check, and our driver acks only what it was handed. So an ack of an untracked
    message of the events topic comes from that skip, and is refused here; the driver's gap guard
    (``LiveBatches``) then seeks back to the offset. No public API controls this; ``Consumer.ack``
    is where every ack goes through (``ConsumerMessage.on_final_ack``) except the Cython
    iterator's inlined one, which with ``noack_take`` acks nothing: its skips carry no event.
    (:func:`take_batches` now takes the agent's events itself and skips the same way, without an
    ack; the guard stays for any other stream of the topic.)
    """
    from faust.transport.consumer import Consumer

    _guarded_topics.add(topic)
    if "ack" in _installed:
        return
    original = _installed["ack"] = Consumer.ack

    def ack(self, message):  # noqa: ANN001, ANN202 - faust's signature
        if message.topic in _guarded_topics and not message.tracked:
            log.info("refused Faust's ack of %s-%d@%d, which it skipped without delivering it",
                     message.topic, message.partition, message.offset)
            return False
        return original(self, message)

    Consumer.ack = ack


# -- 6. no commit over a hole the gap guard sought back to -------------------------------------------
def forget_gap(consumer: Any, tp: Any) -> None:
    """Drop the offset gaps Faust recorded for ``tp``.

    When ``_drain_messages`` hands on a record more than one offset past its read offset it
    records the offsets between as a "gap" (``Consumer._add_gap``, meant for compacted topics and
    transaction markers), and ``_new_offset`` counts a gap as acked as soon as any later offset is
    acked -- the whole interval at once. After the gap guard seeks a partition back, records
    fetched before the seek are still handed on past the new read offset, so Faust records the
    very events the guard waits for as a gap and would commit over them before they are processed
    (a crash then would lose them). The events topic has no such legitimate holes; the guard
    clears ``Consumer._gap[tp]`` whenever it seeks back and when the missing event comes.
    """
    gaps = consumer._gap.get(tp)
    if gaps:
        log.info("forgot Faust's offset gap(s) %s of %s-%d", sorted((i.begin, i.end) for i in gaps),
                 tp.topic, tp.partition)
        gaps.clear()


# -- 7. the fetch loop, one wait per fetch instead of one per message ---------------------------------
DRAIN_SOURCE_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def install_batched_drain() -> None:
    """Replace ``Consumer._drain_messages`` with the same loop, awaiting each fetch as one unit.

    faust-streaming 0.15.3 hands every fetched message on inside ``Service.wait_first(callback(
    message), suspend_flow.wait())``, which makes four asyncio tasks (the callback, the suspend
    event, the consumer's stopped and crashed events) and an ``asyncio.wait`` *per message*: a
    profile of the worker put a fifth of its event loop's busy time there (issue 13). This copy
    runs the same per-message steps (read offset, gap record, commit every ``commit_every`` acks,
    the callback, the new read offset) for a whole fetch inside one ``wait_first``, so a suspended
    flow, a stop or a crash still interrupts delivery at once.

    Two things stay *outside* the interruptible part, exactly as in Faust's loop:

    - **The fetch itself** (the first step of ``getmany``). A fetch runs on the consumer's thread
      (``call_thread``, two method-queue workers); cancelling the caller does not stop it, so a
      fetch cut off by a suspended flow would still take its records out of aiokafka -- moving
      the positions past them -- and hand them to nobody. When the rebalance behind the
      suspension finishes before that fetch does (a lone survivor re-joins in well under the
      fetch's 1 s wait), the seek to the committed offsets has already happened, and those records
      are gone: a first version of this copy, which fetched inside the ``wait_first``, lost the
      tail of a partition that way in 2 of 12 runs of the SIGKILL rebalance test under load.
      Fetched outside, a fetch always completes, and ``getmany`` itself seeks back to the
      committed offsets when the flow stopped meanwhile (Faust's own guard).
    - **Commits**: delivery pauses when one is due, the commit runs, delivery resumes with the
      same fetch.

    One difference, on purpose: when the flow is suspended (a rebalance begins) the messages of the
    fetch not yet handed on are not marked read, where Faust's loop marks the one in flight read
    without delivering it; the seek after the rebalance, and the driver's gap guard, start from the
    committed offsets either way. The original's source is pinned by hash (``DRAIN_SOURCE_SHA256``):
    a faust-streaming that changes it fails ``tests/stream/live/test_faust_compat.py``, and this
    copy must be checked against it.
    """
    import asyncio

    from faust.transport.consumer import CONSUMER_FETCHING, Consumer

    if "drain" in _installed:
        return
    _installed["drain"] = Consumer._drain_messages

    async def _drain_messages(self, fetcher) -> None:  # noqa: ANN001 - faust's signature
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspended = self.suspend_flow
        yield_every = 100
        sleep = asyncio.sleep

        async def deliver(first, ait) -> bool:  # noqa: ANN001
            """Hand on a fetch's messages; True when it stopped because a commit is due."""
            num_since_yield = 0
            item = first
            while item is not None:
                tp, message = item
                num_since_yield += 1
                if num_since_yield > yield_every:
                    await sleep(0)
                    num_since_yield = 0
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    await callback(message)
                    set_read_offset(tp, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        return True
                else:
                    self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                # the fetch is in memory by now: the next step of getmany does not wait on the broker
                item = None if self.should_stop else await fetched(ait)
            return False

        async def fetched(ait):  # noqa: ANN001, ANN202
            """The first message of a fetch, or None: the fetch runs here, uninterrupted, as in Faust."""
            try:
                return await ait.__anext__()
            except StopAsyncIteration:
                return None

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)       # getmany may be called in a loop never yielding otherwise
                first = None if self.should_stop else await fetched(ait)
                while first is not None and not self.should_stop:
                    delivery = deliver(first, ait)
                    res = await self.wait_first(delivery, suspended.wait())
                    if res.stopped or delivery not in res.done or res.results[res.done.index(delivery)] is not True:
                        break             # the fetch is handed on, or the flow was suspended
                    self._n_acked = 0
                    await self.commit()
                    first = await fetched(ait)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    Consumer._drain_messages = _drain_messages


# -- 8. micro-batches taken straight from the agent's queue --------------------------------------------
async def take_batches(stream: Any, max_: int, within: float) -> Any:
    """The agent's events in batches of up to ``max_``, taken straight from its stream's queue;
    nothing is acked (the caller acks what it has handled, as with ``Stream.noack_take``).

    Faust's ``noack_take`` runs every event through the stream's iterator and a processor that
    adds it to a buffer: one ``await asyncio.sleep(0)`` -- a whole turn of the event loop -- and a
    handful of awaited calls per event, ~86 us of the worker's event loop per event with 2,000
    shoppers, a third of its time (issue 13). The conductor puts every fetched event of the agent's
    topic into ``stream.channel.queue`` (a mode ``ThrowableQueue``: its ``get`` and ``get_nowait``
    also end the fetch pause it asked for when full, and raise what was thrown into the channel);
    here a batch is what that queue holds, taken in one go.

    Batching: below full load (the last batch was not full) a batch goes on as soon as the queue
    is empty, so a lone event is not held back; after a full batch (the worker is behind) a batch
    fills to ``max_`` or until ``within`` seconds after its first event, which keeps batches large
    while the worker catches up. A partial batch switches back.

    Each event gets what Faust's stream iterator gives it (``faust/_cython/streams.pyx``
    ``_prepare_event``, the same in ``Stream._py_aiter``; pinned by the compat tests): one fetched
    while ``app.flow_control`` is suspended or in an older consumer generation -- around a
    rebalance -- is dropped without an ack (the seek to the committed offsets delivers it again);
    any other is marked ``tracked``, joins ``consumer.unacked`` and is reported to the sensors,
    so that its ack (``stream.ack``) is the one Faust counts.

    Stopping: Faust stops an agent by throwing ``StopAsyncIteration`` into its channel
    (``Actor.cancel``), which the queue's ``get`` raises here. Raised inside an async generator it
    would turn into ``RuntimeError('async generator raised StopAsyncIteration')`` and Faust would log
    the agent as crashed on every clean stop; the generator ends instead. A batch being gathered
    when that comes is dropped unacked (nothing of it was processed: the restart delivers it again).
    """
    import asyncio

    app = stream.app
    queue = stream.channel.queue
    flow_active = app.flow_control.is_active
    acking_topics = app.topics.acking_topics
    unacked = app.consumer.unacked
    on_message_in = app.sensors.on_message_in
    loop = asyncio.get_running_loop()
    eager = True                                 # the last batch was not full: below full load

    def admit(event: Any) -> bool:
        message = event.message
        if not flow_active() or message.generation_id != app.consumer_generation_id:
            return False
        if message.topic in acking_topics and not message.tracked:
            message.tracked = True
            unacked.add(message)
            on_message_in(message.tp, message.offset, message)
        return True

    while not stream.should_stop:
        try:
            event = await queue.get()
        except StopAsyncIteration:               # the agent is stopping (``Actor.cancel``): end cleanly
            return
        batch = [event] if admit(event) else []
        deadline = loop.time() + within
        stopping = False
        while len(batch) < max_:
            try:
                if not queue.empty():
                    event = queue.get_nowait()
                elif eager:
                    break
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        event = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
            except StopAsyncIteration:
                stopping = True
                break
            if admit(event):
                batch.append(event)
        if batch and not stopping:
            eager = len(batch) < max_
            yield batch
        if stopping:
            return


# -- 10. a failed write of changelog records Faust applies itself ------------------------------------
EXIT_STATE_STORE = 75          # EX_TEMPFAIL: the supervisor restarts the worker, which rebuilds the partition


def install_changelog_apply_guard() -> None:
    """Make a failed RocksDB write of changelog records that Faust applies itself lose nothing.

    Faust writes to the sessions databases itself when it recovers an active partition and while it
    keeps a standby copy warm (``Store.apply_changelog_batch``). When that write fails (disk full,
    file too large) ``Recovery._slurp_changelogs`` only logs "Error in recovery" and goes on past
    the records: the local copy then silently lacks them, and a worker serving from it would fold
    new events on stale sessions. No public hook reports it, so the store's method is wrapped:

    - a **standby** copy that failed is dropped (closed, its folder removed) and no more records
      are applied to it; when this worker takes the partition over, the copy has no stored offset
      and Faust recovers it from the start of the changelog (as after a restart);
    - an **active** partition that failed to recover is dropped the same way, and the worker exits
      with ``EXIT_STATE_STORE`` (75): its supervisor restarts it and it recovers the partition from
      the changelog once the disk takes writes again. (Faust's recovery has already gone past the
      records, and serving the partition would lose them.)
    """
    import os
    import shutil

    from faust.stores.rocksdb import Store

    if "apply_changelog_batch" in _installed:
        return
    original = _installed["apply_changelog_batch"] = Store.apply_changelog_batch

    def drop(store: Any, partition: int) -> None:
        db = store._dbs.pop(partition, None)
        if db is not None:
            try:
                db.close()
            except Exception:  # noqa: BLE001 - the failed write's error again
                pass
        shutil.rmtree(store.partition_path(partition), ignore_errors=True)

    def apply_changelog_batch(self, batch, to_key, to_value):  # noqa: ANN001, ANN202 - faust's signature
        dropped = self.__dict__.setdefault("_shopstream_dropped_standbys", set())
        standbys = self.app.assignor.assigned_standbys()
        events = [ev for ev in batch if not (ev.message.tp in dropped and ev.message.tp in standbys)]
        dropped.difference_update(tp for tp in list(dropped) if tp not in standbys)   # taken over: recovered afresh
        if not events:
            return None
        try:
            return original(self, events, to_key, to_value)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception("IO error: ...")
            tps = {ev.message.tp for ev in events}
            for tp in tps:
                drop(self, tp.partition)
            active = sorted(tp.partition for tp in tps if tp not in standbys)
            if active:
                log.critical("state store failed while recovering sessions partition(s) %s (%s: %s): their "
                             "local copy is dropped and the worker exits (code %d) for its supervisor to "
                             "restart it; it recovers them from the changelog", active, type(exc).__name__, exc,
                             EXIT_STATE_STORE)
                for handler in logging.getLogger().handlers:
                    try:
                        handler.flush()
                    except Exception:  # noqa: BLE001 - the disk may refuse the log too
                        pass
                os._exit(EXIT_STATE_STORE)
            dropped.update(tps)
            log.error("state store failed applying standby records of sessions partition(s) %s (%s: %s): that "
                      "standby copy is dropped; it is recovered from the changelog if this worker takes the "
                      "partition over", sorted(tp.partition for tp in tps), type(exc).__name__, exc)
            return None

    Store.apply_changelog_batch = apply_changelog_batch


# -- 11. empty sessions partitions restored in bulk, and restore progress ------------------------------
def install_bulk_restore(restorer: Any) -> None:
    """Let ``restorer`` (a ``stream.live.restore.BulkRestore``) restore empty partitions itself.

    Faust recovers a table in ``Recovery._restart_recovery``: it builds the active changelog
    partitions' high-water marks and start offsets (``active_highwaters``, ``active_offsets``:
    the last offset applied, -1 for none), seeks its consumer there with ``_seek_offsets``, and
    waits for ``signal_recovery_end``, which its ``_slurp_changelogs`` task sets once no active
    partition has records left (``need_recovery()``). No public API lets a store take a partition's
    recovery over. The copy of ``_seek_offsets`` installed here, for the active partitions:

    - records where each partition starts, for the progress ``/ready`` and ``/metrics`` report
      (:func:`restore_progress`);
    - hands the partitions the restorer wants (empty, with many records) to it, and seeks Faust's
      consumer to their end instead, so Faust fetches none of their records;
    - runs the restorer as a task that moves ``active_offsets`` on as it writes, so Faust's own
      remaining counts (and its "recovery remaining" log) are right, and when nothing remains
      flushes Faust's buffers and sets ``signal_recovery_end`` as ``_slurp_changelogs`` would (the
      rest -- ``on_recovery_completed``, the recovery counter's log line -- is Faust's as before).

    A new rebalance cancels a restore in flight (``signal_recovery_start``); a partition it did not
    finish keeps its marker and is restored from the beginning when it is assigned again.
    """
    from faust.tables.recovery import Recovery

    _installed["restorer"] = restorer
    if "seek_offsets" in _installed:
        return
    original = _installed["seek_offsets"] = Recovery._seek_offsets

    async def _seek_offsets(self, consumer, tps, offsets, title):  # noqa: ANN001, ANN202 - faust's signature
        restorer = _installed.get("restorer")
        if title != "active" or restorer is None:
            return await original(self, consumer, tps, offsets, title)
        _cancel_restore(self)
        from stream.live.restore import Job

        highwaters = self.active_highwaters
        starts = _installed["restore_starts"] = {}
        jobs = []
        for tp in tps:
            end = highwaters.get(tp)
            if end is None or offsets.get(tp) is None:
                continue
            end += 1                                   # Faust keeps the last offset; the end is one past
            first = max(offsets[tp], -1) + 1
            starts[tp] = first - 1
            store = getattr(self.tp_to_table.get(tp), "data", None)
            if not hasattr(store, "_db_for_partition"):
                continue                               # not Faust's RocksDB store
            if restorer.wanted(store.partition_path(tp.partition), lambda: store.persisted_offset(tp), end - first):
                first = 0                              # an empty or half-restored database: everything
                offsets[tp] = starts[tp] = -1
                jobs.append(Job(tp=tp, db=store._db_for_partition(tp.partition),
                                path=store.partition_path(tp.partition), offset_key=store.offset_key,
                                start=first, end=end))
        seek = offsets
        if jobs:
            seek = offsets.copy()
            for job in jobs:
                seek[job.tp] = job.end                 # Faust's consumer reads nothing of them
            log.info("restoring %d sessions partition(s) in bulk: %s", len(jobs),
                     ", ".join(f"{j.tp.partition} ({j.end - j.start} records)" for j in jobs))
        await original(self, consumer, tps, seek, title)
        if jobs:
            _installed["restore_task"] = self.add_future(_run_restore(self, restorer, jobs, offsets))

    Recovery._seek_offsets = _seek_offsets


def _cancel_restore(recovery: Any) -> None:
    task = _installed.pop("restore_task", None)
    if task is not None and not task.done():
        log.info("a new rebalance: the bulk restore in flight stops (its partitions start again when assigned)")
        task.cancel()


async def _run_restore(recovery: Any, restorer: Any, jobs: list, offsets: Any) -> None:
    import asyncio

    def on_progress(job) -> None:  # noqa: ANN001
        if recovery.signal_recovery_start.is_set():
            raise asyncio.CancelledError()             # a new rebalance: this assignment is gone
        offsets[job.tp] = max(offsets[job.tp], job.start - 1)

    try:
        await restorer.run(jobs, on_progress)
    except asyncio.CancelledError:
        return
    except Exception as exc:  # noqa: BLE001 - the worker stops; the marker makes the next start restore again
        log.exception("the bulk restore failed: %r", exc)
        await recovery.crash(exc)
        return
    if recovery.in_recovery and not recovery.need_recovery():
        recovery.flush_buffers()                      # what Faust's own path read meanwhile
        recovery.signal_recovery_end.set()


def restore_progress(app: Any) -> dict[str, dict[str, int]]:
    """Changelog records restored of those to restore, per partition, in the latest recovery."""
    recovery = app.tables.recovery
    starts = _installed.get("restore_starts") or {}
    out = {}
    for tp, start in sorted(starts.items(), key=lambda kv: kv[0].partition):
        end = recovery.active_highwaters.get(tp)
        now = recovery.active_offsets.get(tp)
        if end is None or now is None:
            continue
        total = max(end - start, 0)
        out[str(tp.partition)] = {"done": min(max(now - start, 0), total), "total": total}
    return out


# -- 12. the web server serves shopstream's pages only --------------------------------------------------
FAUST_VIEW_SETTINGS = dict(web_tables_enabled=False,   # /table/<name>/<key>/: any shopper's session
                           web_router_enabled=False,   # /router/: which worker holds a key, the cluster's URLs
                           web_stats_enabled=False, web_graph_enabled=False, web_metrics_enabled=False)


def only_own_web_pages(app: Any) -> None:
    """Serve no built-in Faust view: only the pages the app adds (``/health``, ``/ready``, ``/metrics``).

    :data:`FAUST_VIEW_SETTINGS` (public settings of faust-streaming 0.15) switch off the table,
    router, statistics, graph and performance views; with statistics off Faust mounts its
    "production index" at ``/`` instead, which no setting removes, so it is dropped from the
    blueprints the web server will apply (``BlueprintManager._enabled``, before the server starts).
    """
    manager = app.web.blueprints
    manager._enabled = [(prefix, bp) for prefix, bp in manager._enabled
                        if not (isinstance(bp, str) and bp.startswith("faust.web.apps."))]

"""The live driver of the pipeline core: Faust events in, published results, then acks.

For each micro-batch (``faust_compat.take_batches``: Faust acks nothing by itself):

1. the core runs in a worker thread (:meth:`Pipeline.process`); if it raises, it is retried with
   bounded backoff, then :meth:`Pipeline.process_isolating` dead-letters only what causes it;
2. recommendations, dead letters and re-keyed events are sent and their delivery awaited; a send
   that fails is retried with backoff for as long as it takes (the broker gone stalls the worker,
   it never drops);
3. session writes go to the sessions table on the partition each names -- unless a rebalance
   began while the batch ran, in which case nothing is written and nothing acked: the partitions'
   next owner processes those events again;
4. only then are the batch's events acked. Faust commits acked offsets after flushing its
   producer, so an offset is committed only once everything the event caused is in Kafka.

Events naming a product the catalogue does not have yet are held (not acked) and offered again
with the next batch, or by a timer when no batch comes, until ``unknown_product_hold_s`` passes.
Events after a held one on its partition are processed but acked only once it is handled, so no
commit passes it.
A consumer therefore sees duplicates after a crash or a rebalance, never gaps.

Faults (docs/operations.md, "When a batch fails"):

- a state store that refuses a read or write (:class:`StateStoreError`: disk full, file too
  large, any RocksDB I/O error) stalls the batch where it is: nothing more is taken, acked or
  dead-lettered; the partition's database is reopened and the same writes retried with backoff
  until they succeed (or a rebalance hands the partitions on); :attr:`LiveBatches.store_fault`
  says why, for ``/ready`` and the ``shopstream_state_store_failing`` gauge;
- sends that do not go through are retried for as long as it takes; :class:`SendWatch` says how
  long they have waited, for ``/ready``;
- anything else that raises in or around a batch is handed to :meth:`LiveBatches.recover`: all
  tracking is dropped (held events, events done but not acked, Faust's ``consumer.unacked``) and
  every owned partition is sought back to its committed offset, so the next attempt starts from
  there. Nothing past the committed offset was acked unless its results were in Kafka.

Gap guard (issue #9). After a rebalance Faust seeks every partition to its committed offset, but
the events it had already fetched keep flowing while that seek runs, and its fetch loop drops a
record whose offset is below the last one it handed on (``_drain_messages``): an event fetched
and skipped around the seek is then never delivered again. The driver therefore takes each
partition's events strictly in offset order: after every rebalance the first event of a partition
must have the committed offset, and each next one the offset after the last. An event past that
(a gap) is not processed and not acked -- nor is anything after it on that partition -- and the
partition is sought back to the missing offset (``Consumer.seek_wait``, Faust's public seek that
runs in its consumer thread and resets its read offset too), again every
``GAP_RESEEK_S`` until it comes. Events below it are copies of ones already taken, dropped unacked.
Faust records the hole as an offset "gap" it would commit over; the guard clears it
(``faust_compat.forget_gap``).
A partition from which nothing comes after a rebalance although its high-water mark shows records
past the committed offset is sought back the same way (Faust may hand every record on mid-rebalance
and drop them all when it fetches them again). Events that arrive while Faust is still
rebalancing, and events held from before it, are left to those seeks.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import orjson

from stream.core.control import bounded_headers
from stream.core.dead_letters import Message, dead_letter_record
from stream.core.pipeline import BatchResult, Pipeline
from stream.errors import StateStoreError
from stream.live.faust_compat import SessionTable, committed_offset, forget_gap, forget_tracked

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.05, 0.2, 0.5)        # re-runs of a failed batch before isolating the cause
MAX_SEND_BACKOFF_S = 5.0
GAP_RESEEK_S = 1.0                       # a seek back to a missing offset is repeated this often
MAX_STORE_BACKOFF_S = 2.0                # a failing state store is retried at least this often
FAULT_LOG_EVERY_S = 30.0                 # a fault that lasts is logged again this often
MAX_RECOVER_BACKOFF_S = 10.0
BATCH_SEND_MIN = 64                      # records in one publish from which they go in record batches


class SendWatch:
    """How long the worker's sends to Kafka have been waiting (retried or unanswered), for /ready."""

    def __init__(self) -> None:
        self.since: float | None = None      # monotonic time the oldest waiting send began
        self.error = ""                      # the last send error, if any
        self._active = 0

    def begin(self) -> None:
        if self._active == 0:
            self.since = time.monotonic()
        self._active += 1

    def end(self) -> None:
        self._active -= 1
        if self._active == 0:
            self.since = None
            self.error = ""

    def waited(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


@dataclass
class StoreFault:
    store: str
    partition: int
    reason: str
    since: float
    logged: float


def to_message(event: Any, received_at: float) -> Message:
    msg = event.message
    headers = bounded_headers(msg.headers)          # stream.core.control: the limits kept in memory
    return Message(msg.key, msg.value, msg.topic, msg.partition, msg.offset, headers, received_at)


class LiveBatches:
    """Runs micro-batches of one worker's events through ``pipeline``."""

    def __init__(self, pipeline: Pipeline, *, app: Any, sessions: SessionTable, events_topic: str,
                 recommendations_topic: str, dead_letter_topic: str, dead_letter_max_bytes: int,
                 feedback_topic: str | None = None) -> None:
        self.pipeline = pipeline
        self.app = app
        self.sessions = sessions
        self.events_topic = events_topic
        self.recommendations_topic = recommendations_topic
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.feedback_topic = feedback_topic
        self.stream: Any = None                          # the agent's stream, for acks
        self.held: list[tuple[Message, Any]] = []       # (message, faust event), oldest first
        self.unacked: dict[int, dict[int, Any]] = {}    # partition -> {offset: event} done, behind a held one
        self._lock = asyncio.Lock()
        self._epoch: int | None = None                  # app.rebalancing_count _next belongs to
        self._next: dict[int, int] = {}                 # partition -> offset its next event must have
        self._gaps: dict[int, tuple[Any, int, float, int]] = {}   # partition -> (tp, offset, sought at, seeks)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recommend")
        self._releases = 0                              # revocations so far (a sweep stops at one)
        self.sends = SendWatch()
        self.store_fault: StoreFault | None = None      # a failing state store (module docstring)
        self._store_delay = 0.1
        self._recoveries = 0                            # recoveries in a row, without a batch done between
        self.fault_driver_ids: set[str] = set()         # TEST ONLY (Settings.fault_driver_event_ids)

    @property
    def metrics(self):
        return self.pipeline.metrics

    # -----------------------------------------------------------------------------------------
    async def handle(self, events: Sequence[Any]) -> None:
        """One micro-batch (and whatever is held from before)."""
        now = time.monotonic()
        async with self._lock:
            fresh = await self._in_order(events)
            await self._run(self.held + [(to_message(ev, now), ev) for ev in fresh])

    async def retry_held(self) -> None:
        """Offer held events again when no new batch has come to carry them; repeat the seek back
        to a missing offset that has not come yet."""
        if self._lock.locked():
            return
        async with self._lock:
            await self._reseek_gaps()
            if self.held:
                await self._run(list(self.held))

    # -- the gap guard (module docstring) ----------------------------------------------------------
    async def _settle(self) -> bool:
        """False while Faust rebalances. After a rebalance, every owned events partition is due
        its committed offset next; until that event comes the partition is watched: once its
        high-water mark shows records there and none has come for ``GAP_RESEEK_S``, it is sought
        back (Faust may have handed every record of the partition on mid-rebalance, and dropped
        them when it fetched them again)."""
        app = self.app
        if app.rebalancing:
            return False
        epoch = app.rebalancing_count
        if epoch == self._epoch:
            return True
        self._next.clear()
        self._gaps.clear()
        if self.held:          # not acked: the seek to committed offsets delivers them again
            log.debug("%d held event(s) left to the seek to committed offsets", len(self.held))
            self.held = []
        consumer = app.consumer
        tps = [tp for tp in (consumer.assignment() if consumer is not None else ())
               if tp.topic == self.events_topic]
        starts = await self._start_offsets(tps)
        if app.rebalancing or app.rebalancing_count != epoch:
            return False
        self._epoch = epoch
        for tp, start in starts.items():
            self._next[tp.partition] = start
            self._gaps[tp.partition] = (tp, start, None, 0)     # None: no record known there yet
        log.info("after rebalance #%d: committed offsets %s", epoch,
                 {tp.partition: start for tp, start in sorted(starts.items(), key=lambda x: x[0].partition)})
        return True

    async def _in_order(self, events: Sequence[Any]) -> list[Any]:
        """The events that continue their partition's offsets; seeks back where one is missing."""
        if not await self._settle():
            if events:
                log.debug("%d event(s) delivered mid-rebalance left to the seek to committed offsets",
                          len(events))
            return []
        app = self.app
        epoch = self._epoch
        out: list[Any] = []
        blocked: set[int] = set()
        for ev in events:
            msg = ev.message
            if msg.topic != self.events_topic:
                out.append(ev)
                continue
            p, offset = msg.partition, msg.offset
            if p in blocked:
                continue
            expected = self._next.get(p)
            if expected is None:                      # assigned without a rebalance we saw
                expected = self._next[p] = await self._start_offset(msg.tp)
            gap = self._gaps.get(p)
            if gap is not None and gap[3] == 0:
                log.info("partition %d: first event after rebalance #%d at offset %d, committed %s",
                         p, epoch, offset, expected)
            if offset < expected:
                log.debug("partition %d: offset %d is a copy of one already taken (next is %d)", p, offset,
                          expected)
                continue
            if offset > expected:
                blocked.add(p)
                await self._seek_back(msg.tp, p, expected, offset)
                continue
            self._next[p] = offset + 1
            gap = self._gaps.pop(p, None)
            if gap is not None and gap[3]:
                log.info("partition %d: offset %d delivered again after the seek back", p, offset)
            if gap is not None:
                forget_gap(app.consumer, msg.tp)
            out.append(ev)
        if app.rebalancing or app.rebalancing_count != epoch:     # began while we awaited: start over
            return []
        return out

    async def _start_offset(self, tp: Any) -> int:
        return (await self._start_offsets([tp]))[tp]

    async def _start_offsets(self, tps: Sequence[Any]) -> dict[Any, int]:
        """Where Faust's seek after the rebalance put each of ``tps``: its committed offset (Faust
        keeps 0 as "none"), or the start of the log where nothing is committed, asked for all of
        them in one request."""
        consumer = self.app.consumer
        starts = {tp: committed_offset(consumer, tp) for tp in tps}
        unknown = [tp for tp, offset in starts.items() if offset is None]
        if unknown:
            earliest = await consumer.earliest_offsets(*unknown)
            for tp in unknown:
                starts[tp] = earliest.get(tp) or 0
        return starts

    async def _seek_back(self, tp: Any, partition: int, expected: int, got: int | None) -> None:
        gap = self._gaps.get(partition)
        now = time.monotonic()
        if gap is not None and gap[1] == expected and gap[2] is not None and now - gap[2] < GAP_RESEEK_S:
            return                                   # sought already: this is a copy fetched before it
        seeks = 1 if gap is None or gap[1] != expected else gap[3] + 1
        came = f"offset {got} came" if got is not None else "nothing came"
        log.warning("partition %d: %s where %d was due (committed %s); seeking back to %d (seek %d), "
                    "nothing from %d on is processed or acked until it comes", partition, came, expected,
                    committed_offset(self.app.consumer, tp), expected, seeks, expected)
        self._gaps[partition] = (tp, expected, now, seeks)
        await self.app.consumer.seek_wait({tp: expected})
        forget_gap(self.app.consumer, tp)

    def _highwater(self, tp: Any) -> int | None:
        try:
            return self.app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet, or no longer assigned
            return None

    async def _reseek_gaps(self) -> None:
        if not await self._settle() or not self._gaps:
            return
        owned = self.owned_partitions()
        now = time.monotonic()
        for partition, (tp, expected, at, seeks) in list(self._gaps.items()):
            if partition not in owned:
                self._gaps.pop(partition, None)
            elif at is None:                         # waiting for the first event after a rebalance
                hw = self._highwater(tp)
                if hw is not None and hw > expected:
                    self._gaps[partition] = (tp, expected, now, seeks)   # records are there: it is due
            elif now - at >= GAP_RESEEK_S:
                if seeks and seeks % 10 == 0:
                    log.error("partition %d: offset %d still not delivered after %d seeks back; the "
                              "partition waits for it", partition, expected, seeks)
                await self._seek_back(tp, partition, expected, None)

    async def _run(self, pending: list[tuple[Message, Any]]) -> None:
        self.held = []
        if not pending:
            return
        generation = self.app.rebalancing_count
        events_of = {(m.partition, m.offset): ev for m, ev in pending}
        messages = [m for m, _ in pending]
        result = await self._process(messages)
        await self._publish(result)
        if self.fault_driver_ids:
            self._inject_driver_fault(result)
        if self.app.rebalancing or self.app.rebalancing_count != generation:
            log.info("a rebalance began during a batch of %d event(s): its session writes and acks are "
                     "left to the partitions' next owner", len(messages))
            return
        if not await self._write_sessions(result.state_writes, generation):
            return
        owned = self.owned_partitions()
        self.held = [(m, events_of[(m.partition, m.offset)]) for m in result.held]
        for m in result.done:
            if m.partition in owned:
                self.unacked.setdefault(m.partition, {})[m.offset] = events_of[(m.partition, m.offset)]
        await self._write_changelog()
        await self._ack_up_to_held()
        self._recoveries = 0

    async def _write_sessions(self, writes: Sequence[Any], generation: int) -> bool:
        """Apply the batch's session writes to the partitions this worker owns; False when a
        rebalance began while a failing store stalled them (nothing is acked then: the partitions'
        next owner processes the events again).

        Without a store fault there is no await from the ownership check to the last write. A
        write the store refuses (:class:`StateStoreError`) is retried, with the same value, after
        the partition's database is reopened, for as long as it fails: the worker takes nothing
        new meanwhile, so Faust's buffer fills and it stops fetching."""
        owned = self.owned_partitions()
        i = 0
        wrote = False
        while i < len(writes):
            w = writes[i]
            if w.partition not in owned:
                i += 1
                continue
            try:
                if w.value is None:
                    self.sessions.delete(w.partition, w.key)
                else:
                    self.sessions.set(w.partition, w.key, w.value)
            except StateStoreError as exc:
                await self._store_failed(exc)
                if self.app.rebalancing or self.app.rebalancing_count != generation:
                    owned = self.owned_partitions()
                    self.sessions.outbox = [r for r in self.sessions.outbox if r[0] in owned]
                    log.warning("a rebalance began while the state store failed: the batch's acks are left "
                                "to the partitions' next owner")
                    return False
                owned = self.owned_partitions()
                continue
            i += 1
            wrote = True
        if wrote:                              # a batch that wrote nothing says nothing of the store
            self._store_ok()
        return True

    async def _store_failed(self, exc: StateStoreError) -> None:
        """Record (and log, at most every ``FAULT_LOG_EVERY_S``) a failing store, wait with backoff,
        then reopen the partition's database (which fails too while the disk still refuses writes)."""
        now = time.monotonic()
        fault = self.store_fault
        if fault is None or fault.partition != exc.partition:
            if fault is not None:
                self.metrics.set_store_failing(fault.store, fault.partition, False)
            self.store_fault = StoreFault(exc.store, exc.partition, str(exc), now, now)
            self.metrics.set_store_failing(exc.store, exc.partition, True)
            log.error("state store failing (%s): the worker stops taking events and retries; nothing is acked "
                      "until the write succeeds", exc)
        else:
            fault.reason = str(exc)
            if now - fault.logged >= FAULT_LOG_EVERY_S:
                fault.logged = now
                log.error("state store still failing after %.0f s: %s", now - fault.since, exc)
        await asyncio.sleep(self._store_delay)
        self._store_delay = min(self._store_delay * 2, MAX_STORE_BACKOFF_S)
        try:
            self.sessions.reopen(exc.partition)
        except StateStoreError as again:
            self.store_fault.reason = str(again)

    def _store_ok(self) -> None:
        fault = self.store_fault
        self._store_delay = 0.1
        if fault is None:
            return
        self.store_fault = None
        self.metrics.set_store_failing(fault.store, fault.partition, False)
        log.warning("state store writes succeed again after %.1f s; the worker goes on",
                    time.monotonic() - fault.since)

    def _inject_driver_fault(self, result: BatchResult) -> None:
        """TEST ONLY: raise, once per listed event id, between publishing a batch and writing its
        sessions -- a bug in the driver, as :meth:`recover` must handle it."""
        ids = {e for rec in result.recommendations for e in rec.get("event_ids", ())} & self.fault_driver_ids
        if ids:
            self.fault_driver_ids -= ids
            raise RuntimeError(f"injected driver fault after publishing {sorted(ids)} (TEST HOOK)")

    # -- anything else that raises (module docstring) -----------------------------------------------
    async def recover(self, exc: BaseException) -> None:
        """Start again from the committed offsets after ``exc`` escaped a batch: drop every event
        taken and not acked (held ones too) and seek each owned partition back to its committed
        offset, so they are delivered and processed again; back off when it keeps happening."""
        self._recoveries += 1
        log.error("a batch failed outside the pipeline (%s: %s); dropping what was taken and not acked and "
                  "starting again from the committed offsets (recovery %d in a row)", type(exc).__name__, exc,
                  self._recoveries, exc_info=exc)
        async with self._lock:
            self.held = []
            self.unacked.clear()
            self._epoch = None                    # the next batch settles afresh from committed offsets
            self._next.clear()
            self._gaps.clear()
            consumer = self.app.consumer
            if consumer is not None and not self.app.rebalancing:
                forget_tracked(consumer, self.events_topic)
                tps = [tp for tp in consumer.assignment() if tp.topic == self.events_topic]
                starts = await self._start_offsets(tps)
                if starts:
                    await consumer.seek_wait(starts)
                for tp in starts:
                    forget_gap(consumer, tp)
        await asyncio.sleep(min(0.5 * 2 ** (self._recoveries - 1), MAX_RECOVER_BACKOFF_S))

    async def _write_changelog(self) -> None:
        """Send the changelog records of the session writes just made, in one go, and wait until
        they are in Kafka (retried like every send: never dropped); then each partition's local
        store records the changelog offset it holds. Acks follow, so a commit never passes an
        event whose session write is not in the changelog."""
        records = self.sessions.take_outbox()
        if not records:
            return
        topic = self.sessions.changelog_topic
        last: dict[int, tuple[Any, int]] = {}

        def delivered(_item: tuple, md: Any) -> None:
            if md.partition not in last or md.offset > last[md.partition][1]:
                last[md.partition] = (md.topic_partition, md.offset)

        await publish(self.app.producer, [(topic, key, value, partition, None) for partition, key, value in records],
                      on_delivered=delivered, watch=self.sends)
        owned = self.owned_partitions()
        for partition, (tp, offset) in last.items():
            if partition not in owned:         # a revoked partition's database stays closed
                continue
            try:
                self.sessions.delivered(tp, offset)
            except Exception as exc:  # noqa: BLE001 - a stale offset only lengthens the next recovery
                log.warning("could not record changelog offset %d of partition %d: %s: %s", offset, partition,
                            type(exc).__name__, exc)

    async def _ack_up_to_held(self) -> None:
        """Ack what is done, but on each partition only below its oldest held event.

        Faust commits the longest run of acked offsets even when the one offset before it, or
        everything before it while nothing was committed yet, is not acked (faust-streaming 0.15.3
        ``Consumer._new_offset``); acking events after a held one would let the commit pass it,
        and a crash or a rebalance before it is handled would then lose it.
        """
        floor: dict[int, int] = {}
        for m, _ in self.held:
            floor[m.partition] = min(floor.get(m.partition, m.offset), m.offset)
        for partition in list(self.unacked):
            waiting = self.unacked[partition]
            below = floor.get(partition)
            for offset in sorted(o for o in waiting if below is None or o < below):
                await self.stream.ack(waiting.pop(offset))
            if not waiting:
                del self.unacked[partition]

    async def _process(self, messages: list[Message]) -> BatchResult:
        """The batch's results; a state store that fails to read stalls it (never dead-letters)."""
        while True:
            try:
                result = await self._process_once(messages)
            except StateStoreError as exc:
                await self._store_failed(exc)
                continue
            return result

    async def _process_once(self, messages: list[Message]) -> BatchResult:
        loop = asyncio.get_running_loop()
        read = self.sessions.get
        error: BaseException | None = None
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS_S)):
            if delay:
                await asyncio.sleep(delay)
            try:
                return await loop.run_in_executor(self._executor, self.pipeline.process, messages, read)
            except StateStoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried, then isolated
                error = exc
                log.warning("batch of %d message(s) failed (attempt %d): %s: %s", len(messages), attempt + 1,
                            type(exc).__name__, exc)
        return await loop.run_in_executor(self._executor, self.pipeline.process_isolating, messages, read, error)

    async def _publish(self, result: BatchResult) -> None:
        sends: list[tuple[str, bytes | None, bytes | None, int | None, list | None]] = []
        # a forgotten user's latest recommendation and hit are tombstoned, before anything this
        # batch recommends after the request (same key, same producer: same partition, in order)
        for user_id in dict.fromkeys(result.forgotten):
            sends.append((self.recommendations_topic, user_id.encode(), None, None, None))
            if self.feedback_topic:
                sends.append((self.feedback_topic, user_id.encode(), None, None, None))
        for rec in result.recommendations:
            sends.append((self.recommendations_topic, rec["user_id"].encode(), orjson.dumps(rec), None, None))
        for dl in result.dead_letters:
            key, value, headers = dead_letter_record(dl, self.dead_letter_max_bytes)
            sends.append((self.dead_letter_topic, key, value, None, headers))
        for r in result.resends:
            sends.append((self.events_topic, r.key, r.value, r.partition, list(r.headers) or None))
        if self.feedback_topic:
            for hit in result.hits:
                sends.append((self.feedback_topic, hit["user_id"].encode(), feedback_record(hit), None, None))
        await publish(self.app.producer, sends, watch=self.sends)
        if result.recommendations:
            now = time.time()
            for ts in result.latest_event_ts:
                self.metrics.observe_end_to_end(now - ts)
            self.metrics.on_recommendation_out(len(result.recommendations))
            for rec in result.recommendations:
                self.metrics.on_served(rec.get("variant", "default"), rec["session_model_version"])
        for hit in result.hits:
            self.metrics.on_hit(hit["variant"], hit["session_model_version"], hit["event_type"])

    # -----------------------------------------------------------------------------------------
    def owned_partitions(self) -> set[int]:
        consumer = self.app.consumer
        if consumer is None:
            return set()
        return {tp.partition for tp in consumer.assignment() if tp.topic == self.events_topic}

    async def sweep(self, retention_s: float, now: float | None = None, chunk: int = 5000) -> int:
        """Delete sessions untouched for ``retention_s`` (wall clock) on the partitions this worker
        owns; returns how many.

        Chunked (issue 10): a worker holds up to millions of sessions on disk, and one pass over
        them would stop the event loop for seconds. After every ``chunk`` sessions read the sweep
        yields to the loop, and a partition revoked meanwhile is left to its new owner.
        """
        from stream.core import session_state

        now = time.time() if now is None else now

        def expired_state(raw: bytes | None) -> bool:
            """True for a session idle past retention, or unreadable (nothing worth keeping)."""
            if raw is None:
                return False
            try:
                state = session_state.loads(raw)
            except Exception:  # noqa: BLE001 - unreadable
                return True
            return state is None or now - state.get("seen_at", now) > retention_s

        n = 0
        releases = self._releases
        for partition in sorted(self.owned_partitions()):
            expired = []
            seen = 0
            for _, key, raw in self.sessions.items({partition}):
                if expired_state(raw):
                    expired.append(key)
                seen += 1
                if seen % chunk == 0:
                    await asyncio.sleep(0)
                    if self._releases != releases:     # a revoked partition's database is closed
                        return n
            await asyncio.sleep(0)
            if self._releases != releases:
                return n
            async with self._lock:           # not while a batch folds these sessions
                for i, key in enumerate(expired, 1):
                    if expired_state(self.sessions.get(partition, key)):    # a batch may have refreshed it
                        self.sessions.delete(partition, key)
                        n += 1
                    if i % chunk == 0:
                        await self._write_changelog()
                        await asyncio.sleep(0)
                        if self._releases != releases:
                            return n
                await self._write_changelog()
        return n

    def release(self, partitions: set[int]) -> None:
        self._releases += 1
        n = self.sessions.release(partitions)
        self.held = [(m, ev) for m, ev in self.held if m.partition not in partitions]
        for p in partitions:              # the partitions' next owner processes these again
            self.unacked.pop(p, None)
        if n:
            log.info("released %d session(s) of revoked partition(s) %s", n, sorted(partitions))

    async def finish(self, timeout: float) -> bool:
        """A clean stop: wait until the batch in flight is published, written and acked, and run
        no other batch, retry or sweep after it (the lock is kept). False if it took longer than
        ``timeout`` seconds: its events are then not acked, and the next owner processes them again."""
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._executor.shutdown(wait=False)


async def publish(producer: Any, sends: list[tuple[str, bytes | None, bytes | None, int | None, list | None]], *,
                  on_delivered: Callable[[tuple, Any], None] | None = None, watch: SendWatch | None = None) -> None:
    """Send every (topic, key, value, partition, headers) and wait until each is delivered
    (``on_delivered(item, record_metadata)`` for each, when given); ``watch`` records how long
    they wait and the last error.

    A failed send is retried with backoff until it goes through: a broker that is away stalls the
    batch, it never drops one. A dead letter the broker refuses as too large goes again without
    its value (its headers keep the reason, original size and hash).
    """
    if not sends:
        return
    if watch is not None:
        watch.begin()
    try:
        await _publish(producer, sends, on_delivered, watch)
    finally:
        if watch is not None:
            watch.end()


async def _publish(producer: Any, sends: list, on_delivered: Callable[[tuple, Any], None] | None,
                   watch: SendWatch | None) -> None:
    pending = list(sends)
    delay = 0.1
    attempt = 0
    while pending:
        attempt += 1
        futures: list[tuple[list[tuple], Any]] = []     # (the items, the future of their delivery)
        failed: list[tuple] = []

        def fail(items: list[tuple], exc: BaseException) -> None:
            failed.extend(_after_failure(item, exc, attempt) for item in items)
            if watch is not None:
                watch.error = f"{type(exc).__name__}: {exc}"

        batched, single = _split_for_batches(producer, pending)
        for item in single:
            topic, key, value, partition, headers = item
            try:
                futures.append(([item], await producer.send(topic, key, value, partition, None, headers)))
            except Exception as exc:  # noqa: BLE001 - classified and retried below
                fail([item], exc)
        if batched:
            await _send_batches(producer, batched, futures, fail)
        for items, fut in futures:
            try:
                metadata = await fut
            except Exception as exc:  # noqa: BLE001
                fail(items, exc)
            else:
                if on_delivered is None:
                    continue
                if len(items) == 1:
                    on_delivered(items[0], metadata)
                else:                       # a record batch's metadata: the offset of its first record
                    for i, item in enumerate(items):
                        on_delivered(item, metadata._replace(offset=metadata.offset + i))
        if failed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_SEND_BACKOFF_S)
        pending = failed


def _split_for_batches(producer: Any, items: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(items to append to record batches, items to send one by one).

    Faust's aiokafka producer takes whole record batches (``create_batch`` / ``send_batch``): a
    record costs an append to its partition's batch instead of a send of its own through Faust's and
    aiokafka's per-message path (12-17 us a record against 7-8 on the embedded broker; the worker
    sends two records for every event). A topic with a record that has headers (dead letters, some
    re-keyed events) goes one by one: a dead letter too large for the broker is sent again without
    its value (:func:`_after_failure`), and a topic's records keep their order either way. So does
    a keyless record without a partition (aiokafka picks one at random), and every record where
    the producer is another driver's.

    Fewer than :data:`BATCH_SEND_MIN` records (below full load) go one by one too: a record batch
    for a partition waits until the one aiokafka is filling for it has left, where a record joins
    that one -- a round trip more of latency for nothing to gain.
    """
    if getattr(producer, "_ensure_producer", None) is None or len(items) < BATCH_SEND_MIN:
        return [], items
    one_by_one = {item[0] for item in items if item[4]}
    batched, single = [], []
    for item in items:
        if item[0] in one_by_one or (item[3] is None and item[1] is None):
            single.append(item)
        else:
            batched.append(item)
    return batched, single


async def _send_batches(producer: Any, items: list[tuple], futures: list,
                        fail: Callable[[list, BaseException], None]) -> None:
    """Append ``items`` to one record batch per partition (a full one goes and another starts), in
    their order; the partition of a keyed record without one is what the producer's partitioner
    (Faust's ``producer.partitioner``, the one aiokafka is given) picks, as a send would."""
    try:
        kafka = producer._ensure_producer()             # Faust's aiokafka producer (NotReady before start)
        for topic in dict.fromkeys(item[0] for item in items):
            await kafka.client._wait_on_metadata(topic)
        partitions = _partitions(items, kafka.client.cluster, producer.partitioner)
    except Exception as exc:  # noqa: BLE001 - retried like any send
        fail(items, exc)
        return
    open_batches: dict[tuple[str, int], tuple[Any, list[tuple]]] = {}

    async def hand_over(topic: str, partition: int, builder: Any, batch_items: list[tuple]) -> None:
        try:
            futures.append((batch_items, await kafka.send_batch(builder, topic, partition=partition)))
        except Exception as exc:  # noqa: BLE001 - retried like any send
            fail(batch_items, exc)

    for item, partition in zip(items, partitions):
        topic, key, value = item[:3]
        slot = open_batches.get((topic, partition))
        if slot is None:
            slot = open_batches[(topic, partition)] = (kafka.create_batch(), [])
        try:
            if slot[0].append(key=key, value=value, timestamp=None) is None:    # full: it goes, another starts
                await hand_over(topic, partition, *slot)
                slot = open_batches[(topic, partition)] = (kafka.create_batch(), [])
                slot[0].append(key=key, value=value, timestamp=None)
        except Exception as exc:  # noqa: BLE001 - a record a batch refuses is retried like any send
            fail([item], exc)
            continue
        slot[1].append(item)
    for (topic, partition), (builder, batch_items) in open_batches.items():
        if batch_items:
            await hand_over(topic, partition, builder, batch_items)


def _partitions(items: list[tuple], cluster: Any, partitioner: Any) -> list[int]:
    """Each item's partition: its own, or the one ``partitioner`` gives its key among the topic's."""
    places: dict[str, tuple[list[int], list[int]]] = {}
    out = []
    for topic, key, _, partition, _ in items:
        if partition is None:
            place = places.get(topic)
            if place is None:
                place = places[topic] = (sorted(cluster.partitions_for_topic(topic) or ()),
                                         sorted(cluster.available_partitions_for_topic(topic) or ()))
            partition = partitioner(key, *place)
        out.append(partition)
    return out


def feedback_record(hit: dict[str, Any]) -> bytes:
    """A hit as published on the feedback topic (its event time as ISO 8601, like recommendations)."""
    from stream.core.recommender import iso

    return orjson.dumps({**hit, "ts": iso(hit["ts"])})


def _after_failure(item: tuple, exc: BaseException, attempt: int) -> tuple:
    from aiokafka.errors import MessageSizeTooLargeError

    topic, key, value, partition, headers = item
    cause = exc if isinstance(exc, MessageSizeTooLargeError) else exc.__cause__
    if isinstance(cause, MessageSizeTooLargeError) and headers and value is not None:
        log.error("a dead letter of %d bytes was refused as too large; sending it without its value",
                  len(value))
        return (topic, key, None, partition, [*headers, ("shopstream.dead-letter.truncated", b"dropped-value")])
    if attempt == 1 or attempt % 20 == 0:
        log.warning("send to %s failed (attempt %d), retrying: %s: %s", topic, attempt, type(exc).__name__, exc)
    return item

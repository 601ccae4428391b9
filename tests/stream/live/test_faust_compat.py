"""Every Faust/aiokafka internal that stream/live/faust_compat.py reaches still exists.

These fail loudly, with the reason, when a change of the pinned versions removes or renames one.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PRIVATE = re.compile(r"_current_event|\._gap\b|_fetch_max_wait_ms|_fetch_max_bytes|_highwaters|_committed_offset|\._thread\._consumer"
                     r"|send_changelog|_key_partition|_db_for_partition|blueprints\._enabled|manager\._enabled")


def test_pinned_versions():
    import aiokafka
    import faust

    assert faust.__version__ == "0.15.3", "faust_compat was checked against faust-streaming 0.15.3"
    assert aiokafka.__version__ == "0.14.0", "faust_compat was checked against aiokafka 0.14.0"


def test_highwater_reach():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert inspect.iscoroutinefunction(AIOKafkaConsumerThread._highwaters), \
        "AIOKafkaConsumerThread._highwaters changed: table recovery may stop short of the changelog end"


def test_fetch_wait_reach():
    from aiokafka.consumer.fetcher import Fetcher

    src = inspect.getsource(Fetcher)
    assert "self._fetch_max_wait_ms" in src, "aiokafka's Fetcher no longer reads _fetch_max_wait_ms per request"


def test_memory_store_reach():
    from faust.stores.memory import Store

    src = inspect.getsource(Store)
    assert "self._key_partition" in src and "self.data" in src, \
        "faust's memory store no longer tracks the partition of each key"


def test_rocksdb_store_reach():
    from faust.stores import rocksdb

    assert rocksdb.USE_ROCKSDICT, "rocksdict is not installed: faust's RocksDB store has no driver"
    for name in ("_db_for_partition", "offset_key", "partition_path", "set_persisted_offset", "revoke_partitions"):
        assert hasattr(rocksdb.Store, name), f"faust's RocksDB store has no {name}"
    src = inspect.getsource(rocksdb.Store)
    assert "self._dbs" in src and "self._key_index" in src, "faust's RocksDB store changed its partition databases"
    assert rocksdb.Store.offset_key == b"__faust\0offset__", "faust stores the changelog offset elsewhere"


def test_bulk_restore_reach():
    """What ``install_bulk_restore`` uses of Faust's recovery (faust/tables/recovery.py)."""
    from faust.tables.recovery import Recovery

    params = list(inspect.signature(Recovery._seek_offsets).parameters)
    assert params == ["self", "consumer", "tps", "offsets", "title"]
    src = inspect.getsource(Recovery)
    assert 'T(self._seek_offsets)(\n                        consumer, assigned_active_tps, active_offsets, "active"' in src
    for name in ("active_highwaters", "active_offsets", "tp_to_table", "signal_recovery_start",
                 "signal_recovery_end", "in_recovery", "flush_buffers", "need_recovery"):
        assert name in src, f"faust's recovery has no {name}"
    # the end of recovery that the bulk restore signals the same way
    assert "if self.in_recovery and not self.need_recovery():\n                # apply anything stuck in the buffers\n" \
           "                self.flush_buffers()" in src


def test_send_changelog_takes_a_partition():
    from faust.tables.base import Collection

    params = list(inspect.signature(Collection.send_changelog).parameters)
    assert params[:4] == ["self", "partition", "key", "value"]


def test_committed_offset_reach():
    from faust.transport.consumer import Consumer

    assert "_committed_offset" in inspect.getsource(Consumer)


@pytest.mark.parametrize("package", ["stream", "engines", "index", "learn"])
def test_internals_are_reached_from_one_module_only(package):
    offenders = []
    for path in (REPO / package).rglob("*.py"):
        if path.name == "faust_compat.py":
            continue
        if PRIVATE.search(path.read_text()):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"Faust/aiokafka internals reached outside stream/live/faust_compat.py: {offenders}"


def test_web_views_reach():
    """only_own_web_pages: Faust's built-in views are the blueprints named by faust.web.apps.*, held in
    BlueprintManager._enabled until the server applies them; every view setting we turn off exists."""
    from faust.types.settings import Settings as FaustSettings
    from faust.web.base import DEFAULT_BLUEPRINTS, PRODUCTION_BLUEPRINTS, BlueprintManager

    from stream.live.faust_compat import FAUST_VIEW_SETTINGS

    assert "self._enabled" in inspect.getsource(BlueprintManager.apply)
    for _, bp in [*DEFAULT_BLUEPRINTS, *PRODUCTION_BLUEPRINTS]:
        assert bp.startswith("faust.web.apps."), bp
    for name in FAUST_VIEW_SETTINGS:
        assert hasattr(FaustSettings, name), f"faust has no setting {name}: its view may be on"


def test_skip_ack_reach():
    """The skip-ack guard: faust's pure-Python stream iterator acks a message it skips, before marking
    it tracked (the Cython one skips it without an ack); every other ack goes through Consumer.ack."""
    from faust.streams import Stream
    from faust.transport.consumer import Consumer
    from faust.types.tuples import ConsumerMessage

    src = inspect.getsource(Stream._py_aiter)
    skip, tracked = src.index("value = skipped_value"), src.index("message.tracked = True")
    assert skip < tracked, "faust's stream no longer skips a message before marking it tracked"
    assert "value is skipped_value" in src and "event.ack()" in src
    assert ConsumerMessage.use_tracking is True
    assert "consumer.ack(self)" in inspect.getsource(ConsumerMessage.on_final_ack)
    assert list(inspect.signature(Consumer.ack).parameters) == ["self", "message"]


def test_gap_guard_uses_public_seek():
    """LiveBatches seeks back with Consumer.seek_wait, which also resets Faust's read offset."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from faust.types.transports import ConsumerT

    assert hasattr(ConsumerT, "seek_wait")
    assert "_read_offset[tp] = offset" in inspect.getsource(AIOKafkaConsumerThread._seek_wait)


def test_gap_reach():
    """forget_gap: Faust records offset jumps in Consumer._gap (interval trees) and counts them acked."""
    from faust.transport.consumer import Consumer

    assert "self._gap[tp]" in inspect.getsource(Consumer._new_offset)
    assert "gap_for_tp.addi(" in inspect.getsource(Consumer._add_gap)


def test_batched_drain_is_a_copy_of_the_pinned_fetch_loop():
    """install_batched_drain replaces Consumer._drain_messages with a copy that waits once per fetch.
    If Faust's loop changed, the copy must be checked against the new one (and the hash updated)."""
    import hashlib

    from faust.transport.consumer import Consumer

    from stream.live import faust_compat

    original = faust_compat._installed.get("drain", Consumer._drain_messages)
    digest = hashlib.sha256(inspect.getsource(original).encode()).hexdigest()
    assert digest == faust_compat.DRAIN_SOURCE_SHA256, \
        "faust-streaming's Consumer._drain_messages changed: re-check install_batched_drain against it"
    for reach in ("self._read_offset", "self._commit_every", "self._n_acked", "self.suspend_flow",
                  "self.consumer_stopped_errors", "self._add_gap(", "wait_first("):
        assert reach in inspect.getsource(original) or reach in inspect.getsource(Consumer), reach
    faust_compat.install_batched_drain()
    assert Consumer._drain_messages is not original
    assert inspect.iscoroutinefunction(Consumer._drain_messages)


def test_take_batches_gives_each_event_what_faust_stream_iterator_does():
    """take_batches takes the agent's events from ``stream.channel.queue`` itself, skipping and
    tracking each as Faust's stream iterators do (Cython ``_prepare_event`` and ``Stream._py_aiter``):
    if either changes what it checks or records per event, take_batches must be checked against it."""
    from pathlib import Path

    import faust
    from faust.channels import Channel
    from mode.utils.queues import ThrowableQueue

    py = inspect.getsource(faust.Stream._py_aiter)
    pyx = (Path(faust.__file__).parent / "_cython" / "streams.pyx").read_text()
    for src in (py, pyx):
        for reach in ("not self.app.flow_control.is_active()",
                      "message.generation_id != self.app.consumer_generation_id",
                      "topic in acking_topics and not message.tracked", "message.tracked = True",
                      "on_message_in("):
            assert reach in src.replace("self.acking_topics", "acking_topics"), reach
    assert "add_unacked(message)" in py and "self.add_unacked(message)" in pyx
    assert "unacked: Set[Message] = consumer.unacked" in py
    assert "acking_topics: Set[str] = self.app.topics.acking_topics" in py
    assert "self.app.sensors.on_message_in" in inspect.getsource(faust.Stream.__init__)
    assert "self.queue.get()" in inspect.getsource(Channel.__anext__)       # the queue a stream reads
    for name in ("get", "get_nowait", "empty"):                        # errors and the fetch pause
        assert name in vars(ThrowableQueue), name



def test_fetch_wait_reaches_the_consumer_faust_creates():
    """install_fetch_max_wait sets aiokafka's _fetch_max_wait_ms on the consumer Faust creates,
    which aiokafka hands to its fetcher in start(): the first fetch already waits that long."""
    import aiokafka
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from stream.live import faust_compat

    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=1500" in inspect.getsource(
        faust_compat._installed.get("create_worker_consumer", AIOKafkaConsumerThread._create_worker_consumer))
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    # the byte bound of a fetch goes the same way
    assert "fetch_max_bytes=self._fetch_max_bytes" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "self._fetch_max_bytes = fetch_max_bytes" in inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    assert "max_partition_fetch_bytes=conf.consumer_max_fetch_size" in inspect.getsource(
        faust_compat._installed.get("create_worker_consumer", AIOKafkaConsumerThread._create_worker_consumer))
    faust_compat.install_fetch_max_wait(25, max_bytes=4 << 20)
    assert AIOKafkaConsumerThread._create_worker_consumer is not faust_compat._installed["create_worker_consumer"]
    assert faust_compat._installed["fetch_max_wait_ms"] == 25
    assert faust_compat._installed["fetch_max_bytes"] == 4 << 20


def test_a_changelog_faust_pauses_is_not_fetched_and_one_it_resumes_is(broker, tmp_path):
    """install_changelog_fetch_pause: Faust's pause of a changelog partition reaches aiokafka's
    fetcher (a real consumer on the real broker, in its own thread and loop as Faust runs it), so
    the worker's own changelog writes are not fetched into a buffer nobody empties -- which stopped
    every fetch to the broker for aiokafka's 100 ms prefetch backoff (issue 13). Event partitions
    are left alone, and a resume (recovery, standbys) fetches the changelog again."""
    import asyncio
    import threading
    import uuid
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from faust.transport.consumer import Consumer

    from stream.live import faust_compat
    from stream.ops.topics import TopicSpec, ensure_topics
    from stream.settings import Settings

    run_id = uuid.uuid4().hex[:8]
    events, changelog = f"ev-{run_id}", f"app-{run_id}-sessions-changelog"
    settings = Settings(broker=broker, data_dir=tmp_path)
    asyncio.run(ensure_topics(settings, [TopicSpec(events, 1), TopicSpec(changelog, 1, compacted=True)]))
    ev_tp, cl_tp = TopicPartition(events, 0), TopicPartition(changelog, 0)

    loop = asyncio.new_event_loop()                 # the consumer's own thread and loop, as in Faust
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def in_thread(coro, timeout=20):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def start():
        c = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None, fetch_max_wait_ms=25,
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        c.assign([ev_tp, cl_tp])
        return c

    aio = in_thread(start())
    faust_consumer = SimpleNamespace(app=SimpleNamespace(tables=SimpleNamespace(changelog_topics={changelog})),
                                     _thread=SimpleNamespace(thread_loop=loop, _consumer=aio),
                                     _active_partitions={ev_tp, cl_tp}, _paused_partitions=set())
    faust_consumer._get_active_partitions = lambda: faust_consumer._active_partitions

    async def produce():
        p = AIOKafkaProducer(bootstrap_servers=broker)
        await p.start()
        try:
            await p.send_and_wait(events, b"v", key=b"k", partition=0)
            await p.send_and_wait(changelog, b"s", key=b"k", partition=0)
        finally:
            await p.stop()

    async def buffered(tp, want, timeout=5.0):
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if (tp in aio._fetcher._records) == want:
                return True
            await asyncio.sleep(0.02)
        return False

    faust_compat.install_changelog_fetch_pause()
    try:
        Consumer.pause_partitions(faust_consumer, [ev_tp, cl_tp])        # as Faust does on assignment
        Consumer.resume_partitions(faust_consumer, [ev_tp])              # streams resume; changelog stays paused
        in_thread(asyncio.sleep(0.1))
        assert in_thread(asyncio.sleep(0, aio.paused())) == {cl_tp}
        assert faust_consumer._paused_partitions == {cl_tp}              # Faust's own bookkeeping still done
        asyncio.run(produce())
        assert in_thread(buffered(ev_tp, True)), "the events partition was not fetched"
        assert not in_thread(buffered(cl_tp, True, timeout=1.0)), "a paused changelog was fetched"
        Consumer.resume_partitions(faust_consumer, [cl_tp])              # recovery or a standby reads it
        assert in_thread(buffered(cl_tp, True)), "a resumed changelog was not fetched"
    finally:
        in_thread(aio.stop())
        loop.call_soon_threadsafe(loop.stop)


def test_changelog_apply_reach():
    """install_changelog_apply_guard wraps the RocksDB store's apply_changelog_batch, because
    Faust's recovery goes on past records whose write failed ("Error in recovery")."""
    import faust.tables.recovery
    from faust.stores.rocksdb import Store

    from stream.live.faust_compat import install_changelog_apply_guard

    params = list(inspect.signature(_original_apply(Store)).parameters)
    assert params == ["self", "batch", "to_key", "to_value"], f"Store.apply_changelog_batch changed: {params}"
    src = inspect.getsource(faust.tables.recovery)
    assert 'logger.warning(f"Error in recovery {ex}")' in src, \
        "Faust's recovery no longer swallows a failed changelog write: check install_changelog_apply_guard"
    install_changelog_apply_guard()
    assert Store.apply_changelog_batch.__name__ == "apply_changelog_batch"
    assert _original_apply(Store) is not Store.apply_changelog_batch


def _original_apply(store_cls):
    from stream.live import faust_compat

    return faust_compat._installed.get("apply_changelog_batch", store_cls.apply_changelog_batch)


def test_an_idle_worker_logs_no_stall_for_its_paused_changelog(settings_factory, worker_factory):
    """A healthy worker with nothing to do logs no ERROR. Faust's stall check (every 2.5 commit
    intervals) logged "Aiokafka has not sent fetch request ..." for every sessions changelog
    partition once ``stall_log_after_s`` passed (300 s by default, 1 s here), because
    ``install_changelog_fetch_pause`` stops aiokafka fetching them by design; an operator alerting on
    ERROR lines was paged by an idle worker. Events partitions are still checked."""
    import time

    settings = settings_factory()
    worker = worker_factory(settings, extra_env={"SHOPSTREAM_STALL_LOG_AFTER_S": "1"})
    time.sleep(6.0)                        # > two stall checks (every 2.5 s) past the 1 s limit
    errors = [line for line in worker.log_path.read_text().splitlines() if "[ERROR]" in line]
    assert not errors, errors[:3]

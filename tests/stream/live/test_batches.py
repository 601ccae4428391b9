"""The live driver's acks: never past an event that is held, on any partition.

Found by the chaos test: an event naming a product deleted at that moment is held (not acked)
while later events of its partition were acked; Faust committed past the held one, and the worker
was killed before the hold ran out -- the partition's next owner started after it and the event
was neither reflected nor dead-lettered.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from stream.core.pipeline import BatchResult
from stream.live.batches import LiveBatches

TOPIC = "events"


class FakePipeline:
    """Holds messages whose value is b"hold" until ``release_holds``; everything else is done."""

    def __init__(self) -> None:
        self.metrics = SimpleNamespace()
        self.holding = True

    def process(self, messages, read_state):
        out = BatchResult()
        for m in messages:
            (out.held if self.holding and m.value == b"hold" else out.done).append(m)
        return out


class FakeStream:
    def __init__(self) -> None:
        self.acked: list[tuple[int, int]] = []

    async def ack(self, event) -> None:
        self.acked.append((event.message.partition, event.message.offset))


def _event(partition: int, offset: int, value: bytes = b"{}"):
    return SimpleNamespace(message=SimpleNamespace(key=b"u", value=value, topic=TOPIC, partition=partition,
                                                   offset=offset, headers=()))


class FakeProducer:
    """Delivers every send at once, numbering each partition's records from 0."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    async def send(self, topic, key, value, partition, timestamp, headers):
        from faust.types import TP

        offset = sum(1 for t, _, _, p in self.sent if (t, p) == (topic, partition))
        self.sent.append((topic, key, value, partition))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(partition=partition, offset=offset, topic_partition=TP(topic, partition)))
        return fut


def _batches(pipeline) -> LiveBatches:
    from faust.types import TP

    consumer = SimpleNamespace(assignment=lambda: {TP(TOPIC, 0), TP(TOPIC, 1)})
    app = SimpleNamespace(rebalancing=False, rebalancing_count=0, consumer=consumer, producer=FakeProducer())
    sessions = SimpleNamespace(get=lambda p, k: None, release=lambda parts: 0, take_outbox=lambda: [])
    b = LiveBatches(pipeline, app=app, sessions=sessions, events_topic=TOPIC, recommendations_topic="recs",
                    dead_letter_topic="dlq", dead_letter_max_bytes=65536)
    b.stream = FakeStream()

    async def publish(result) -> None:
        return None

    b._publish = publish

    async def in_order(events):      # offset order after rebalances: tests/stream/live/test_partition_order.py
        return list(events)

    async def no_gaps():
        return None

    b._in_order = in_order
    b._reseek_gaps = no_gaps
    return b


def test_events_after_a_held_one_are_acked_only_once_it_is_handled():
    pipeline = FakePipeline()
    b = _batches(pipeline)

    async def scenario():
        await b.handle([_event(0, 4), _event(0, 5, b"hold"), _event(0, 6), _event(0, 7), _event(1, 3)])
        assert b.stream.acked == [(0, 4), (1, 3)]          # 6 and 7 are done, but wait behind 5
        await b.handle([_event(1, 4), _event(0, 8)])
        assert b.stream.acked == [(0, 4), (1, 3), (1, 4)]
        pipeline.holding = False                           # the product arrived (or the hold ran out)
        await b.retry_held()
        assert b.stream.acked == [(0, 4), (1, 3), (1, 4), (0, 5), (0, 6), (0, 7), (0, 8)]
        assert not b.unacked and not b.held

    asyncio.run(scenario())
    b.close()


def test_a_revoked_partition_drops_what_waits_behind_its_held_event():
    b = _batches(FakePipeline())

    async def scenario():
        await b.handle([_event(0, 5, b"hold"), _event(0, 6), _event(1, 1)])
        b.release({0})                                     # the next owner processes 5 and 6 again
        assert not b.held and not b.unacked
        assert b.stream.acked == [(1, 1)]

    asyncio.run(scenario())
    b.close()


def test_faust_still_commits_past_a_single_unacked_offset():
    """Why the driver never acks past a held event. If this fails, faust-streaming's
    ``Consumer._new_offset`` changed: check whether ``LiveBatches._ack_up_to_held`` is still needed."""
    from faust.transport.consumer import Consumer
    from faust.types import TP
    from intervaltree import IntervalTree

    tp = TP(TOPIC, 0)
    for committed in (None, 5):                  # offset 5 not acked, 6..8 acked
        consumer = SimpleNamespace(_acked={tp: [6, 7, 8]}, _acked_index={tp: {6, 7, 8}},
                                   _gap=defaultdict(IntervalTree),
                                   _committed_offset=defaultdict(lambda: None, {tp: committed}))
        assert Consumer._new_offset(consumer, tp) == 9


class DictSessions:
    """A sessions store in a dict, partition-explicit like ``SessionTable``."""

    changelog_topic = "sessions-changelog"

    def __init__(self, values: dict[tuple[int, bytes], bytes]) -> None:
        self.values = values
        self.outbox: list[tuple[int, bytes, bytes | None]] = []
        self.persisted: dict[int, int] = {}

    def get(self, p, k):
        return self.values.get((p, k))

    def delete(self, p, k):
        self.values.pop((p, k), None)
        self.outbox.append((p, k, None))

    def take_outbox(self):
        out, self.outbox = self.outbox, []
        return out

    def delivered(self, tp, offset):
        self.persisted[tp.partition] = offset

    def items(self, partitions):
        for (p, k), v in list(self.values.items()):
            if p in partitions:
                yield p, k, v

    def release(self, parts):
        return 0


def _sessions(n: int, old_every: int, now: float) -> dict[tuple[int, bytes], bytes]:
    from stream.core import session_state

    def state(seen_at: float) -> bytes:
        return session_state.dumps({"v": session_state.STATE_VERSION, "session_id": "s", "last": 0.0, "items": [],
                                    "queries": [], "purchased": [], "cart": [], "counts": {}, "seen": [],
                                    "seen_at": seen_at})

    return {(i % 2, f"u{i}".encode()): state(now - (10_000 if i % old_every == 0 else 1)) for i in range(n)}


def test_the_sweep_deletes_idle_sessions_in_chunks_and_lets_the_loop_run():
    now = 1_000_000.0
    b = _batches(FakePipeline())
    b.sessions = DictSessions(_sessions(6000, 3, now))
    ticks = []

    async def scenario():
        async def ticker():
            while True:
                ticks.append(1)
                await asyncio.sleep(0)

        t = asyncio.ensure_future(ticker())
        n = await b.sweep(retention_s=3600, now=now, chunk=500)
        t.cancel()
        return n

    assert asyncio.run(scenario()) == 2000
    assert len(b.sessions.values) == 4000
    assert len(ticks) >= 12                  # the loop ran between chunks, not once after a blocking pass
    tombstones = [(p, k) for t, k, v, p in b.app.producer.sent if t == "sessions-changelog" and v is None]
    assert len(tombstones) == 2000 and not b.sessions.outbox    # each deletion is in the changelog
    assert b.sessions.persisted == {0: 999, 1: 999}              # and each partition's offset recorded
    b.close()


def test_a_revocation_stops_the_sweep():
    now = 1_000_000.0
    b = _batches(FakePipeline())
    b.sessions = DictSessions(_sessions(6000, 1, now))       # every session idle

    async def scenario():
        sweeping = asyncio.ensure_future(b.sweep(retention_s=3600, now=now, chunk=500))
        await asyncio.sleep(0)
        b.release({0})                                       # the partition's database goes away
        return await sweeping

    assert asyncio.run(scenario()) == 0
    assert len(b.sessions.values) == 6000
    b.close()


def test_a_changelog_offset_that_cannot_be_recorded_loses_nothing(caplog):
    """Recording a partition's changelog offset (a RocksDB put) failing is logged, not raised:
    the deletions are made and in the changelog all the same, and the sweep finishes."""
    now = 1_000_000.0
    b = _batches(FakePipeline())
    b.sessions = DictSessions(_sessions(600, 3, now))

    def broken(tp, offset):
        raise OSError("disk gone")

    b.sessions.delivered = broken
    with caplog.at_level("WARNING", logger="stream.live.batches"):
        assert asyncio.run(b.sweep(retention_s=3600, now=now, chunk=500)) == 200
    assert len(b.sessions.values) == 400
    assert sum(1 for t, _, v, _ in b.app.producer.sent if t == "sessions-changelog" and v is None) == 200
    assert any("could not record changelog offset" in r.getMessage() for r in caplog.records)
    b.close()

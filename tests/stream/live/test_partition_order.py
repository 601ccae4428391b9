"""The live driver's gap guard (issue #9): a partition's events are taken strictly in offset order."""
from __future__ import annotations

import asyncio
from collections import namedtuple
from types import SimpleNamespace

from stream.core.pipeline import BatchResult
from stream.live import batches as batches_mod
from stream.live.batches import LiveBatches

TOPIC = "events"
TP = namedtuple("TP", "topic partition")


class FakeConsumer:
    def __init__(self, committed: dict[int, int | None]) -> None:
        self._committed_offset = {TP(TOPIC, p): off for p, off in committed.items()}   # what Faust keeps
        self.seeks: list[tuple[int, int]] = []
        self.highwaters: dict = {}
        self._gap: dict = {}

    async def seek_wait(self, partitions) -> None:
        for tp, offset in partitions.items():
            self.seeks.append((tp[1], offset))

    def highwater(self, tp):
        return self.highwaters.get(tp.partition)

    async def earliest_offsets(self, *tps):
        return {tp: 0 for tp in tps}

    def assignment(self):
        return {TP(TOPIC, p) for p in range(4)}


def ev(partition: int, offset: int):
    return SimpleNamespace(message=SimpleNamespace(topic=TOPIC, partition=partition, offset=offset,
                                                   tp=TP(TOPIC, partition)))


def driver(committed: dict[int, int | None]) -> LiveBatches:
    app = SimpleNamespace(rebalancing=False, rebalancing_count=2, consumer=FakeConsumer(committed))
    return LiveBatches(None, app=app, sessions=None, events_topic=TOPIC, recommendations_topic="r",
                       dead_letter_topic="d", dead_letter_max_bytes=1)


def offsets(events) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in events]


def test_in_order_events_pass():
    b = driver({2: 37})
    assert offsets(asyncio.run(b._in_order([ev(2, 37), ev(2, 38), ev(2, 39)]))) == [(2, 37), (2, 38), (2, 39)]
    assert b.app.consumer.seeks == []


def test_first_event_past_the_committed_offset_seeks_back_and_takes_nothing_of_that_partition():
    b = driver({2: 37, 3: 10})
    got = asyncio.run(b._in_order([ev(2, 38), ev(3, 10), ev(2, 39), ev(3, 11)]))
    assert offsets(got) == [(3, 10), (3, 11)]            # partition 2 waits for 37; 3 goes on
    assert b.app.consumer.seeks == [(2, 37)]
    # copies fetched before the seek come: no second seek within GAP_RESEEK_S, nothing taken
    assert asyncio.run(b._in_order([ev(2, 40)])) == []
    assert b.app.consumer.seeks == [(2, 37)]
    # the missing event comes again, then the rest, copies included
    got = asyncio.run(b._in_order([ev(2, 37), ev(2, 38), ev(2, 38), ev(2, 39)]))
    assert offsets(got) == [(2, 37), (2, 38), (2, 39)]
    assert 2 not in b._gaps


def test_a_gap_within_a_partition_is_found_too():
    b = driver({1: 5})
    assert offsets(asyncio.run(b._in_order([ev(1, 5), ev(1, 7), ev(1, 8)]))) == [(1, 5)]
    assert b.app.consumer.seeks == [(1, 6)]


def test_the_seek_back_is_repeated_until_the_offset_comes(monkeypatch):
    monkeypatch.setattr(batches_mod, "GAP_RESEEK_S", 0.0)
    b = driver({0: 3})
    asyncio.run(b._in_order([ev(0, 4)]))
    asyncio.run(b._reseek_gaps())
    assert b.app.consumer.seeks == [(0, 3), (0, 3)]


def test_events_delivered_mid_rebalance_are_left_alone_and_a_rebalance_starts_over():
    b = driver({0: 3})
    b.app.rebalancing = True
    assert asyncio.run(b._in_order([ev(0, 3)])) == []
    b.app.rebalancing = False
    assert offsets(asyncio.run(b._in_order([ev(0, 3), ev(0, 4)]))) == [(0, 3), (0, 4)]
    b.app.rebalancing_count += 1                           # sought to committed offsets again
    b.app.consumer._committed_offset[TP(TOPIC, 0)] = 4
    assert offsets(asyncio.run(b._in_order([ev(0, 4)]))) == [(0, 4)]


def test_nothing_committed_starts_at_the_log_start():
    b = driver({})
    assert offsets(asyncio.run(b._in_order([ev(0, 0)]))) == [(0, 0)]
    assert asyncio.run(b._in_order([ev(1, 2)])) == [] and b.app.consumer.seeks == [(1, 0)]


def test_faust_s_recorded_gap_over_the_hole_is_forgotten_on_the_seek_back_and_on_arrival():
    b = driver({2: 37})
    holes = b.app.consumer._gap
    holes[TP(TOPIC, 2)] = [SimpleNamespace(begin=38, end=40)]     # Faust would count 38, 39 as acked
    asyncio.run(b._in_order([ev(2, 40)]))
    assert holes[TP(TOPIC, 2)] == [] and b.app.consumer.seeks == [(2, 37)]
    holes[TP(TOPIC, 2)].append(SimpleNamespace(begin=38, end=41))   # recorded again by a stale delivery
    assert offsets(asyncio.run(b._in_order([ev(2, 37)]))) == [(2, 37)]
    assert holes[TP(TOPIC, 2)] == []


def test_a_partition_from_which_nothing_comes_after_a_rebalance_is_sought_back_once_records_are_there(
        monkeypatch):
    monkeypatch.setattr(batches_mod, "GAP_RESEEK_S", 0.0)
    b = driver({2: 84})
    asyncio.run(b._reseek_gaps())                        # settles: every partition is due its committed offset
    assert b.app.consumer.seeks == []                    # nothing known to be there yet
    b.app.consumer.highwaters[2] = 130                   # Faust handed 84..129 on mid-rebalance, then dropped them
    asyncio.run(b._reseek_gaps())
    asyncio.run(b._reseek_gaps())
    assert b.app.consumer.seeks == [(2, 84)]
    assert offsets(asyncio.run(b._in_order([ev(2, 84)]))) == [(2, 84)]
    asyncio.run(b._reseek_gaps())
    assert b.app.consumer.seeks == [(2, 84)]


def test_held_events_are_left_to_the_seek_after_a_rebalance():
    b = driver({0: 3})
    b.held = [("m", "ev")]
    asyncio.run(b._in_order([ev(0, 3)]))
    assert b.held == []


def test_handle_runs_in_order_events_through_the_pipeline_and_acks_them():
    b = driver({0: 3})
    seen, acked = [], []

    class Pipeline:
        metrics = None

        def process(self, messages, read):
            seen.extend((m.partition, m.offset) for m in messages)
            return BatchResult(done=list(messages))   # everything handled, nothing to publish

    async def ack(event):
        acked.append((event.message.partition, event.message.offset))

    b.pipeline = Pipeline()
    b.sessions = SimpleNamespace(get=lambda partition, key: None, take_outbox=lambda: [])
    b.app.producer = SimpleNamespace()
    b.stream = SimpleNamespace(ack=ack)

    def event(partition, offset):
        e = ev(partition, offset)
        e.message.key, e.message.value, e.message.headers = b"k", b"{}", None
        return e

    asyncio.run(b.handle([event(0, 3), event(0, 5), event(0, 4)]))
    assert seen == [(0, 3)] and acked == [(0, 3)]         # 5 came before 4: the partition waits for 4
    b.close()

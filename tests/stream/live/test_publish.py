"""The worker's sends on a real broker: record batches through Faust's own producer, every record
where a send would put it, and each record's offset reported as Kafka gives it."""
from __future__ import annotations

import asyncio
import os
import signal

from stream.core.partitioner import partition_for
from tests.kafka_io import read_topic


def test_records_go_in_batches_to_their_partitions_and_report_their_offsets(settings_factory):
    import faust

    from stream.live.app import faust_options
    from stream.live.batches import _split_for_batches, publish
    from stream.ops.topics import TopicSpec, ensure_topics

    settings = settings_factory(partitions=3)
    changelog = f"{settings.app_id}-changelog-test"

    async def scenario():
        await ensure_topics(settings)
        await ensure_topics(settings, [TopicSpec(changelog, 3)])
        app = faust.App(settings.app_id, **faust_options(settings))       # its producer, as the worker's
        producer = app.producer
        await producer.start()
        try:
            recs = [(settings.recommendations_topic, f"user-{i}".encode(), b'{"n": %d}' % i, None, None)
                    for i in range(1500)]
            tombstone = (settings.recommendations_topic, b"user-7", None, None, None)
            sessions = [(changelog, f"user-{i}".encode(), b"x" * 400, i % 3, None) for i in range(1500)]
            letters = [(settings.dead_letter_topic, b"user-9", b"bad", None, [("reason", b"not_json")])]
            sends = recs + [tombstone] + sessions + letters
            batched, single = _split_for_batches(producer, sends)
            assert single == letters and len(batched) == len(sends) - 1
            assert _split_for_batches(producer, recs[:20]) == ([], recs[:20])     # below full load: one by one
            delivered: list[tuple[tuple, int, int]] = []
            await publish(producer, sends, on_delivered=lambda item, md: delivered.append((item, md.partition,
                                                                                           md.offset)))
            return delivered
        finally:
            await producer.stop()

    delivered = asyncio.run(scenario())
    assert len(delivered) == 3002
    got = {}
    for topic, want in ((settings.recommendations_topic, 1501), (changelog, 1500), (settings.dead_letter_topic, 1)):
        for m in asyncio.run(read_topic(settings, topic, until=lambda ms, w=want: len(ms) >= w, timeout=30)):
            got[(topic, m.partition, m.offset)] = (m.key, m.value, tuple(m.headers or ()))
    assert len(got) == 3002                              # each record once
    for (topic, key, value, partition, headers), p, offset in delivered:
        assert got[(topic, p, offset)] == (key, value, tuple(headers or ()))   # where it was said to be
        if topic == changelog:
            assert p == partition
        else:                                            # where aiokafka's (murmur2) partitioner puts the key
            assert p == partition_for("murmur2", key, 3)
    # a key's records keep their order: the tombstone follows user-7's recommendation
    user7 = sorted((o, v) for (t, p, o), (k, v, _) in got.items()
                   if t == settings.recommendations_topic and k == b"user-7")
    assert [v for _, v in user7] == [b'{"n": 7}', None]


def test_a_loaded_publish_outlasts_a_broker_that_stops_answering(settings_factory, embedded_broker, caplog):
    """The broker paused for real (SIGSTOP) while record batches are in flight: they time out (the
    producer waits 1 s), are sent again until it answers, and every record lands."""
    import faust

    from stream.live.app import faust_options
    from stream.live.batches import publish

    settings = settings_factory(partitions=3)

    async def scenario():
        from stream.ops.topics import ensure_topics

        await ensure_topics(settings)
        app = faust.App(settings.app_id, **{**faust_options(settings), "producer_request_timeout": 1.0})
        producer = app.producer
        await producer.start()
        try:
            sends = [(settings.recommendations_topic, f"user-{i}".encode(), b'{"n": %d}' % i, None, None)
                     for i in range(600)]
            delivered: dict[tuple, tuple[int, int]] = {}
            os.kill(embedded_broker.pid, signal.SIGSTOP)
            loop = asyncio.get_running_loop()
            loop.call_later(3.0, os.kill, embedded_broker.pid, signal.SIGCONT)
            try:
                await asyncio.wait_for(publish(producer, sends, on_delivered=lambda item, md: delivered.__setitem__(
                    item, (md.partition, md.offset))), 60)
            finally:
                os.kill(embedded_broker.pid, signal.SIGCONT)
            return sends, delivered
        finally:
            await producer.stop()

    with caplog.at_level("WARNING", logger="stream.live.batches"):
        sends, delivered = asyncio.run(scenario())
    assert any("failed (attempt 1), retrying" in r.getMessage() for r in caplog.records), \
        "no send failed while the broker was paused: the fault did not happen"
    assert set(delivered) == set(sends)
    got = {(m.partition, m.offset): (m.key, m.value) for m in asyncio.run(read_topic(
        settings, settings.recommendations_topic, until=lambda ms: {m.key for m in ms} >= {s[1] for s in sends},
        timeout=30))}
    for (topic, key, value, _, _), (partition, offset) in delivered.items():
        assert got[(partition, offset)] == (key, value)           # at least once, and where it was said to be


def test_a_partitioner_that_fails_loses_no_record(settings_factory, caplog):
    """The producer's partitioner raising (once) while a loaded publish places its records: the
    records go again, as after any failed send, and all of them land."""
    import faust

    from stream.live.app import faust_options
    from stream.live.batches import publish

    settings = settings_factory(partitions=3)

    async def scenario():
        from stream.ops.topics import ensure_topics

        await ensure_topics(settings)
        app = faust.App(settings.app_id, **faust_options(settings))
        producer = app.producer
        await producer.start()
        real, calls = producer.partitioner, []

        def flaky(key, all_partitions, available):
            calls.append(key)
            if len(calls) == 100:
                raise RuntimeError("partitioner failed (test)")
            return real(key, all_partitions, available)

        producer.partitioner = flaky
        try:
            sends = [(settings.recommendations_topic, f"user-{i}".encode(), b"%d" % i, None, None) for i in range(300)]
            delivered: list[tuple] = []
            await publish(producer, sends, on_delivered=lambda item, md: delivered.append(item))
            return sends, delivered, len(calls)
        finally:
            await producer.stop()

    with caplog.at_level("WARNING", logger="stream.live.batches"):
        sends, delivered, calls = asyncio.run(scenario())
    assert any("partitioner failed (test)" in r.getMessage() for r in caplog.records)
    assert calls == 400 and sorted(delivered) == sorted(sends)    # placed twice up to the failure
    got = asyncio.run(read_topic(settings, settings.recommendations_topic, until=lambda ms: len(ms) >= 300, timeout=30))
    assert sorted((m.key, m.value) for m in got) == sorted((s[1], s[2]) for s in sends)

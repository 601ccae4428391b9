"""Replay and backfill: re-run a slice of the events topic through the pipeline into another topic.

The same steps as the worker -- :mod:`stream.core.schema` validation, :func:`stream.core.session_state.fold`,
:class:`stream.core.recommender.Recommender` over the same model and index -- but with state of its own:

* no consumer group: partitions are assigned by hand, so the live group never rebalances and its
  committed offsets are untouched; sessions live in this process, starting empty at the slice's
  start, so the live sessions table is never read or written;
* deterministic: records are merged across partitions in (record time, partition, offset) order and
  cut into fixed-size batches; popularity starts empty; ``produced_at`` is the batch's latest event
  time. The same slice, model and index give the same recommendations, ids included;
* resumable: at batch boundaries a checkpoint file holds the slice, the next offset per partition,
  the sessions and the counters; an interrupted replay run again with the same arguments resumes;
* idempotent: recommendations are keyed by user id and carry the deterministic
  ``recommendation_id``; what was re-sent after a resume has ids already seen, for consumers to drop.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import os
import re
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from stream.core.dead_letters import Message, dead_letter_record
from stream.core.pipeline import Pipeline
from stream.errors import BrokerError, ConfigError
from stream.live.batches import publish
from stream.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
REPLAY_HEADER = ("shopstream.replay", b"1")


# -- the slice ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    """One end of a slice: ``offset`` (same offset in every partition), ``time`` (epoch seconds,
    matched against record timestamps), ``start`` or ``end`` of the topic."""

    kind: str
    value: float = 0.0
    text: str = ""

    def __str__(self) -> str:
        return self.text or self.kind


def parse_bound(text: str) -> Bound:
    """``123`` (offset), ``2024-05-01T12:00:00Z`` / ``2024-05-01`` (time, UTC unless given),
    ``@1714564800000`` (epoch milliseconds), ``start`` / ``earliest`` or ``end`` / ``latest``."""
    raw = text.strip()
    low = raw.lower()
    if low in ("start", "earliest", "beginning"):
        return Bound("start", text="start")
    if low in ("end", "latest"):
        return Bound("end", text="end")
    if re.fullmatch(r"\d+", raw):
        return Bound("offset", float(int(raw)), raw)
    if re.fullmatch(r"@\d+", raw):
        return Bound("time", int(raw[1:]) / 1000.0, raw)
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is neither an offset (123), a time (2024-05-01T12:00:00Z, "
                          f"@epoch_ms) nor start/end") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return Bound("time", dt.timestamp(), raw)


def check_order(start: Bound, end: Bound) -> None:
    """:class:`ConfigError` for a slice whose end comes before its start (``--from 2024-05-01 --to
    start``): an empty replay that reports 0 events is a mistake, not a result."""
    rank = {"start": 0, "offset": 1, "time": 1, "end": 2}
    backwards = rank[start.kind] > rank[end.kind] or (
        start.kind == end.kind and start.kind in ("offset", "time") and start.value > end.value)
    if backwards:
        raise ConfigError(f"--from {start} comes after --to {end}: nothing lies between them")


@dataclass
class ReplaySummary:
    topic: str
    output: str | None
    events_read: int = 0
    recommendations_written: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    resumed_at: int = 0            # events already replayed before this run (0: a fresh replay)
    slice: dict[str, list[int]] = field(default_factory=dict)   # partition -> [start, end)
    dry_run: bool = False

    @property
    def events_per_s(self) -> float:
        return (self.events_read - self.resumed_at) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": round(self.events_per_s, 1)}

    def lines(self) -> list[str]:
        if self.dry_run:
            return [f"dry run: {self.events_read} event(s) in {self.topic} between the bounds "
                    f"({', '.join(f'p{p} {a}..{b}' for p, (a, b) in sorted(self.slice.items()))})"]
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.dead_letter_reasons.items()))
        out = [f"replayed {self.topic} -> {self.output}",
               f"  events read              {self.events_read}"
               + (f" ({self.resumed_at} before the resume)" if self.resumed_at else ""),
               f"  recommendations written  {self.recommendations_written}",
               f"  dead-lettered            {self.dead_lettered}" + (f" ({reasons})" if reasons else ""),
               f"  time taken               {self.seconds:.1f} s ({self.events_per_s:.0f} events/s)"]
        return out


# -- the checkpoint -------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """What a replay needs to carry on exactly where it stopped, written at batch boundaries."""

    spec: dict[str, Any]
    slice: dict[str, list[int]]
    positions: dict[str, int]
    sessions: dict[str, str] = field(default_factory=dict)
    popularity: dict[str, int] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(orjson.dumps({"version": CHECKPOINT_VERSION, **asdict(self)}))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Checkpoint | None":
        if not path.exists():
            return None
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"checkpoint {path} is unreadable ({exc}); remove it or pass --fresh") from None
        if doc.pop("version", None) != CHECKPOINT_VERSION:
            raise ConfigError(f"checkpoint {path} is from another shopstream version; pass --fresh")
        return cls(**doc)


def default_checkpoint(settings: Settings, topic: str, output: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{topic}--{output}")
    return Path(settings.data_dir) / "replay" / f"{safe}.checkpoint.json"


# -- the replay ---------------------------------------------------------------------------------
class Replay:
    """One replay of ``[start, end)`` of ``topic`` into ``output``; :meth:`run` does the work.

    ``max_batches`` stops after that many batches, leaving the checkpoint (for tests and for
    replaying in steps).
    """

    def __init__(self, settings: Settings, *, start: Bound, end: Bound, topic: str | None = None,
                 output: str | None = None, rate: float | None = None, dry_run: bool = False,
                 checkpoint: Path | None = None, fresh: bool = False, batch_size: int | None = None,
                 checkpoint_every_s: float = 5.0, progress: bool = True, max_batches: int | None = None,
                 services=None) -> None:
        self.settings = settings
        self.topic = topic or settings.events_topic
        self.output = output or f"{settings.recommendations_topic}-replay"
        self.dead_letter_topic = f"{self.output}-dead-letter"
        if self.output == self.topic:
            raise ConfigError("the output topic must not be the topic being replayed")
        if rate is not None and rate <= 0:
            raise ConfigError("--rate must be positive")
        check_order(start, end)
        self.start, self.end = start, end
        self.rate = rate
        self.dry_run = dry_run
        self.checkpoint_path = checkpoint or default_checkpoint(settings, self.topic, self.output)
        self.fresh = fresh
        self.batch_size = batch_size or settings.batch_size
        self.checkpoint_every_s = checkpoint_every_s
        self.progress = progress
        self.max_batches = max_batches
        self.services = services

    @property
    def spec(self) -> dict[str, Any]:
        """What makes two replays the same replay (and a checkpoint resumable)."""
        return {"topic": self.topic, "output": self.output, "from": str(self.start), "to": str(self.end),
                "batch_size": self.batch_size, "app_id": self.settings.app_id}

    async def run(self) -> ReplaySummary:
        from aiokafka import AIOKafkaConsumer

        from stream.ops.topics import start_client

        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=4 * 1024 * 1024,
                                    **self.settings.kafka_client_options())
        await start_client(consumer, self.settings)
        try:
            ckpt = None if self.fresh or self.dry_run else Checkpoint.load(self.checkpoint_path)
            if ckpt is not None and ckpt.spec != self.spec:
                raise ConfigError(f"{self.checkpoint_path} is a checkpoint of another replay "
                                  f"({ckpt.spec}); pass --fresh to start over or --checkpoint elsewhere")
            slice_ = ckpt.slice if ckpt else await self._resolve_slice(consumer)
            if self.dry_run:
                total = sum(b - a for a, b in slice_.values())
                return ReplaySummary(self.topic, None, events_read=total, slice=slice_, dry_run=True)
            if ckpt is None:
                ckpt = Checkpoint(self.spec, slice_, {p: a for p, (a, _) in slice_.items()})
            else:
                log.info("resuming the replay from %s", self.checkpoint_path)
            return await self._replay(consumer, ckpt)
        finally:
            await consumer.stop()

    async def _resolve_slice(self, consumer) -> dict[str, list[int]]:
        from aiokafka import TopicPartition

        await consumer.topics()            # all-topic metadata: never auto-creates a missing topic
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise ConfigError(f"topic {self.topic!r} does not exist on {self.settings.broker}")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        first = await consumer.beginning_offsets(tps)
        last = await _end_offsets(consumer, tps)

        async def resolve(bound: Bound) -> dict:
            if bound.kind == "start":
                return dict(first)
            if bound.kind == "end":
                return dict(last)
            if bound.kind == "offset":
                return {tp: int(bound.value) for tp in tps}
            ms = int(bound.value * 1000)
            found = await consumer.offsets_for_times({tp: ms for tp in tps})
            out = {}
            for tp in tps:
                hit = found.get(tp)
                if hit is not None and hit.timestamp >= 0 and first[tp] <= hit.offset <= last[tp]:
                    out[tp] = hit.offset
                else:   # no answer, or a broker without timestamp lookup: search the log itself
                    out[tp] = await _first_offset_at(consumer, tp, ms, first[tp], last[tp])
            return out

        lo, hi = await resolve(self.start), await resolve(self.end)
        out = {}
        for tp in tps:
            a = min(max(lo[tp], first[tp]), last[tp])
            b = min(max(hi[tp], a), last[tp])
            out[str(tp.partition)] = [a, b]
        return out

    # ---------------------------------------------------------------------------------------------
    async def _replay(self, consumer, ckpt: Checkpoint) -> ReplaySummary:
        from aiokafka import AIOKafkaProducer, TopicPartition
        from aiokafka.errors import KafkaError

        from stream.live.services import load_services
        from stream.ops.topics import ensure_topics, output_spec

        # no forget reaches a replay's output: it is deleted within the erasure deadline
        await ensure_topics(self.settings, [output_spec(self.settings, self.output, len(ckpt.slice)),
                                            output_spec(self.settings, self.dead_letter_topic, len(ckpt.slice))])
        services = self.services or load_services(self.settings)
        recommender = services.recommender
        recommender.popularity = Counter(ckpt.popularity)
        pipeline = replay_pipeline(self.settings, services)
        counts = {"events": 0, "recommendations": 0, "dead_lettered": 0, "reasons": {}, "batches": 0,
                  **ckpt.counts}
        resumed_at = counts["events"]
        sessions: dict[str, bytes] = {k: v.encode() for k, v in ckpt.sessions.items()}
        positions = {int(p): o for p, o in ckpt.positions.items()}
        ends = {int(p): b for p, (_, b) in ckpt.slice.items()}
        total = sum(b - a for a, b in ckpt.slice.values())
        tps = {p: TopicPartition(self.topic, p) for p in ends}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, positions[p])

        # no idempotent producer (not every Kafka-protocol broker has it): duplicates after a
        # retry or a resume carry the same recommendation_id, for consumers to drop
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all",
                                    linger_ms=20, **self.settings.kafka_client_options())
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerError(f"cannot write to {self.output} on {self.settings.broker}: {exc}") from exc
        bar = _progress(total, counts["events"], self.progress)
        merged = _Merge(consumer, tps, positions, ends)
        popularity_at_boundary = Counter(recommender.popularity)
        started = time.monotonic()
        last_save = started

        def save() -> None:
            ckpt.positions = {str(p): o for p, o in positions.items()}
            ckpt.sessions = {k: v.decode() for k, v in sessions.items()}
            ckpt.popularity = dict(popularity_at_boundary)
            ckpt.counts = counts
            ckpt.save(self.checkpoint_path)

        finished = False
        try:
            while self.max_batches is None or counts["batches"] < self.max_batches:
                batch = await merged.take(self.batch_size)
                if not batch:
                    finished = True
                    break
                result = await asyncio.to_thread(pipeline.process_isolating, [_message(m) for m in batch],
                                                 lambda _partition, key: sessions.get(key.decode()))
                recs = result.recommendations
                sends = [(self.output, r["user_id"].encode(), orjson.dumps(r), None, [REPLAY_HEADER])
                         for r in recs]
                for dl in result.dead_letters:
                    key, value, headers = dead_letter_record(dl, self.settings.dead_letter_max_bytes)
                    sends.append((self.dead_letter_topic, key, value, None, [REPLAY_HEADER, *headers]))
                await publish(_Sender(producer), sends)
                # the batch is out: commit it to the in-memory state (no await from here on)
                for w in result.state_writes:
                    if w.value is None:
                        sessions.pop(w.key.decode(), None)
                    else:
                        sessions[w.key.decode()] = w.value
                dead = Counter(dl.reason for dl in result.dead_letters)
                popularity_at_boundary = Counter(recommender.popularity)
                for msg in batch:
                    positions[msg.partition] = msg.offset + 1
                counts["events"] += len(batch)
                counts["recommendations"] += len(recs)
                counts["dead_lettered"] += sum(dead.values())
                for reason, n in dead.items():
                    counts["reasons"][reason] = counts["reasons"].get(reason, 0) + n
                counts["batches"] += 1
                bar.update(len(batch))
                now = time.monotonic()
                if now - last_save >= self.checkpoint_every_s:
                    save()
                    last_save = now
                if self.rate:
                    ahead = (counts["events"] - resumed_at) / self.rate - (now - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            bar.close()
            try:
                await producer.flush()
            finally:
                await producer.stop()
            if finished:
                self.checkpoint_path.unlink(missing_ok=True)
            else:
                save()          # interrupted (or max_batches): carry on from here next time
                log.warning("replay stopped after %d events; the same command resumes from %s",
                            counts["events"], self.checkpoint_path)
        return ReplaySummary(
            self.topic, self.output, events_read=counts["events"], recommendations_written=counts["recommendations"],
            dead_lettered=counts["dead_lettered"], dead_letter_reasons=dict(counts["reasons"]),
            batches=counts["batches"], seconds=time.monotonic() - started, resumed_at=resumed_at,
            slice=ckpt.slice)


def replay_pipeline(settings: Settings, services) -> Pipeline:
    """The pipeline core as replay runs it: no holds, no re-sending to the live topic (a wrongly
    keyed event is its user's event here), ``produced_at`` from event time."""
    pseudonymise = None
    if settings.pseudonymise_key:
        from stream.core.pseudonyms import pseudonymiser

        pseudonymise = pseudonymiser(str(settings.pseudonymise_key))
    return Pipeline(validator=services.validator, recommender=services.recommender, limits=services.limits,
                    pseudonymise=pseudonymise, pseudonymise_id=pseudonymise.user_id if pseudonymise else None,
                    resend_wrong_keys=False, produced_at_event_time=True)


def _message(record) -> Message:
    return Message(record.key, record.value, record.topic, record.partition, record.offset,
                   tuple(record.headers or ()))


class _Sender:
    """aiokafka's producer with the (topic, key, value, partition, timestamp, headers) call of Faust's."""

    def __init__(self, producer) -> None:
        self.producer = producer

    async def send(self, topic, key, value, partition, timestamp, headers):
        return await self.producer.send(topic, value, key=key, partition=partition, headers=headers)


async def _end_offsets(consumer, tps: list) -> dict:
    """End offsets, checked against the high-water mark of a fetch.

    Some Kafka-protocol brokers (tansu 0.x) answer ListOffsets(latest) with the base offset of the
    last record batch; a fetch from there reports the true high-water mark.
    """
    listed = await consumer.end_offsets(tps)
    out = {}
    for tp in tps:
        consumer.seek(tp, listed[tp])
        await consumer.getmany(tp, timeout_ms=1000, max_records=1)
        hw = consumer.highwater(tp)
        out[tp] = max(listed[tp], hw if hw is not None else 0)
    return out


async def _timestamp_at(consumer, tp, offset: int) -> tuple[int, int] | None:
    """(offset, record timestamp ms) of the first record at or after ``offset``."""
    consumer.seek(tp, offset)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        got = (await consumer.getmany(tp, timeout_ms=500, max_records=1)).get(tp)
        if got:
            return got[0].offset, got[0].timestamp
    return None


async def _first_offset_at(consumer, tp, ms: int, lo: int, hi: int) -> int:
    """The first offset in [lo, hi) whose record time is at least ``ms`` (hi if none): a binary
    search over the log, for brokers that cannot look offsets up by time."""
    while lo < hi:
        mid = (lo + hi) // 2
        found = await _timestamp_at(consumer, tp, mid)
        if found is None:
            return hi
        offset, ts = found
        if ts >= ms:
            hi = mid
        else:
            lo = offset + 1
    return lo


class _Merge:
    """Records of every partition of the slice, merged in (timestamp, partition, offset) order."""

    def __init__(self, consumer, tps: dict, positions: dict[int, int], ends: dict[int, int]) -> None:
        self.consumer = consumer
        self.tps = tps
        self.ends = ends
        self.fetched = dict(positions)             # next offset not yet buffered, per partition
        self.buffers: dict[int, list] = {p: [] for p in tps}
        self.heap: list = []
        for p in tps:
            if self.fetched[p] >= ends[p]:
                self.consumer.pause(tps[p])

    def _live(self, p: int) -> bool:
        return self.fetched[p] < self.ends[p]

    async def _fill(self, p: int) -> None:
        tp = self.tps[p]
        while not self.buffers[p] and self._live(p):
            got = await self.consumer.getmany(tp, timeout_ms=1000, max_records=2000)
            for msg in got.get(tp, []):
                if msg.offset < self.fetched[p]:
                    continue
                if msg.offset >= self.ends[p]:
                    self.fetched[p] = self.ends[p]
                    break
                self.buffers[p].append(msg)
                self.fetched[p] = msg.offset + 1
            if self.buffers[p] and self.buffers[p][-1].offset + 1 >= self.ends[p]:
                self.fetched[p] = self.ends[p]
            elif not got and await self.consumer.position(tp) >= self.ends[p]:
                self.fetched[p] = self.ends[p]     # the rest of the slice was compacted away
            if not self._live(p):
                self.consumer.pause(tp)
        if self.buffers[p]:
            self.buffers[p].reverse()              # pop() from the end is the oldest

    async def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            # a partition whose buffer ran dry must be refilled before the merge can go on
            for p in self.tps:
                if not self.buffers[p] and not any(e[1] == p for e in self.heap):
                    await self._fill(p)
                    if self.buffers[p]:
                        m = self.buffers[p].pop()
                        heapq.heappush(self.heap, (m.timestamp, p, m.offset, m))
            if not self.heap:
                break
            _, p, _, m = heapq.heappop(self.heap)
            out.append(m)
            if self.buffers[p]:
                m2 = self.buffers[p].pop()
                heapq.heappush(self.heap, (m2.timestamp, p, m2.offset, m2))
        return out


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="ev", unit_scale=True, desc="replay", disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def run_replay(settings: Settings, **kwargs: Any) -> ReplaySummary:
    """Run a replay; SIGINT or SIGTERM stops it at a checkpoint and raises KeyboardInterrupt."""

    async def main() -> ReplaySummary:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, task.cancel)
            except (NotImplementedError, RuntimeError, ValueError):   # not the main thread / Windows
                pass
        try:
            return await Replay(settings, **kwargs).run()
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None

    return asyncio.run(main())


__all__ = ["Bound", "Checkpoint", "Replay", "ReplaySummary", "parse_bound", "run_replay"]

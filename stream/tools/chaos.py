"""Chaos: worker kills, a paused broker, catalogue churn and malformed input -- and nothing lost.

One scenario, driven by the CI test (``tests/stream/live/test_chaos.py``) and by
``shopstream bench chaos``:

* ``plan.workers`` worker processes in one consumer group; ``plan.kills`` times, at a random moment
  in each equal slice of the sending window, one of them is killed with SIGKILL and a new one is
  started in its place;
* a producer sends events at a steady rate; ``malformed_share`` of them are malformed, cycling
  through not JSON, a missing field, a wrong type and a 1.2 MB value (``oversized``);
* the broker process is paused (SIGSTOP) once for ``pause_s`` seconds, then resumed (SIGCONT,
  always, in a ``finally``);
* a small fixed set of products is deleted and re-added through the catalog topic while events
  name them;
* the test-only fault hook (``SHOPSTREAM_FAULT_EVENT_IDS``) makes the encoder raise for a few
  chosen event ids;
* a few shoppers' session values in the sessions changelog are overwritten with bytes that do not
  parse; a worker that recovers one (after a kill) starts that session afresh;
* the disk fault: one worker's state disk refuses every write for ``disk_fault_s`` seconds (its
  file-size limit, ``RLIMIT_FSIZE``, lowered with ``prlimit`` below what any RocksDB write needs,
  then restored); its ``/ready`` is polled meanwhile. A kill may hit it too, which heals it.

Then it waits until every message is accounted for, reading the recommendations and dead-letter
topics from the start:

* a valid event must be listed in some recommendation's ``event_ids`` and never dead-lettered;
* a valid event naming a churned product may instead be dead-lettered as ``unknown_product``
  (it was held ``unknown_product_hold_s`` while the product was deleted);
* a fault-hook event must be dead-lettered as ``processing_error`` and never reflected;
* a malformed message must be dead-lettered with its reason. Dead letters are matched to what was
  sent by the SHA-256 of the original value (a header of every dead letter), so truncated
  oversized values and re-sent messages match too;
* a valid event must be in its shopper's session: the sessions changelog's latest value per key
  lists it among its recent event ids (shoppers whose session was overwritten with garbage, and
  events older than the session's last ``SEEN_EVENT_IDS``, are not checked).

Duplicates (an event reflected again after a crash, a message dead-lettered twice) are counted,
never treated as errors: the guarantee is at-least-once.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

from stream.settings import Settings

log = logging.getLogger(__name__)

MALFORMED_KINDS = ("not_json", "missing_field", "wrong_type", "oversized")
DISK_FAULT_FSIZE = 6000            # bytes: below the options file RocksDB writes at every open
OVERSIZED_BYTES = 1_200_000
DL_HEADER = "shopstream.dead-letter."
QUERIES = ("red heart candle holder", "vintage tea set", "christmas lights", "cake stand",
           "lunch bag", "wall clock", "doormat", "jam making set")


@dataclass(frozen=True)
class ChaosPlan:
    events: int = 1000                 # messages sent, valid and malformed together
    rate: float = 20.0                 # offered messages per second
    workers: int = 2
    kills: int = 5                     # SIGKILLs, each followed by a restart
    pause_s: float = 10.0              # how long the broker is paused (SIGSTOP) once; 0: never
    malformed_share: float = 0.10
    churn_products: int = 4            # products deleted and re-added while events name them
    churn_every_s: float = 2.0
    churn_event_share: float = 0.15    # share of product events that name a churned product
    fault_events: int = 3              # events the encoder fails on (the test-only hook)
    corrupt_sessions: int = 3          # session values in the changelog overwritten with garbage
    users: int = 60
    seed: int = 0
    settle_timeout_s: float = 180.0    # after the last send, how long to wait for everything
    disk_fault_s: float = 0.0          # one worker's state disk refuses every write this long; 0: never
    session_timeout_s: float = 6.0     # consumer group: a killed worker is replaced after this


@dataclass
class Sent:
    """One message as planned and, once sent, where it went."""

    kind: str                          # valid | churn | fault | a MALFORMED_KINDS entry
    key: bytes
    value: dict | bytes                # a dict is stamped with ``ts`` at send
    event_id: str | None = None
    raw: bytes = b""
    sha: str = ""
    partition: int = -1
    offset: int = -1


@dataclass
class ChaosReport:
    events: int = 0
    valid: int = 0                     # plain valid events (must be reflected)
    churn_events: int = 0              # valid events naming a churned product
    fault_events: int = 0
    malformed: int = 0
    malformed_by_kind: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    kills_of_ready: int = 0            # of workers that were processing (not still starting)
    restarts: int = 0
    worker_exits: list[int] = field(default_factory=list)   # exit codes of workers that exited by themselves
    pause_s: float = 0.0
    churn_updates: int = 0             # deletes and re-adds published
    corrupt_sessions: int = 0          # garbage session values written to the changelog
    corrupt_sessions_read: int = 0     # times a worker read one and started the session afresh (its logs)
    valid_reflected: int = 0
    valid_missing: list[dict] = field(default_factory=list)
    disk_fault_s: float = 0.0          # how long a worker's state disk refused writes
    disk_fault_unready: bool = False   # its /ready answered 503 naming the state store meanwhile
    disk_fault_ready_checks: int = 0   # /ready answers read from it during the fault
    disk_fault_ready_answers: dict[str, int] = field(default_factory=dict)   # what they said, counted
    sessions_checked: int = 0          # valid events looked up in their shopper's session
    valid_missing_from_sessions: list[dict] = field(default_factory=list)
    churn_reflected: int = 0
    churn_dead_lettered: int = 0       # as unknown_product
    churn_missing: list[dict] = field(default_factory=list)
    fault_dead_lettered: int = 0
    fault_missing: list[dict] = field(default_factory=list)
    malformed_dead_lettered: int = 0
    malformed_missing: list[dict] = field(default_factory=list)
    wrong: list[dict] = field(default_factory=list)     # handled, but not as it should have been
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    duplicate_reflections: int = 0     # an event listed again in a later recommendation
    duplicate_dead_letters: int = 0
    duplicates_per_kill: float = 0.0  # re-reflected events per SIGKILL: what the killed worker had in flight
    recommendations: int = 0
    send_retries: int = 0
    send_seconds: float = 0.0
    settle_seconds: float = 0.0        # from the last send until everything was accounted for
    seconds: float = 0.0
    worker_logs: list[str] = field(default_factory=list)
    machine: str = ""

    @property
    def ok(self) -> bool:
        return not (self.valid_missing or self.churn_missing or self.fault_missing or self.malformed_missing
                    or self.wrong or self.valid_missing_from_sessions)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# ---------------------------------------------------------------------------------------------
def plan_messages(plan: ChaosPlan, product_ids: list[str], churn: list[str], run_id: str) -> list[Sent]:
    """The messages to send, in order; valid ones get their ``ts`` when they are sent."""
    rng = random.Random(plan.seed)
    stable = [p for p in product_ids if p not in set(churn)]
    every = round(1 / plan.malformed_share) if plan.malformed_share else 0
    out: list[Sent] = []
    n_bad = 0
    for i in range(plan.events):
        user = f"chaos-{run_id}-u{rng.randrange(plan.users)}"
        key = user.encode()
        if every and i % every == every - 1:
            kind = MALFORMED_KINDS[n_bad % len(MALFORMED_KINDS)]
            n_bad += 1
            out.append(Sent(kind, key, _malformed(kind, f"{run_id}-bad-{i}", user)))
            continue
        etype = rng.choices(["view", "click", "add_to_cart", "purchase", "search"], [50, 20, 12, 6, 12])[0]
        ev: dict[str, Any] = {"event_id": f"{run_id}-{i}", "type": etype, "user_id": user,
                              "session_id": f"s-{user}"}
        kind = "valid"
        if etype == "search":
            ev["query"] = rng.choice(QUERIES)
            ev["results"] = rng.sample(stable, 8)
        elif churn and rng.random() < plan.churn_event_share:
            ev["item_id"] = rng.choice(churn)
            kind = "churn"
        else:
            ev["item_id"] = rng.choice(stable)
        out.append(Sent(kind, key, ev, ev["event_id"]))
    valid = [s for s in out if s.kind == "valid"]
    if plan.fault_events:     # spread over the run: early, middle and late batches fail
        step = max(1, len(valid) // (plan.fault_events + 1))
        for s in valid[step::step][:plan.fault_events]:
            s.kind = "fault"
    return out


def _malformed(kind: str, tag: str, user: str) -> bytes:
    base = {"event_id": tag, "type": "view", "user_id": user, "session_id": f"s-{user}",
            "ts": int(time.time() * 1000), "item_id": "X"}
    if kind == "not_json":
        return b'{"event_id": "' + tag.encode() + b'", "type": "view", broken'
    if kind == "missing_field":
        base.pop("session_id")
    elif kind == "wrong_type":
        base["user_id"] = 12345
    elif kind == "oversized":
        base["context"] = {"pad": "x" * OVERSIZED_BYTES}
    return orjson.dumps(base)


def expected_reason(kind: str) -> str | None:
    return {"fault": "processing_error", "churn": "unknown_product"}.get(
        kind, kind if kind in MALFORMED_KINDS else None)


# ---------------------------------------------------------------------------------------------
class ChaosRun:
    """The scenario's moving parts on one asyncio loop; :func:`run_chaos` drives it."""

    def __init__(self, settings: Settings, plan: ChaosPlan, *, broker_pid: int | None, log_dir: Path,
                 echo: Callable[[str], None] = log.info) -> None:
        self.settings = settings
        self.plan = plan
        self.broker_pid = broker_pid
        self.log_dir = Path(log_dir)
        self.echo = echo
        self.rng = random.Random(plan.seed + 1)
        self.run_id = uuid.uuid4().hex[:6]
        self.report = ChaosReport(events=plan.events)
        self.workers: list[subprocess.Popen | None] = [None] * plan.workers
        self.ports: list[int] = [0] * plan.workers
        self.reflected: Counter[str] = Counter()
        self.dead: dict[str, list[str]] = {}          # sha256 of the original value -> reasons
        self.sent: list[Sent] = []                    # in the order sent, with where each went
        self.fault_ids = ""                           # SHOPSTREAM_FAULT_EVENT_IDS of every worker
        self.corrupted: set[bytes] = set()            # shoppers whose session value was overwritten
        self.sessions: dict[bytes, set[str]] | None = None   # read once everything is accounted for
        self.sending = True
        self.killing: set[int] = set()                # slots kill_one is replacing

    # -- workers ------------------------------------------------------------------------------
    def start_worker(self, slot: int) -> subprocess.Popen:
        from stream.tools.broker import free_port
        from stream.tools.demo import start_worker_process

        s = self.settings
        self.ports[slot] = free_port()
        n = len(self.report.worker_logs)
        log_path = self.log_dir / f"worker-{slot}-{n}.log"
        self.report.worker_logs.append(str(log_path))
        env = {"SHOPSTREAM_EVENTS_TOPIC": s.events_topic,
               "SHOPSTREAM_RECOMMENDATIONS_TOPIC": s.recommendations_topic,
               "SHOPSTREAM_DEAD_LETTER_TOPIC": s.dead_letter_topic,
               "SHOPSTREAM_CATALOG_TOPIC": s.catalog_topic,
               "SHOPSTREAM_ENCODER_BACKEND": s.encoder_backend,
               "SHOPSTREAM_BATCH_WAIT_MS": str(s.batch_wait_ms),
               "SHOPSTREAM_BATCH_SIZE": str(s.batch_size),
               "SHOPSTREAM_SESSION_TIMEOUT_S": str(self.plan.session_timeout_s),
               "SHOPSTREAM_UNKNOWN_PRODUCT_HOLD_S": str(s.unknown_product_hold_s),
               "SHOPSTREAM_FAULT_EVENT_IDS": self.fault_ids}
        proc = start_worker_process(s.replace(web_port=self.ports[slot]), log_path, extra_env=env)
        self.workers[slot] = proc
        return proc

    def _ready(self, slot: int) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[slot]}/ready", timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False

    async def kill_one(self, wait_ready_s: float = 45.0) -> None:
        """SIGKILL a worker that is processing (one still loading its model only if none is ready
        within ``wait_ready_s``) and start another in its place."""
        deadline = time.monotonic() + wait_ready_s
        while True:
            alive = [i for i, p in enumerate(self.workers) if p is not None and p.poll() is None]
            ready = [i for i in alive if await asyncio.to_thread(self._ready, i)]
            if ready or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        slot = self.rng.choice(ready or alive or list(range(len(self.workers))))
        proc = self.workers[slot]
        self.killing.add(slot)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            self.report.kills += 1
            self.report.kills_of_ready += slot in ready
            self.echo(f"SIGKILL worker {slot} (pid {proc.pid}, {'processing' if slot in ready else 'starting'}); "
                      "restarting it")
        self.start_worker(slot)
        self.killing.discard(slot)
        self.report.restarts += 1

    async def supervise(self) -> None:
        """Restart a worker that exited by itself, as systemd, Kubernetes or compose ``restart:``
        would (a worker exits when it cannot recover in-process, e.g. a disk that failed while it
        recovered a partition)."""
        while True:
            await asyncio.sleep(1.0)
            for slot, proc in enumerate(self.workers):
                if proc is None or slot in self.killing or proc.poll() is None:
                    continue
                self.report.worker_exits.append(proc.returncode)
                self.echo(f"worker {slot} (pid {proc.pid}) exited with code {proc.returncode}; restarting it")
                self.start_worker(slot)

    def stop_workers(self) -> None:
        from stream.tools.demo import stop_process

        for p in self.workers:
            stop_process(p)

    # -- the disturbances ---------------------------------------------------------------------
    async def kills(self, window: float) -> None:
        """One kill at a random moment in each of ``plan.kills`` equal slices of ``window``."""
        t0 = time.monotonic()
        slice_s = window / max(self.plan.kills, 1)
        for k in range(self.plan.kills):
            at = t0 + slice_s * (k + self.rng.uniform(0.1, 0.9))
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await self.kill_one()

    async def pause_broker(self, window: float) -> None:
        if not self.broker_pid or not self.plan.pause_s:
            return
        await asyncio.sleep(window * self.rng.uniform(0.3, 0.6))
        self.echo(f"SIGSTOP broker (pid {self.broker_pid}) for {self.plan.pause_s:.0f}s")
        os.kill(self.broker_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.plan.pause_s)
            self.report.pause_s = self.plan.pause_s
        finally:
            os.kill(self.broker_pid, signal.SIGCONT)
            self.echo("SIGCONT broker")

    async def churn(self, products: dict[str, Any], churn: list[str]) -> None:
        from stream.clients import push_catalog

        deleted: set[str] = set()
        while self.sending:
            await asyncio.sleep(self.plan.churn_every_s)
            pid = self.rng.choice(churn)
            try:
                if pid in deleted:
                    await push_catalog(self.settings, [products[pid]])
                    deleted.discard(pid)
                else:
                    await push_catalog(self.settings, deletes=[pid])
                    deleted.add(pid)
                self.report.churn_updates += 1
            except Exception as exc:  # noqa: BLE001 - the broker may be paused; churn goes on
                log.warning("catalogue churn of %s failed: %s: %s", pid, type(exc).__name__, exc)
        if deleted:                   # leave the catalogue whole
            try:
                await push_catalog(self.settings, [products[p] for p in sorted(deleted)])
                self.report.churn_updates += len(deleted)
            except Exception as exc:  # noqa: BLE001
                log.warning("re-adding churned products failed: %s", exc)

    async def corrupt_sessions(self, window: float) -> None:
        """Overwrite a shopper's session in the changelog with garbage, ``plan.corrupt_sessions``
        times, on the partition their events (and so their session) live on."""
        from aiokafka import AIOKafkaProducer

        from stream.ops.topics import changelog_topic

        n = self.plan.corrupt_sessions
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all",
                                    request_timeout_ms=30_000, **self.settings.kafka_client_options())
        await producer.start()
        try:
            t0 = time.monotonic()
            for k in range(n):
                at = t0 + window * (0.1 + 0.7 * (k + self.rng.random()) / n)
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                shoppers = [m for m in self.sent if m.kind == "valid"]
                if not shoppers:
                    continue
                m = self.rng.choice(shoppers)
                try:
                    self.corrupted.add(m.key)
                    await producer.send_and_wait(changelog_topic(self.settings), b"\x00not a session",
                                                 key=m.key, partition=m.partition)
                    self.report.corrupt_sessions += 1
                except Exception as exc:  # noqa: BLE001 - the broker may be paused
                    log.warning("writing a corrupt session failed: %s: %s", type(exc).__name__, exc)
        finally:
            await producer.stop()

    async def disk_fault(self, window: float) -> None:
        """Make one processing worker's state disk refuse every write for ``plan.disk_fault_s``:
        its soft file-size limit goes below the ~7.5 kB options file RocksDB writes at every open
        (so a reopen fails too) and is restored after. CPython ignores SIGXFSZ: writes fail with
        EFBIG. The worker's own log lines past the limit are lost meanwhile."""
        import json
        import resource
        import urllib.error
        import urllib.request

        await asyncio.sleep(window * self.rng.uniform(0.15, 0.35))
        deadline = time.monotonic() + 90.0
        while True:         # a processing worker: one still loading its model would write nothing
            alive = [i for i, p in enumerate(self.workers) if p is not None and p.poll() is None]
            ready = [i for i in alive if i not in self.killing and await asyncio.to_thread(self._ready, i)]
            if ready or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        if not ready:
            self.echo("disk fault skipped: no worker became ready")
            return
        slot = self.rng.choice(ready)
        proc = self.workers[slot]
        soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (DISK_FAULT_FSIZE, hard))
        self.echo(f"disk fault: worker {slot} (pid {proc.pid}) may write no file past {DISK_FAULT_FSIZE} bytes "
                  f"for {self.plan.disk_fault_s:g}s")

        def ready_says() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[slot]}/ready", timeout=1) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as exc:
                return json.loads(exc.read())
            except (OSError, ValueError):
                return None

        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < self.plan.disk_fault_s and self.workers[slot] is proc:
                says = await asyncio.to_thread(ready_says)
                if says is None:
                    seen = "no answer"
                elif says.get("ready"):
                    seen = "200"
                else:
                    seen = "503: " + ", ".join(sorted(k for k, v in says.items() if v is False))
                outcomes = self.report.disk_fault_ready_answers
                outcomes[seen] = outcomes.get(seen, 0) + 1
                if says is not None:
                    self.report.disk_fault_ready_checks += 1
                    if says.get("state_store_ok") is False and "state_store_ok" in says.get("reasons", {}):
                        self.report.disk_fault_unready = True
                await asyncio.sleep(0.5)
        finally:
            self.report.disk_fault_s = round(time.monotonic() - t0, 1)
            try:
                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
                self.echo(f"disk fault over: worker {slot} writes again")
            except (ProcessLookupError, PermissionError):
                self.echo(f"disk fault over: worker {slot} was replaced meanwhile")

    # -- input and output ---------------------------------------------------------------------
    async def produce(self, messages: list[Sent]) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all", linger_ms=5,
                                    max_request_size=2 * OVERSIZED_BYTES, request_timeout_ms=30_000,
                                    **self.settings.kafka_client_options())
        await producer.start()
        t0 = time.monotonic()
        try:
            for i, m in enumerate(messages):
                due = t0 + i / self.plan.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                m.raw = orjson.dumps({**m.value, "ts": int(time.time() * 1000)}) if isinstance(m.value, dict) else m.value
                m.sha = hashlib.sha256(m.raw).hexdigest()
                while True:
                    try:
                        meta = await producer.send_and_wait(self.settings.events_topic, m.raw, key=m.key)
                        break
                    except KafkaError as exc:     # the broker paused: send it again (a duplicate at worst)
                        self.report.send_retries += 1
                        log.warning("send of message %d failed (%s); retrying", i, exc)
                        await asyncio.sleep(0.5)
                m.partition, m.offset = meta.partition, meta.offset
                self.sent.append(m)
        finally:
            await producer.stop()
            self.report.send_seconds = round(time.monotonic() - t0, 1)

    async def collect(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        s = self.settings
        consumer = AIOKafkaConsumer(s.recommendations_topic, s.dead_letter_topic, group_id=None,
                                    bootstrap_servers=s.bootstrap_servers, auto_offset_reset="earliest",
                                    enable_auto_commit=False, fetch_max_wait_ms=100,
                                    **s.kafka_client_options())
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for msgs in batch.values():
                    for m in msgs:
                        if m.topic == s.dead_letter_topic:
                            h = {k: v.decode() for k, v in (m.headers or ())}
                            self.dead.setdefault(h.get(DL_HEADER + "sha256", ""), []).append(
                                h.get(DL_HEADER + "reason", "?"))
                        elif m.value is not None:        # (a tombstone: a forgotten shopper)
                            self.report.recommendations += 1
                            self.reflected.update(orjson.loads(m.value)["event_ids"])
        finally:
            await consumer.stop()

    # -- the verdict --------------------------------------------------------------------------
    def evaluate(self) -> ChaosReport:
        r = self.report
        for name in ("valid_missing", "churn_missing", "fault_missing", "malformed_missing", "wrong"):
            setattr(r, name, [])
        r.valid_reflected = r.churn_reflected = r.churn_dead_lettered = 0
        r.fault_dead_lettered = r.malformed_dead_lettered = 0
        for m in self.sent:
            reasons = self.dead.get(m.sha, [])
            reflected = bool(m.event_id) and self.reflected[m.event_id] > 0
            where = {"event_id": m.event_id, "kind": m.kind, "partition": m.partition, "offset": m.offset,
                     "key": m.key.decode()}
            want = expected_reason(m.kind)
            bad_reasons = [x for x in reasons if x != want]
            if bad_reasons or (reflected and m.kind not in ("valid", "churn")):
                r.wrong.append({**where, "reflected": reflected, "dead_letter_reasons": reasons})
            elif m.kind == "valid":
                if reflected:
                    r.valid_reflected += 1
                else:
                    r.valid_missing.append(where)
            elif m.kind == "churn":
                if reflected:
                    r.churn_reflected += 1
                elif reasons:
                    r.churn_dead_lettered += 1
                else:
                    r.churn_missing.append(where)
            elif m.kind == "fault":
                if reasons:
                    r.fault_dead_lettered += 1
                else:
                    r.fault_missing.append(where)
            elif reasons:
                r.malformed_dead_lettered += 1
            else:
                r.malformed_missing.append(where)
        r.dead_letter_reasons = dict(Counter(x for rs in self.dead.values() for x in rs))
        if self.sessions is not None:
            self._check_sessions(self.sessions)
        r.duplicate_reflections = sum(c - 1 for c in self.reflected.values() if c > 1)
        r.duplicate_dead_letters = sum(len(rs) - 1 for rs in self.dead.values() if len(rs) > 1)
        r.duplicates_per_kill = round(r.duplicate_reflections / r.kills, 1) if r.kills else 0.0
        return r

    async def read_sessions(self) -> dict[bytes, set[str]]:
        """The recent event ids of each shopper's session: the sessions changelog's latest value per key."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from stream.core import session_state
        from stream.live.faust_compat import checked_end_offsets
        from stream.ops.topics import changelog_topic

        s = self.settings
        topic = changelog_topic(s)
        consumer = AIOKafkaConsumer(group_id=None, bootstrap_servers=s.bootstrap_servers,
                                    auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=100,
                                    **s.kafka_client_options())
        await consumer.start()
        latest: dict[bytes, bytes | None] = {}
        try:
            tps = [TopicPartition(topic, p) for p in range(s.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await checked_end_offsets(s, await consumer.end_offsets(tps))   # tansu lists them short
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for msgs in batch.values():
                    for m in msgs:
                        latest[m.key] = m.value
                positions = [await consumer.position(tp) for tp in ends]
                if all(pos >= (end or 0) for pos, end in zip(positions, ends.values())):
                    break
        finally:
            await consumer.stop()
        out: dict[bytes, set[str]] = {}
        for key, raw in latest.items():
            try:
                state = session_state.loads(raw) if raw else None
            except Exception:  # noqa: BLE001 - a corrupt value the chaos wrote, not replaced yet
                state = None
            out[key] = set(state.get("seen", ())) if state else set()
        return out

    def _check_sessions(self, sessions: dict[bytes, set[str]]) -> None:
        from stream.core.session_state import SEEN_EVENT_IDS

        r = self.report
        r.valid_missing_from_sessions = []
        by_user: dict[bytes, list[Sent]] = {}
        for m in self.sent:
            if m.kind in ("valid", "churn", "fault"):      # every event a session folds, in send order
                by_user.setdefault(m.key, []).append(m)
        checked = 0
        for key, msgs in by_user.items():
            if key in self.corrupted:
                continue
            recent = msgs[-SEEN_EVENT_IDS // 2:]         # well inside the session's window of recent ids
            for m in recent:
                if m.kind != "valid" or not self.reflected[m.event_id]:
                    continue                             # a lost event is counted as lost already
                checked += 1
                if m.event_id not in sessions.get(key, ()):
                    r.valid_missing_from_sessions.append({"event_id": m.event_id, "key": key.decode(),
                                                          "partition": m.partition, "offset": m.offset})
        r.sessions_checked = checked

    # -- the whole run ------------------------------------------------------------------------
    async def run(self) -> ChaosReport:
        from index import load_snapshot
        from stream.ops.topics import ensure_topics
        from stream.tools.demo import wait_ready

        started = time.monotonic()
        plan = self.plan
        index = load_snapshot(self.settings.resolved_index_path)
        product_ids = sorted(index.products)
        churn = random.Random(plan.seed + 2).sample(product_ids, plan.churn_products) if plan.churn_products else []
        messages = plan_messages(plan, product_ids, churn, self.run_id)
        self.fault_ids = ",".join(m.event_id for m in messages if m.kind == "fault")
        r = self.report
        r.valid = sum(m.kind == "valid" for m in messages)
        r.churn_events = sum(m.kind == "churn" for m in messages)
        r.fault_events = sum(m.kind == "fault" for m in messages)
        r.malformed_by_kind = dict(Counter(m.kind for m in messages if m.kind in MALFORMED_KINDS))
        r.malformed = sum(r.malformed_by_kind.values())
        await ensure_topics(self.settings)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for slot in range(plan.workers):
            self.start_worker(slot)
        for slot, proc in enumerate(self.workers):
            await asyncio.to_thread(wait_ready, self.ports[slot], proc, 180.0)
        self.echo(f"{plan.workers} worker(s) ready; sending {plan.events} messages at {plan.rate:g}/s with "
                  f"{plan.kills} kill(s), a {plan.pause_s:g}s broker pause and churn of {len(churn)} product(s)")
        stop = asyncio.Event()
        collector = asyncio.create_task(self.collect(stop))
        supervisor = asyncio.create_task(self.supervise())
        window = plan.events / plan.rate
        chaos = [asyncio.create_task(self.kills(window)), asyncio.create_task(self.pause_broker(window)),
                 asyncio.create_task(self.churn(index.products, churn)) if churn else None,
                 asyncio.create_task(self.corrupt_sessions(window)) if plan.corrupt_sessions else None,
                 asyncio.create_task(self.disk_fault(window)) if plan.disk_fault_s else None]
        chaos = [t for t in chaos if t is not None]
        try:
            await self.produce(messages)
            self.sending = False
            await asyncio.gather(*chaos)
            sent_at = time.monotonic()
            self.echo(f"all sent in {r.send_seconds}s; waiting for every message to be accounted for")
            deadline = sent_at + plan.settle_timeout_s
            while time.monotonic() < deadline:
                self.evaluate()
                if r.ok or (r.wrong and not self._missing()):
                    break
                await asyncio.sleep(1.0)
            r.settle_seconds = round(time.monotonic() - sent_at, 1)
            for _ in range(10):          # a batch's session writes follow its recommendations
                self.sessions = await self.read_sessions()
                self.evaluate()
                if not r.valid_missing_from_sessions:
                    break
                await asyncio.sleep(2.0)
        finally:
            self.sending = False
            for t in chaos:
                t.cancel()
            await asyncio.gather(*chaos, return_exceptions=True)
            stop.set()
            supervisor.cancel()
            await asyncio.gather(collector, supervisor, return_exceptions=True)
            self.stop_workers()
        self.evaluate()
        r.corrupt_sessions_read = sum(Path(p).read_bytes().count(b" does not parse (")
                                      for p in r.worker_logs if Path(p).exists())
        r.seconds = round(time.monotonic() - started, 1)
        return r

    def _missing(self) -> int:
        r = self.report
        return len(r.valid_missing) + len(r.churn_missing) + len(r.fault_missing) + len(r.malformed_missing)


def run_chaos(settings: Settings, plan: ChaosPlan, *, broker_pid: int | None, log_dir: Path,
              echo: Callable[[str], None] = log.info) -> ChaosReport:
    """Run the scenario against the broker in ``settings``; ``broker_pid`` (local) is paused once."""
    from stream.tools.bench_e2e import _machine

    report = asyncio.run(ChaosRun(settings, plan, broker_pid=broker_pid, log_dir=log_dir, echo=echo).run())
    report.machine = _machine()
    return report


def run_chaos_bench(plan: ChaosPlan, *, partitions: int = 4, data_dir: Path | None = None,
                    echo: Callable[[str], None] = log.info) -> ChaosReport:
    """:func:`run_chaos` with its own embedded broker, the local engine and index (built once)."""
    from stream.tools.bootstrap import prepare_local
    from stream.tools.broker import EmbeddedBroker

    data_dir = data_dir or Path("var")
    run_id = uuid.uuid4().hex[:8]
    log_dir = data_dir / "logs" / f"chaos-{run_id}"
    with EmbeddedBroker(log_file=log_dir / "broker.log") as broker:
        settings = Settings.from_env(broker=broker.bootstrap, data_dir=data_dir, partitions=partitions,
                                     app_id=f"chaos-{run_id}", events_topic=f"chaos-events-{run_id}",
                                     recommendations_topic=f"chaos-recs-{run_id}",
                                     dead_letter_topic=f"chaos-dlq-{run_id}", catalog_topic=f"chaos-catalog-{run_id}")
        settings = prepare_local(settings, echo)
        return run_chaos(settings, plan, broker_pid=broker.pid, log_dir=log_dir, echo=echo)


def render(r: dict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["malformed_by_kind"].items()))
    rows = [
        ("machine", r["machine"]),
        ("sent", f"{r['events']} messages in {r['send_seconds']} s: {r['valid']} valid, {r['churn_events']} naming "
                 f"churned products, {r['fault_events']} fault-hook, {r['malformed']} malformed ({kinds})"),
        ("chaos", f"{r['kills']} SIGKILLs ({r['kills_of_ready']} of processing workers), broker paused "
                  f"{r['pause_s']:g} s, {r['churn_updates']} catalogue deletes/re-adds, "
                  f"{r['corrupt_sessions']} corrupt session values ({r['corrupt_sessions_read']} read by a worker), "
                  f"{r['send_retries']} producer retries; {len(r.get('worker_exits', []))} worker exit(s) "
                  f"restarted {r.get('worker_exits', [])}"),
        ("valid", f"{r['valid_reflected']} reflected, {len(r['valid_missing'])} missing"),
        ("sessions", f"{r['sessions_checked']} valid events looked up in their shopper's session (changelog): "
                     f"{len(r['valid_missing_from_sessions'])} missing"),
        ("disk fault", f"one worker's state disk refused every write for {r['disk_fault_s']:g} s; /ready "
                       f"{'503 naming the state store' if r['disk_fault_unready'] else 'never said so'} "
                       f"({r['disk_fault_ready_checks']} checks: "
                       f"{', '.join(f'{k} x{v}' for k, v in sorted(r.get('disk_fault_ready_answers', {}).items()))})"
                       if r["disk_fault_s"] else "none"),
        ("churned products", f"{r['churn_reflected']} reflected, {r['churn_dead_lettered']} dead-lettered "
                             f"unknown_product, {len(r['churn_missing'])} missing"),
        ("fault hook", f"{r['fault_dead_lettered']} dead-lettered processing_error, "
                       f"{len(r['fault_missing'])} missing"),
        ("malformed", f"{r['malformed_dead_lettered']} dead-lettered with their reason, "
                      f"{len(r['malformed_missing'])} missing"),
        ("handled wrongly", str(len(r["wrong"]))),
        ("duplicates", f"{r['duplicate_reflections']} re-reflected event(s) ({r['duplicates_per_kill']:g} per "
                       f"kill), {r['duplicate_dead_letters']} repeated dead letter(s); "
                       f"{r['recommendations']} recommendations"),
        ("time", f"{r['seconds']} s in all; {r['settle_seconds']} s from the last send until everything was "
                 "accounted for"),
        ("verdict", "OK: nothing lost" if r["ok"] else "LOSS OR MISHANDLING (see --json)"),
    ]
    return "\n".join(f"{name:<19}{text}" for name, text in rows)

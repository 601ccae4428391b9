"""The demo: embedded broker, one worker, real shopper behaviour replayed, recommendations printed."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

from stream.settings import Settings
from stream.tools.processes import die_with_parent

log = logging.getLogger(__name__)


def start_worker_process(settings: Settings, log_path: Path, extra_env: dict | None = None,
                         args: list[str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """``shopstream worker`` as a child process in its own process group (in ``cwd`` when given)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SHOPSTREAM_BROKER=settings.broker, SHOPSTREAM_APP_ID=settings.app_id,
               SHOPSTREAM_PARTITIONS=str(settings.partitions), SHOPSTREAM_PARTITIONER=settings.partitioner,
               SHOPSTREAM_WEB_PORT=str(settings.web_port),
               SHOPSTREAM_DATA_DIR=str(settings.data_dir), PYTHONUNBUFFERED="1")
    env["SHOPSTREAM_SESSION_ENCODER"] = str(settings.session_encoder)
    env.update(extra_env or {})
    if settings.index_path:
        env["SHOPSTREAM_INDEX_PATH"] = str(settings.index_path)
    if settings.encoder_artifact:
        env["SHOPSTREAM_ENCODER_ARTIFACT"] = str(settings.encoder_artifact)
    fh = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "stream", "worker", *(args or [])], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=die_with_parent, cwd=cwd)
    finally:
        fh.close()


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(port: int, proc: subprocess.Popen | None = None, timeout: float = 90.0,
               host: str = "127.0.0.1") -> None:
    """Poll the worker's ``/ready`` until it answers 200 (partitions assigned, tables recovered)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"worker on port {port} not ready within {timeout:.0f}s")


@dataclass
class DemoStats:
    sent: int = 0
    bad_sent: int = 0
    recommendations: int = 0
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)


def _title(products: dict, pid: str) -> str:
    p = products.get(pid)
    return p.title if p is not None else pid


async def run_demo(settings: Settings, *, rate: float, limit: int | None, bad_share: float,
                   echo: Callable[[str], None]) -> DemoStats:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from index import load_snapshot
    from stream.core.partitioner import aiokafka_partitioner
    from stream.live.services import load_text_encoder
    from stream.tools.replay_data import shopper_events

    index = load_snapshot(settings.resolved_index_path)
    encoder = load_text_encoder(settings)        # the simulated storefront's own search
    products = index.products
    stats = DemoStats()
    did: dict[str, str] = {}
    run_id = uuid.uuid4().hex[:6]

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5,
                                partitioner=aiokafka_partitioner(settings.partitioner),
                                **settings.kafka_client_options())
    consumer = AIOKafkaConsumer(settings.recommendations_topic, settings.dead_letter_topic,
                                bootstrap_servers=settings.bootstrap_servers, fetch_max_wait_ms=settings.fetch_max_wait_ms, group_id=None,
                                auto_offset_reset="latest", **settings.kafka_client_options())
    await producer.start()
    await consumer.start()

    async def show() -> None:
        async for m in consumer:
            if m.topic == settings.dead_letter_topic:
                stats.dead_letters += 1
                reason = dict(m.headers).get("shopstream.dead-letter.reason", b"?").decode()
                echo(f"  ✗ dead-lettered ({reason}): {m.value[:60]!r}")
                continue
            if m.value is None:               # a forgotten shopper's tombstone
                continue
            rec = orjson.loads(m.value)
            stats.recommendations += 1
            lag = (time.time() * 1000 - _ms(rec["event_time"])) / 1000
            actions = "; ".join(did.pop(e, e) for e in rec["event_ids"][-3:])
            more = len(rec["event_ids"]) - 3
            items = ", ".join(f"{_title(products, i['product_id'])} ({i['score']:.2f})" for i in rec["items"][:4])
            echo(f"user {rec['user_id']:>6} {actions}{f' (+{more} more)' if more > 0 else ''}\n"
                 f"       → {items}   [{lag * 1000:.0f} ms]")
            if "search" in rec:
                top = ", ".join(_title(products, i["product_id"]) for i in rec["search"]["items"][:3])
                echo(f"       ⌕ '{rec['search']['query']}' re-ranked for this shopper: {top}")

    shower = asyncio.create_task(show())
    try:
        events = shopper_events(known=set(products))
        if limit is not None:
            events = itertools.islice(events, limit)
        n = 0
        for n, se in enumerate(events, 1):
            eid = f"demo-{run_id}-{n}"
            ev = {"event_id": eid, "type": se.type, "user_id": se.user_id, "session_id": se.session_id,
                  "ts": int(time.time() * 1000), "context": {"original_time": se.original_time.isoformat()}}
            if se.item_id:
                ev["item_id"] = se.item_id
                did[eid] = f"{se.type.replace('_', ' ')} '{_title(products, se.item_id)}'"
            else:
                ev["query"] = se.query
                qv = encoder.encode([se.query])
                ev["results"] = [c.product_id for c in index.search(qv, 12)[0]]
                did[eid] = f"searched '{se.query}'"
            await producer.send(settings.events_topic, orjson.dumps(ev), key=se.user_id.encode())
            stats.sent += 1
            if bad_share and n % int(1 / bad_share) == 0:
                bad = [b"{not json", orjson.dumps({"event_id": f"bad-{n}", "type": "teleport", "user_id": se.user_id}),
                       orjson.dumps({**ev, "event_id": f"bad-{n}", "item_id": "NO-SUCH-PRODUCT", "type": "view"})]
                await producer.send(settings.events_topic, bad[(n // int(1 / bad_share)) % 3],
                                    key=se.user_id.encode())
                stats.bad_sent += 1
            await asyncio.sleep(1.0 / rate)
        await producer.flush()
        # let the last recommendations arrive
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and did:
            await asyncio.sleep(0.2)
    finally:                       # each client is closed even when Ctrl-C cuts a stop before it short
        shower.cancel()
        try:
            await asyncio.gather(shower, return_exceptions=True)
            await producer.stop()
        finally:
            try:
                await consumer.stop()
            finally:
                encoder.close()
    return stats


def _ms(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000

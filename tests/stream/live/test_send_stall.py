"""A broker that stops answering while the worker sends: ``/ready`` turns 503 with the reason after
``send_unready_after_s``, and nothing is dropped once it answers again.

The embedded broker is paused for real (SIGSTOP) right after the worker has taken an event whose
encoding fails (the test-only fault hook): the worker retries the batch for ~0.75 s and then sends
its dead letter into the paused broker, where it waits with no answer.
"""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import orjson

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

STALL_S = 2.0


def _ready(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_unanswered_sends_make_ready_503_and_drop_nothing(settings_factory, worker_factory, embedded_broker,
                                                          catalog_products):
    settings = settings_factory(partitions=1)
    proc = worker_factory(settings, extra_env={"SHOPSTREAM_FAULT_EVENT_IDS": "e1",
                                               "SHOPSTREAM_SEND_UNREADY_AFTER_S": str(STALL_S)})
    pid = catalog_products[0].id
    events = [event(0, "stall-u0", item=pid), event(1, "stall-u1", item=pid)]
    run(produce_raw(settings, [keyed(e) for e in events]))
    deadline = time.monotonic() + 60
    while b"batch of" not in proc.log_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)            # the batch with e1 failed once: its retries and then its sends follow
    assert time.monotonic() < deadline, "the worker never took the fault-hook event"
    os.kill(embedded_broker.pid, signal.SIGSTOP)
    try:
        paused = time.monotonic()
        status, body = _ready(settings.web_port)
        while status == 200 and time.monotonic() - paused < STALL_S + 20:
            time.sleep(0.2)
            status, body = _ready(settings.web_port)
        waited = time.monotonic() - paused
    finally:
        os.kill(embedded_broker.pid, signal.SIGCONT)
    assert status == 503, "sends have had no answer for 20 s past the limit, yet /ready answered 200"
    assert waited >= STALL_S * 0.5, f"/ready turned 503 after {waited:.1f} s, before the {STALL_S} s limit"
    assert body["sends_ok"] is False and "undelivered" in body["reasons"]["sends_ok"], body

    recs = run(read_topic(settings, settings.recommendations_topic,
                          until=lambda m: any("e0" in r["event_ids"] for r in recs_of(m)), timeout=60))
    assert any("e0" in r["event_ids"] for r in recs_of(recs))
    dlq = run(read_topic(settings, settings.dead_letter_topic, until=lambda m: len(m) >= 1, timeout=60))
    assert [orjson.loads(m.value)["event_id"] for m in dlq] == ["e1"]
    deadline = time.monotonic() + 30
    while _ready(settings.web_port)[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ready(settings.web_port)[0] == 200, "sends go through again, yet /ready stays 503"

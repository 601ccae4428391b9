"""The bench's driver and its ceiling against the real broker: every message counted back, every id
checked once at the end, the forwarder's copies too; payloads serialised ahead are valid events."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import orjson
import pytest

from stream.core.schema import EventValidator
from stream.settings import Settings
from stream.tools.bench_e2e import _prepared, measure_ceiling, measure_driver
from stream.tools.processes import CpuMeter, cpu_seconds


def _events(n: int, bad_every: int = 50) -> list[tuple[bytes, dict | bytes]]:
    run = uuid.uuid4().hex[:6]
    out: list[tuple[bytes, dict | bytes]] = []
    for i in range(n):
        user = f"u{i % 37}"
        out.append((user.encode(), {"event_id": f"{run}-{i}", "type": "view", "user_id": user,
                                    "session_id": f"s-{user}", "item_id": "85123A"}))
        if i % bad_every == 0:
            out.append((user.encode(), b'{"event_id": "broken'))
    return out


def _settings(broker, tmp_path) -> Settings:
    return Settings(broker=broker, partitions=4, data_dir=tmp_path)


def test_a_prepared_payload_with_its_send_time_is_the_event(tmp_path):
    settings = Settings(data_dir=tmp_path)
    events = _events(5, bad_every=2)
    validator = EventValidator(clock=lambda: 1_763_800_000.0)
    prepared = _prepared(settings, events, 4)
    assert len(prepared) == len(events) == 8
    for (key, part, payload, eid), (_, value) in zip(prepared, events):
        assert 0 <= part < 4
        if eid is None:
            assert payload == value
            continue
        stamped = payload + b"%d}" % 1_763_800_000_123
        assert orjson.loads(stamped) == {**value, "ts": 1_763_800_000_123}
        assert validator.parse(stamped, key).event_id == eid


def test_the_driver_alone_counts_every_message_back(broker, tmp_path):
    settings = _settings(broker, tmp_path)
    events = _events(2000)
    r = measure_driver(settings, events, uuid.uuid4().hex[:8])
    assert r["events_per_second"] and r["events_per_second"] > 0
    assert (r["reflected"], r["missing"], r["unexpected"]) == (2000, 0, 0)
    assert r["events_malformed"] == 40


def test_the_forwarder_ceiling_copies_every_message(broker, tmp_path):
    settings = _settings(broker, tmp_path)
    (tmp_path / "logs").mkdir(exist_ok=True)
    events = _events(1000)
    r = measure_ceiling(settings, events, uuid.uuid4().hex[:8], tmp_path)
    assert r["events_per_second"] and r["events_per_second"] > 0
    assert (r["reflected"], r["missing"]) == (1000, 0)
    if sys.platform.startswith("linux"):     # the CPU it took, the forwarder's and the driver's
        us = r["cpu"]["cpu_us_per_event"]
        assert us["forwarder"] > 0 and us["driver"] > 0
        assert us["total"] == pytest.approx(us["forwarder"] + us["driver"], abs=0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU of other processes is read from /proc")
def test_the_cpu_meter_counts_what_each_process_used_in_its_window():
    """A child that spins for 0.4 s of CPU inside the window and one that sleeps: the meter tells
    them apart, and this process's own share is counted as the driver's."""
    busy = subprocess.Popen([sys.executable, "-c", "import sys,time\nsys.stdin.readline()\n"
                             "t=time.process_time()\nwhile time.process_time()-t<0.4: pass\n"
                             "sys.stdin.readline()"], stdin=subprocess.PIPE, text=True)
    idle = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                            stdin=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)                      # both started: interpreter start-up is outside the window
        meter = CpuMeter({"busy": [busy.pid], "idle": [idle.pid], "driver": [None]})
        meter.start()
        busy.stdin.write("go\n"); busy.stdin.flush()
        t = time.process_time()
        while time.process_time() - t < 0.1:
            pass
        time.sleep(0.8)
        got = meter.stop(1000)
    finally:
        for p in (busy, idle):
            p.stdin.close()
            p.wait(timeout=10)
    cores, us = got["cores"], got["cpu_us_per_event"]
    assert 0.35 <= us["busy"] / 1000 <= 0.6          # its 0.4 s, in microseconds per each of 1,000 events
    assert us["idle"] < 30
    assert 0.08 <= us["driver"] / 1000 <= 0.3
    assert us["total"] == pytest.approx(us["busy"] + us["idle"] + us["driver"], abs=0.2)
    assert 0 < cores["busy"] <= 1.0 and got["seconds"] >= 0.9
    assert cpu_seconds(2 ** 22 + 12345) is None       # no such process: left out, not an error


def test_the_core_alone_runs_the_workers_pipeline_on_the_same_messages(settings_factory, catalog_products):
    """The bench's in-run bound for one worker: the real pipeline (real encoder, real index) on the
    same prepared messages, in the worker's batches; malformed ones dead-lettered as a worker does."""
    from stream.tools.bench_e2e import measure_core

    settings = settings_factory(batch_size=64)
    run = uuid.uuid4().hex[:6]
    events: list[tuple[bytes, dict | bytes]] = []
    for i in range(300):
        user = f"u{i % 23}"
        ev = {"event_id": f"{run}-{i}", "type": "view", "user_id": user, "session_id": f"s-{user}",
              "item_id": catalog_products[i % 50].id}
        if i % 10 == 0:
            ev = {"event_id": f"{run}-{i}", "type": "search", "user_id": user, "session_id": f"s-{user}",
                  "query": "red heart candle holder"}
        events.append((user.encode(), ev))
        if i % 100 == 0:
            events.append((user.encode(), b'{"event_id": "broken'))
    r = measure_core(settings, events, settings.partitions)
    assert r["events_per_second"] > 0 and r["seconds"] > 0
    assert r["dead_lettered"] == 3
    # each batch of 64 messages recommends once per shopper in it: 23 shoppers, 5 batches
    assert 23 <= r["recommendations"] <= 5 * 23

"""Replay on a real broker with the real model and index: counts, determinism, resume, slices."""
from __future__ import annotations

import random
import time

import orjson
import pytest

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

BAD = [b"not json", orjson.dumps({"event_id": "x", "type": "teleport", "user_id": "u", "session_id": "s",
                                  "ts": 1700000000000})]


def _events(catalog_products, n: int, first: int, ts_ms: int) -> list[dict]:
    rng = random.Random(first)
    pids = [p.id for p in catalog_products]
    out = []
    for i in range(first, first + n):
        etype = rng.choice(["view", "view", "click", "search", "add_to_cart", "purchase"])
        out.append(event(i, f"user-{rng.randrange(25)}", etype, item=rng.choice(pids),
                         query=rng.choice(["red heart candle", "wooden frame", "christmas bauble"]),
                         ts_ms=ts_ms + i * 10))
    return out


def _by_id(messages) -> dict[str, dict]:
    return {r["recommendation_id"]: r for r in recs_of(messages)}


@pytest.fixture
def replay_setup(settings_factory, catalog_products):
    from stream.live.services import load_services

    settings = settings_factory(batch_size=32)
    now = int(time.time() * 1000) - 3_600_000
    wave1 = _events(catalog_products, 240, 0, now)
    run(produce_raw(settings, [keyed(e) for e in wave1] + [(b"u", b) for b in BAD]))
    time.sleep(1.2)                     # a gap in record time between the two waves
    boundary_ms = int(time.time() * 1000)
    time.sleep(0.2)
    wave2 = _events(catalog_products, 60, 10_000, now + 5_000)
    run(produce_raw(settings, [keyed(e) for e in wave2]))
    return settings, load_services(settings), wave1, wave2, boundary_ms


def test_replay_is_complete_deterministic_and_resumable(replay_setup, tmp_path):
    from stream.replay.run import Replay, parse_bound

    settings, services, wave1, wave2, _ = replay_setup
    valid = {e["event_id"] for e in wave1 + wave2}
    total = len(valid) + len(BAD)
    whole = dict(start=parse_bound("start"), end=parse_bound("end"), progress=False, services=services)

    first = run(Replay(settings, output="replay-a", checkpoint=tmp_path / "a.json", **whole).run())
    assert (first.events_read, first.dead_lettered) == (total, len(BAD))
    assert first.dead_letter_reasons == {"not_json": 1, "unknown_type": 1}
    out_a = run(read_topic(settings, "replay-a", until=lambda m: len(m) >= first.recommendations_written))
    assert len(out_a) == first.recommendations_written
    assert {e for r in recs_of(out_a) for e in r["event_ids"]} == valid
    assert not (tmp_path / "a.json").exists(), "a finished replay leaves no checkpoint"

    # the same slice again, interrupted after two batches and resumed
    ckpt = tmp_path / "b.json"
    part = run(Replay(settings, output="replay-b", checkpoint=ckpt, max_batches=2, **whole).run())
    assert part.events_read == 64 and ckpt.exists()
    rest = run(Replay(settings, output="replay-b", checkpoint=ckpt, **whole).run())
    assert rest.resumed_at == 64
    assert (rest.events_read, rest.recommendations_written, rest.dead_lettered) == \
        (first.events_read, first.recommendations_written, first.dead_lettered)
    out_b = run(read_topic(settings, "replay-b", until=lambda m: len(_by_id(m)) >= len(_by_id(out_a))))
    a, b = _by_id(out_a), _by_id(out_b)
    assert a.keys() == b.keys(), "same slice, model and index: the same recommendation ids"
    for rid, rec in a.items():
        assert [i["product_id"] for i in rec["items"]] == [i["product_id"] for i in b[rid]["items"]]
        assert [i["score"] for i in rec["items"]] == pytest.approx([i["score"] for i in b[rid]["items"]], abs=1e-5)
        assert rec["produced_at"] == b[rid]["produced_at"] >= rec["event_time"], "produced_at is event time"
    assert all(m.key == orjson.loads(m.value)["user_id"].encode() for m in out_b)

    # the live sessions table was never written
    from stream.ops.topics import changelog_topic

    assert run(read_topic(settings, changelog_topic(settings), until=lambda m: False, timeout=2)) == []


def test_replay_slices_by_time_and_offset_and_dry_run(replay_setup, capsys):
    from stream.cli import main
    from stream.replay.run import Replay, parse_bound

    settings, services, wave1, wave2, boundary_ms = replay_setup
    later = run(Replay(settings, start=parse_bound(f"@{boundary_ms}"), end=parse_bound("end"),
                       output="replay-late", progress=False, services=services, fresh=True).run())
    assert (later.events_read, later.dead_lettered) == (len(wave2), 0)
    recs = run(read_topic(settings, "replay-late", until=lambda m: len(m) >= later.recommendations_written))
    assert {e for r in recs_of(recs) for e in r["event_ids"]} == {e["event_id"] for e in wave2}

    main(["replay", "--broker", settings.broker, "--app-id", settings.app_id, "--topic", settings.events_topic,
          "--from", "10", "--to", "30", "--dry-run"])
    assert "dry run: 40 event(s)" in capsys.readouterr().out      # offsets 10..29 of both partitions
    with pytest.raises(SystemExit):
        main(["replay", "--broker", settings.broker, "--topic", settings.events_topic,
              "--output", settings.events_topic, "--dry-run"])
    assert "must not be the topic being replayed" in capsys.readouterr().err


def test_sigterm_stops_replay_at_a_checkpoint_that_the_same_command_resumes(replay_setup, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from stream.replay.run import Replay, parse_bound

    settings, services, wave1, wave2, _ = replay_setup
    ckpt = tmp_path / "cli.json"
    env = dict(os.environ, SHOPSTREAM_BROKER=settings.broker, SHOPSTREAM_APP_ID=settings.app_id,
               SHOPSTREAM_EVENTS_TOPIC=settings.events_topic, SHOPSTREAM_BATCH_SIZE="32",
               SHOPSTREAM_INDEX_PATH=str(settings.index_path), SHOPSTREAM_ENCODER_BACKEND="torch",
               SHOPSTREAM_SESSION_ENCODER=settings.session_encoder)   # the fixture index is text-space
    proc = subprocess.Popen([sys.executable, "-m", "stream", "replay", "--output", "replay-cli", "--rate", "20",
                             "--checkpoint", str(ckpt), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)              # the first periodic checkpoint: some batches are done
        assert ckpt.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "the same command resumes" in err
    done = orjson.loads(ckpt.read_bytes())["counts"]["events"]
    assert 0 < done < len(wave1) + len(wave2) + len(BAD)

    rest = run(Replay(settings, start=parse_bound("start"), end=parse_bound("end"), output="replay-cli",
                      checkpoint=ckpt, batch_size=32, progress=False, services=services).run())
    assert rest.resumed_at == done
    assert rest.events_read == len(wave1) + len(wave2) + len(BAD) and not ckpt.exists()


def test_replay_applies_forget_requests_in_order(settings_factory, index_snapshot, catalog_products):
    from stream.clients import request_forget
    from stream.live.services import load_services
    from stream.replay.run import Replay, parse_bound
    from tests.stream.ops.test_ops_privacy import _neighbours

    settings = settings_factory()
    y, x = _neighbours(index_snapshot, catalog_products)
    base = int(time.time() * 1000) - 60_000
    run(produce_raw(settings, [keyed(event(1, "kept", "purchase", item=x, ts_ms=base)),
                               keyed(event(2, "gone", "purchase", item=x, ts_ms=base))]))
    run(request_forget(settings, "gone"))
    run(produce_raw(settings, [keyed(event(3, "kept", "view", item=y, ts_ms=base + 1000)),
                               keyed(event(4, "gone", "view", item=y, ts_ms=base + 1000))]))
    # batches of one message: the forget request falls between the purchase and the view
    summary = run(Replay(settings, start=parse_bound("start"), end=parse_bound("end"), output="replay-forget",
                         batch_size=1, progress=False, services=load_services(settings), fresh=True).run())
    # four events and the forget request, which goes to every partition (forget by broadcast)
    assert (summary.events_read, summary.dead_lettered) == (4 + settings.partitions, 0)
    recs = recs_of(run(read_topic(settings, "replay-forget", until=lambda m: len(m) >= 4)))
    items = {r["event_ids"][0]: [i["product_id"] for i in r["items"]] for r in recs}
    assert x not in items["e3"] and x in items["e4"]

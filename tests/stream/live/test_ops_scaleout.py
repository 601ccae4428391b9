"""Scale-out and crashes with real worker processes on the real broker.

Two workers in one consumer group share the partitions; a worker joining or dying triggers a
rebalance that loses no event and keeps every session (the sessions table recovers from its
changelog). A worker killed with SIGKILL mid-stream and restarted leaves nothing missing
(at-least-once), and redelivered events are folded only once.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import orjson

from stream.tools.demo import wait_ready
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

TIMEOUT = 180.0       # generous: two workers load the model on a 2-core CI machine


def _wave(rng, pids, first: int, n: int, users: int) -> list[dict]:
    return [event(i, f"user-{rng.randrange(users)}", rng.choice(["view", "click", "search", "add_to_cart",
                                                                  "purchase"]), item=rng.choice(pids))
            for i in range(first, first + n)]


def _reflected(messages) -> set[str]:
    return {e for r in recs_of(messages) for e in r["event_ids"]}


def _wait_reflected(settings, wanted: set[str]) -> list:
    msgs = run(read_topic(settings, settings.recommendations_topic, until=lambda m: _reflected(m) >= wanted,
                          timeout=TIMEOUT))
    missing = wanted - _reflected(msgs)
    assert not missing, f"{len(missing)} event(s) never reflected in a recommendation"
    return msgs


def _final_states(settings, per_user: dict[str, set[str]]) -> dict[str, dict]:
    """The last state of each user in the sessions changelog, once it reflects all their events."""
    from stream.ops.topics import changelog_topic

    def latest(msgs) -> dict[str, dict]:
        out = {}
        for m in msgs:
            out[m.key.decode()] = orjson.loads(m.value) if m.value is not None else None
        return out

    def done(msgs) -> bool:
        states = latest(msgs)
        return all(states.get(u) and ids <= set(states[u]["seen"]) for u, ids in per_user.items())

    return latest(run(read_topic(settings, changelog_topic(settings), until=done, timeout=60)))


def _by_user(events: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in events:
        out.setdefault(e["user_id"], set()).add(e["event_id"])
    return out


def _check_sessions(settings, events: list[dict]) -> None:
    per_user = _by_user(events)
    states = _final_states(settings, per_user)
    for user, ids in per_user.items():
        state = states[user]
        assert ids <= set(state["seen"]), f"{user}'s session lost events"
        assert sum(state["counts"].values()) == len(ids), f"{user}: an event was folded twice or not at all"


def test_two_workers_share_partitions_and_survive_a_rebalance(settings_factory, worker_factory, catalog_products):
    settings = settings_factory(partitions=4, session_timeout_s=6.0)
    env = {"SHOPSTREAM_SESSION_TIMEOUT_S": "6"}
    rng = random.Random(11)
    pids = [p.id for p in catalog_products]
    a = worker_factory(settings, extra_env=env, name="a")

    wave1 = _wave(rng, pids, 0, 150, 30)
    run(produce_raw(settings, [keyed(e) for e in wave1]))
    _wait_reflected(settings, {e["event_id"] for e in wave1})

    from stream.tools.broker import free_port

    b_settings = settings.replace(web_port=free_port())
    b = worker_factory(b_settings, extra_env=env, name="b")     # joins the group: a rebalance
    wave2 = _wave(rng, pids, 1000, 150, 30)
    run(produce_raw(settings, [keyed(e) for e in wave2]))
    _wait_reflected(settings, {e["event_id"] for e in wave1 + wave2})
    assert "partitions_assigned" in b.log_path.read_text() or b.poll() is None

    os.killpg(a.pid, signal.SIGKILL)                              # dies: b takes every partition
    a.wait()
    wave3 = _wave(rng, pids, 2000, 150, 30)
    run(produce_raw(settings, [keyed(e) for e in wave3]))
    _wait_reflected(settings, {e["event_id"] for e in wave1 + wave2 + wave3})
    wait_ready(b_settings.web_port, b, timeout=TIMEOUT)
    _check_sessions(settings, wave1 + wave2 + wave3)


async def _produce_killing(settings, events: list[dict], kill_at: int, victim, rate: float) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        for n, e in enumerate(events):
            if n == kill_at:
                await producer.flush()
                os.killpg(victim.pid, signal.SIGKILL)
            key, value = keyed(e)
            await producer.send(settings.events_topic, value, key=key)
            await asyncio.sleep(1.0 / rate)
        await producer.flush()
    finally:
        await producer.stop()


def test_kill_9_mid_stream_then_restart_loses_nothing(settings_factory, worker_factory, catalog_products):
    settings = settings_factory(partitions=2)
    rng = random.Random(5)
    events = _wave(rng, [p.id for p in catalog_products], 0, 400, 40)
    worker = worker_factory(settings, name="victim")
    # kill -9 while events stream in and recommendations go out
    run(_produce_killing(settings, events, kill_at=200, victim=worker, rate=100.0))
    worker.wait()
    assert worker.returncode == -signal.SIGKILL
    before = _reflected(run(read_topic(settings, settings.recommendations_topic, until=lambda m: False,
                                       timeout=3)))
    assert before, "the worker was processing when it was killed"
    assert not before & {e["event_id"] for e in events[200:]}, "nothing sent after the kill was processed"
    started = time.monotonic()
    worker_factory(settings, name="restarted")
    msgs = _wait_reflected(settings, {e["event_id"] for e in events})
    assert time.monotonic() - started < TIMEOUT
    assert _reflected(msgs) == {e["event_id"] for e in events}, "only events that were sent"
    _check_sessions(settings, events)

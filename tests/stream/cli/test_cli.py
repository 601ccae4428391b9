"""The command line: one-line errors, produce/tail round trip, and the demo's clean shutdown."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

from tests.kafka_io import event


def _interruptible() -> None:
    """In the child, before exec: Ctrl-C as a terminal delivers it. A shell starts background jobs
    with SIGINT ignored, a child inherits that, and Python then installs no KeyboardInterrupt
    handler: without this the tests fail whenever the suite runs as a background job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shopstream(*args, env=None, input=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "stream", *args], capture_output=True, input=input,
                          env=full_env, timeout=timeout)


@pytest.mark.parametrize("args,env,needle", [
    (["worker", "--partitions", "0"], {}, "--partitions"),
    (["tail", "events"], {"SHOPSTREAM_BATCH_SIZE": "lots"}, "SHOPSTREAM_BATCH_SIZE"),
    (["tail", "events"], {"SHOPSTREAM_SEARCH_BLEND": "2"}, "search_blend"),
    (["tail", "events"], {"SHOPSTREAM_MODEL_THREADS": "-1"}, "model_threads"),
    (["tail", "events"], {"SHOPSTREAM_BUFFER_EVENTS": "100"}, "buffer_events"),
    (["bench", "e2e", "--workers", "0"], {}, "--workers"),
    (["bench", "encoder", "--backend", "onnx"], {}, "'onnx' is not one of"),
    (["dataset", "convert", "--dataset", "online-retail-sample", "--out", "/proc/shopstream-out"], {},
     "No such file or directory: '/proc/shopstream-out'"),
    (["produce", "-", "--partitioner", "fnv1a"], {}, "--partitioner"),
    (["tail", "events"], {"SHOPSTREAM_PARTITIONER": "fnv1a"}, "murmur2, crc32"),
    (["index", "build", "--catalog", "/nonexistent/catalog.jsonl"], {}, "catalogue file not found"),
    (["produce", "-", "--broker", "127.0.0.1:1"], {}, "cannot reach Kafka"),
    (["tail", "events", "--broker", "127.0.0.1:1"], {}, "cannot reach Kafka"),
    (["report", "online", "--broker", "127.0.0.1:1"], {}, "cannot reach Kafka"),
    (["models", "--security-protocol", "SSL", "--ssl-cafile", "/nonexistent/ca.pem"], {}, "ssl_cafile"),
    (["tail", "events"], {"SHOPSTREAM_SECURITY_PROTOCOL": "SSL", "SHOPSTREAM_SSL_CAFILE": __file__}, "do not load"),
    pytest.param(["bench", "index", "--device", "cuda", "--items", "1000"], {}, "no GPU is usable",
                 marks=pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs it")),
    (["no-such-command"], {}, "No such command"),
    (["replay", "--from", "2024-05-01", "--to", "start", "--dry-run"], {}, "comes after --to start"),
    (["tail", "events"], {"SHOPSTREAM_VARIANTS": "control=pooling"}, "SHOPSTREAM_VARIANTS"),
    (["topics", "--check"], {"SHOPSTREAM_ERASURE_DEADLINE_S": "60"}, "erasure_deadline_s"),
    (["train", "--dataset", "online-retail-sample", "--negatives", "inbatch", "--exclude-history", "--out",
      "/nonexistent/model"], {}, "exclude_history goes with --negatives full"),
])
def test_bad_arguments_give_one_line_not_a_traceback(args, env, needle):
    r = shopstream(*args, env=env, input=b"", timeout=90)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err
    assert needle in err
    errors = [ln for ln in err.splitlines() if ln.startswith(("shopstream: error", "Error:"))]
    assert len(errors) == 1 and needle in errors[0], err


def test_a_second_worker_on_a_taken_web_port_says_so_in_one_line():
    """Two workers on one host with the default web port: the second one's error names the port and
    the setting, before it loads anything (no broker needed to see it)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = shopstream("worker", "--web-port", str(port), "--broker", "127.0.0.1:1", timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert f"web port {port} on 127.0.0.1 is in use" in err and "SHOPSTREAM_WEB_PORT" in err


def test_produce_then_tail(settings_factory, catalog_products):
    settings = settings_factory()
    env = {f"SHOPSTREAM_{name.upper()}": str(getattr(settings, name)) for name in
           ("broker", "app_id", "partitions", "events_topic", "recommendations_topic", "dead_letter_topic",
            "catalog_topic")}
    good = orjson.dumps(event(1, "u1", "view", item=catalog_products[0].id))
    bad = b'{"event_id": "x", "type": "teleport"}'
    r = shopstream("produce", "-", env=env, input=good + b"\n" + bad + b"\n")
    assert r.returncode == 0, r.stderr.decode()
    assert b"sent 1 event" in r.stderr and b"rejected 1" in r.stderr and b"unknown_type" in r.stderr
    r = shopstream("tail", settings.events_topic, "--from-beginning", "-n", "1", "--idle", "20", env=env)
    assert r.returncode == 0, r.stderr.decode()
    line = orjson.loads(r.stdout.decode().splitlines()[0])
    assert line["key"] == "u1" and line["value"]["event_id"] == "e1"
    # a one-off command keeps the Kafka client's INFO chatter out of its output; debugging shows it
    assert b"aiokafka" not in r.stderr, r.stderr.decode()
    r = shopstream("--log-level", "DEBUG", "tail", settings.events_topic, "--from-beginning", "-n", "1",
                   "--idle", "20", env=env)
    assert r.returncode == 0 and b"aiokafka" in r.stderr
    # a mistyped topic is an error in one line, and tailing it does not create it
    missing = f"{settings.events_topic}-typo"
    r = shopstream("tail", missing, "--idle", "1", env=env)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert f"topic '{missing}' does not exist" in err
    assert missing not in asyncio.run(_topic_names(settings))


async def _topic_names(settings) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout.split("\n")[1:]
    children: dict[int, list[int]] = {}
    for row in out:
        if row.strip():
            p, pp = map(int, row.split())
            children.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def test_demo_prints_recommendations_and_ctrl_c_leaves_nothing_behind(index_snapshot, tmp_path):
    env = {**os.environ, "SHOPSTREAM_INDEX_PATH": str(index_snapshot), "SHOPSTREAM_ENCODER_BACKEND": "torch",
           "SHOPSTREAM_SESSION_ENCODER": "pooling", "PYTHONUNBUFFERED": "1"}    # the text-space test index
    proc = subprocess.Popen([sys.executable, "-m", "stream", "demo", "--rate", "40", "--data-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=_interruptible)
    lines, procs = [], set()
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            procs |= _descendants(proc.pid)
            if sum("→" in ln for ln in lines) >= 3:
                break
        assert sum("→" in ln for ln in lines) >= 3, "".join(lines[-30:])
        assert procs, "the demo starts broker and worker as child processes"
        # what a new user reads: no library chatter (FAISS's loader, the Kafka client's INFO lines)
        chatter = [ln for ln in lines if "faiss.loader" in ln or " INFO aiokafka" in ln]
        assert not chatter, "".join(chatter)
        os.killpg(proc.pid, signal.SIGINT)      # what Ctrl-C in a terminal does
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    alive = [p for p in procs if os.path.exists(f"/proc/{p}") and
             open(f"/proc/{p}/stat").read().split()[2] != "Z"]
    assert alive == [], f"processes left behind: {alive}"
    assert proc.returncode in (0, 130, -signal.SIGINT)


def test_broker_command_serves_kafka_and_stops_cleanly():
    import re
    import socket

    proc = subprocess.Popen([sys.executable, "-m", "stream", "broker"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_interruptible)
    try:
        line = ""
        deadline = time.monotonic() + 30
        while "listening on" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
        port = int(re.search(r"listening on [\d.]+:(\d+)", line).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        children = _descendants(proc.pid)
        assert children, "tansu runs as a child process"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert not [p for p in children if os.path.exists(f"/proc/{p}")]


def test_a_misspelt_setting_is_named_not_silently_ignored():
    r = shopstream("engine", "choose", env={"SHOPSTREAM_BATCH_SIZ": "64", "SHOPSTREAM_TEST_TEXTS": "x"}, timeout=90)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "SHOPSTREAM_BATCH_SIZ is not a shopstream setting and is ignored (did you mean SHOPSTREAM_BATCH_SIZE?)" in err
    assert "SHOPSTREAM_TEST_TEXTS" not in err                 # read by the tests themselves
    assert err.count("SHOPSTREAM_BATCH_SIZ ") == 1            # once, however often the settings are read

"""A fleet that shares only Kafka and a registry.

Two worker processes, each with its own data folder and working directory (two "hosts"), one
reading the registry over a real HTTP server on localhost, the other on file:// (a third folder,
where `learn` and `index publish` write). Both join from the published index; `learn --once`
announces a candidate both fetch, verify and serve; malformed records on the models topic are
skipped while the promotion after them is followed; a tampered artifact is refused by both and
withdrawn by learn's decide step; a third host started later with only the broker and the
registry URL serves the default model and its index; with the registry gone, the workers keep
serving what they have.
"""
from __future__ import annotations

import re
import time
import urllib.request

import orjson
import pytest

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of
from tests.stream.ops.test_registry import http_registry  # noqa: F401 - the fixture

N_USERS = 60


def purchases(ids, n_users=N_USERS, length=6, first=0):
    out, n = [], first
    for u in range(n_users):
        for k in range(length):
            n += 1
            out.append(event(n, f"shopper-{u}", "purchase", item=ids[(u * 7 + k) % len(ids)]))
    return out


def wait_logs(procs, marks, pattern: str, *, timeout: float = 120.0) -> list[float]:
    """When (time.monotonic()) each worker's log came to hold ``pattern`` (a regex) past its mark."""
    found: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(procs) and time.monotonic() < deadline:
        for n, (proc, mark) in enumerate(zip(procs, marks)):
            if n not in found and re.search(pattern, proc.log_path.read_text(errors="replace")[mark:]):
                found[n] = time.monotonic()
            assert proc.poll() is None, proc.log_path.read_text(errors="replace")[-4000:]
        time.sleep(0.05)
    for n, proc in enumerate(procs):
        assert n in found, (f"{proc.log_path.name}: no {pattern!r} in {timeout:.0f}s:\n"
                            + proc.log_path.read_text(errors="replace")[-4000:])
    return [found[n] for n in range(len(procs))]


def index_sha(served) -> str:
    return orjson.loads((served / "index" / "current.json").read_bytes())["sha256"]


def logs_at(workers) -> list[int]:
    return [p.log_path.stat().st_size for _, p in workers]


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


def ready(port: int) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5).status
    except OSError:
        return 0


@pytest.mark.slow
def test_models_and_indexes_reach_every_host_verified(settings_factory, worker_factory, index_snapshot,
                                                      catalog_products, http_registry, tmp_path,  # noqa: F811
                                                      monkeypatch, capsys):
    from stream.cli import main
    from stream.ops.fleet import publish_index
    from stream.ops.model_log import announce, read_model_log
    from stream.ops.models import ModelRecord, now_iso
    from stream.ops.promotion import decide
    from stream.ops.registry import Registry
    from stream.tools.demo import wait_ready

    served, http_url, http_server = http_registry
    file_url = f"file://{served}"
    hosts = [tmp_path / name for name in ("host-a", "host-b", "host-c", "learn")]
    for h in hosts:
        (h / "cwd").mkdir(parents=True)
    base = settings_factory(index_path=None, registry=file_url, data_dir=hosts[3], candidate_share=0.5,
                            learn_epochs=1, learn_min_users=10, learn_margin=-1.0)
    publish_index(base, index_snapshot)
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(b"".join(orjson.dumps(p.to_dict()) + b"\n" for p in catalog_products))
    ids = [p.id for p in catalog_products]

    # -- two hosts join with the published index: one over HTTP, one on file:// ---------------------
    workers, t_start = [], time.monotonic()
    for host, url in ((hosts[0], http_url), (hosts[1], file_url)):
        s = base.replace(data_dir=host / "data", registry=url, web_port=_port())
        workers.append((s, worker_factory(s, extra_env={"SHOPSTREAM_REGISTRY": url}, cwd=host / "cwd",
                                          name=host.name, wait=False)))
    for s, proc in workers:
        wait_ready(s.web_port, proc, timeout=180)
    start_s = time.monotonic() - t_start                # both started at once: start -> both ready
    for s, proc in workers:
        assert "joining the fleet with the published index" in proc.log_path.read_text()
        assert not (s.data_dir / "index").exists()
    first = purchases(ids)
    run(produce_raw(base, [keyed(e) for e in first]))
    want = {e["event_id"] for e in first}
    run(read_topic(base, base.recommendations_topic, timeout=120,
                   until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= want))

    # -- learn --once announces a candidate in the registry; both hosts fetch, verify, serve it ------
    for name in ("events_topic", "recommendations_topic", "models_topic", "catalog_topic", "dead_letter_topic",
                 "app_id", "partitions", "data_dir", "encoder_backend", "session_encoder", "registry", "candidate_share",
                 "learn_epochs", "learn_min_users", "learn_margin"):
        monkeypatch.setenv(f"SHOPSTREAM_{name.upper()}", str(getattr(base, name)))
    procs, marks = [p for _, p in workers], logs_at(workers)
    joined = [metric(s.web_port, "shopstream_registry_fetched_bytes_total") for s, _ in workers]
    assert joined[0] == joined[1] == (served / "index" / f"{index_sha(served)}.tar").stat().st_size
    main(["learn", "--once", "--broker", base.broker, "--catalog", str(catalog), "--json"])
    summary = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])["learn"]
    version = summary["announced"]
    assert version and summary["artifact_sha256"] and summary["artifact"] == f"model/{summary['artifact_sha256']}.tar"
    wait_logs(procs, marks, rf"now serving .*candidate={re.escape(version)}")
    seen = [float(re.search(rf"now serving .*candidate={re.escape(version)}.*, ([0-9.]+)s after the record",
                            p.log_path.read_text()[m:]).group(1)) for p, m in zip(procs, marks)]
    cand = run(read_model_log(base))[0][version]
    assert (cand.artifact, cand.index_sha256) == (summary["artifact"], summary["index_sha256"])
    fetched = [metric(s.web_port, "shopstream_registry_fetched_bytes_total") for s, _ in workers]
    sizes = sum((served / k).stat().st_size for k in (cand.artifact, cand.index))
    assert fetched[0] - joined[0] == sizes == fetched[1] - joined[1], (fetched, joined, sizes)
    second = purchases(ids, first=10_000)
    run(produce_raw(base, [keyed(e) for e in second]))
    late = {e["event_id"] for e in second}
    recs = recs_of(run(read_topic(base, base.recommendations_topic, timeout=120,
                                  until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= late)))
    by_cand = [r for r in recs if r["session_model_version"] == version and set(r["event_ids"]) & late]
    assert by_cand and len(by_cand) < len([r for r in recs if set(r["event_ids"]) & late])
    with capsys.disabled():                 # the figures of docs/benchmarks.md, "Fleet"
        print(f"\nfleet: announce -> serving the candidate: {seen[0]:.2f}s (HTTP) / {seen[1]:.2f}s (file://); "
              f"candidate fetched {fetched[0] - joined[0]:.0f} / {fetched[1] - joined[1]:.0f} bytes "
              f"(its model + index tars: {sizes}); at joining {joined[0]:.0f} / {joined[1]:.0f} bytes; "
              f"same run, start -> ready of both workers (joining included): {start_s:.1f}s")

    # -- malformed records on the models topic, then the promotion: followed, never stopped --------
    marks = logs_at(workers)
    junk = [(b"v-list", orjson.dumps({"version": ["a"], "state": "default", "artifact": ""})),
            (b"v-text", b"not json at all"), (b"v-none", orjson.dumps({"state": "default"})),
            (b"v-future", ModelRecord(version="v-future", state="default", artifact="",
                                      decided_at="9999-12-31T00:00:00Z").to_bytes())]
    run(produce_raw(base, junk, topic=base.models_topic))
    run(announce(base, cand.moved_to("default", "promoted by the test operator")))
    wait_logs(procs, marks, rf"now serving control={re.escape(version)} \(100%\)")
    for (s, p), m in zip(workers, marks):
        assert metric(s.web_port, 'shopstream_control_records_skipped_total{kind="models"') == 4
        assert p.log_path.read_text()[m:].count("skipped an invalid record") == 4

    # a third host joins now, with only the broker and the registry URL (checked below)
    third = settings_factory(index_path=None, session_encoder="default", registry=http_url,
                             data_dir=hosts[2] / "data", models_topic=base.models_topic,
                             events_topic=base.events_topic, catalog_topic=base.catalog_topic)
    p3 = worker_factory(third, extra_env={"SHOPSTREAM_REGISTRY": http_url}, cwd=hosts[2] / "cwd", name="host-c",
                        wait=False)

    # -- a tampered artifact: refused by both hosts, withdrawn by learn's decide ---------------------
    model_dir = hosts[3] / "registry" / version / "model"
    (model_dir / "NOTE.txt").write_text("a different artifact")
    bad = Registry(file_url, tmp_path / "publisher-cache").publish(model_dir, "model", "tampered")
    (model_dir / "NOTE.txt").unlink()
    raw = bytearray((served / bad.key).read_bytes())
    raw[-2048] ^= 0x01
    (served / bad.key).write_bytes(bytes(raw))
    tampered = ModelRecord(version="session-tampered", state="candidate", artifact=bad.key, artifact_sha256=bad.sha256,
                           index=cand.index, index_sha256=cand.index_sha256, share=0.5, decided_at=now_iso())
    marks = logs_at(workers)
    run(announce(base, tampered))
    wait_logs(procs, marks, r"cannot serve default=.* candidate=session-tampered.*hash to sha256")
    for s, _ in workers:
        assert metric(s.web_port, 'shopstream_registry_refused_total{reason="sha256"}') == 1
        assert ready(s.web_port) == 200
    decided = run(decide(base))
    assert [(d.version, d.state) for d in decided] == [("session-tampered", "withdrawn")]
    assert "hash to sha256" in decided[0].reason
    main(["models", "--broker", base.broker])          # returns (exit 0): every record, the invalid ones too
    listing = capsys.readouterr().out
    assert re.search(rf"{re.escape(version)}\s+default", listing) and re.search(r"session-tampered\s+withdrawn", listing)
    assert len(re.findall(r"\s+invalid\s+partition 0 offset \d+: ", listing)) == 4 and "in the future" in listing

    # -- the third host, started after the promotion with only the broker and the registry URL -------
    wait_ready(third.web_port, p3, timeout=180)
    assert f"joining the fleet with the default model {version}" in p3.log_path.read_text()
    news = [event(20_000 + n, f"newcomer-{n}", item=ids[n]) for n in range(20)]
    run(produce_raw(base, [keyed(e) for e in news]))
    want = {e["event_id"] for e in news}
    recs3 = recs_of(run(read_topic(third, third.recommendations_topic, timeout=120,
                                   until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= want)))
    mine = [r for r in recs3 if set(r["event_ids"]) & want]
    assert {i for r in mine for i in r["event_ids"]} >= want
    assert {r["session_model_version"] for r in mine} == {version}

    # -- the registry gone: a new candidate is refused, every host keeps serving what it has ---------
    from stream.ops.registry import artifact_key

    http_server.shutdown()                  # host A's registry is unreachable, host B's lacks the artifact
    http_server.server_close()
    # a record naming a folder on the hosts, not a registry address: refused, withdrawn
    marks = logs_at(workers)
    run(announce(base, ModelRecord(version="session-path", state="candidate", artifact=str(model_dir),
                                   share=0.5, decided_at=now_iso())))
    wait_logs(procs, marks, r"candidate=session-path.*not an address in the registry")
    assert [(d.version, d.state) for d in run(decide(base))] == [("session-path", "withdrawn")]

    gone = "3" * 64
    marks = logs_at(workers)
    run(announce(base, ModelRecord(version="session-gone", state="candidate", artifact=artifact_key("model", gone),
                                   artifact_sha256=gone, share=0.5, decided_at=now_iso())))
    wait_logs(procs, marks, r"candidate=session-gone.*cannot fetch")
    assert "ClientConnectorError" in procs[0].log_path.read_text()[marks[0]:]
    for s, _ in workers:
        assert ready(s.web_port) == 200
    last = [event(30_000 + n, f"shopper-{n}", item=ids[n]) for n in range(20)]
    run(produce_raw(base, [keyed(e) for e in last]))
    want = {e["event_id"] for e in last}
    recs = recs_of(run(read_topic(base, base.recommendations_topic, timeout=120,
                                  until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= want)))
    assert {r["session_model_version"] for r in recs if set(r["event_ids"]) & want} == {version}
    decided = run(decide(base))
    assert [(d.version, d.state) for d in decided] == [("session-gone", "withdrawn")]


def _port() -> int:
    from stream.tools.broker import free_port

    return free_port()

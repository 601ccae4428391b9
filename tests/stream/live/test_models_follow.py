"""The worker half of safe promotion: models announced on the models topic are served as variants,
hot-swapped together with their index while events stream, promoted and withdrawn."""
from __future__ import annotations

import time

import orjson
import pytest

from stream.core.online_stats import HitRate, compare
from stream.ops.models import ModelRecord
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of


@pytest.fixture(scope="module")
def tower(tmp_path_factory, text_encoder, catalog_products):
    """A seeded session-encoder artifact with an item tower, and the index of its product space."""
    import torch

    from engines.session_model import save_artifact
    from engines.session_network import ModelConfig, SessionTransformer
    from stream.live.services import ProductEncoder, load_session_model
    from stream.settings import Settings
    from stream.tools.bootstrap import build_default_index

    torch.manual_seed(0)
    model = SessionTransformer(ModelConfig(d_model=32, layers=1, heads=2, ffn=64, item_hidden=64))
    for name, p in model.named_parameters():
        if "fc2" in name:
            torch.nn.init.normal_(p, std=0.05)
    root = tmp_path_factory.mktemp("tower")
    art = save_artifact(model, root / "artifact", text_model_version=text_encoder.model_version, record={},
                        kinds_seen=["view", "add_to_cart", "purchase"], uses_time=False)
    catalog = root / "catalog.jsonl"
    catalog.write_text("".join(orjson.dumps(p.to_dict()).decode() + "\n" for p in catalog_products))
    session = load_session_model(str(art), text_encoder.dim)
    index = build_default_index(Settings(session_encoder=art, encoder_backend="torch"), catalog=catalog,
                                out=root / "index", progress=False)
    version = ProductEncoder(text_encoder, session).tower.model_version
    return art, index, version


def record(version, state, art="", index="", share=0.0, reason="") -> tuple[bytes, bytes]:
    rec = ModelRecord(version=version, state=state, artifact=str(art), index=str(index), share=share,
                      reason=reason, decided_at=_now_us())
    return version.encode(), rec.to_bytes()


def _now_us() -> str:
    """decided_at with microseconds: records written in one test follow each other in order."""
    from datetime import datetime, timezone

    time.sleep(0.001)
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def served_models(services):
    return {a.name: (a.recommender.session_encoder.model_version, round(a.weight, 3))
            for a in services.variants.arms}


def test_candidate_served_then_promoted_or_withdrawn_by_synthetic_outcomes(index_snapshot, tower, tmp_path):
    from stream.live.model_follow import ModelFollower
    from stream.live.services import load_services
    from stream.settings import Settings

    art, index, version = tower
    settings = Settings(index_path=index_snapshot, encoder_backend="torch", data_dir=tmp_path, session_encoder="pooling")
    services = load_services(settings)
    base = services.recommender.session_encoder.model_version
    follower = ModelFollower(settings, services)
    assert served_models(services) == {"default": (base, 1.0)}

    follower.apply([record(version, "candidate", art, index, share=0.2)])
    assert served_models(services) == {"control": (base, 0.8), "candidate": (version, 0.2)}
    tower_index = services.variants.arms[1].recommender.index
    assert tower_index is not services.index and tower_index.current.model_version.endswith(version)

    # synthetic outcomes: the candidate is significantly better -> learn promotes it (a default record)
    verdict = compare(HitRate(300, 3000), HitRate(420, 3000)).verdict
    assert verdict == "better"
    follower.apply([record(version, "default", art, index, reason=f"online: {verdict}")])
    assert served_models(services) == {"control": (version, 1.0)}

    # a next candidate significantly worse -> withdrawn: the worker stops serving it
    follower.apply([record(base, "candidate", share=0.5)])
    assert served_models(services) == {"control": (version, 0.5), "candidate": (base, 0.5)}
    verdict = compare(HitRate(400, 3000), HitRate(250, 3000)).verdict
    assert verdict == "worse"
    follower.apply([record(base, "withdrawn", reason=f"online: {verdict}")])
    assert served_models(services) == {"control": (version, 1.0)}

    # a model whose index was built for another product space is refused; the worker keeps serving
    assert not follower.apply([record("session-tf-other", "candidate", art, index_snapshot, share=0.5)])
    assert served_models(services) == {"control": (version, 1.0)}


def test_announced_model_hot_swapped_with_its_index_while_events_stream(settings_factory, worker_factory,
                                                                         tower, catalog_products):
    """Events keep flowing while a candidate is announced: every event is reflected (none lost),
    the candidate serves its share from then on, and a click on what it served is its hit."""
    art, index, version = tower
    settings = settings_factory(batch_wait_ms=10)
    worker_factory(settings)
    users = [f"shopper-{i}" for i in range(40)]
    first = [event(i, users[i % 40], item=catalog_products[i % 300].id) for i in range(200)]
    run(produce_raw(settings, [keyed(e) for e in first]))
    ids = {e["event_id"] for e in first}
    # the first wave is served before any candidate exists (however slow the machine)
    run(read_topic(settings, settings.recommendations_topic, timeout=120,
                   until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= ids))
    run(produce_raw(settings, [record(version, "candidate", art, index, share=0.5)], topic=settings.models_topic))
    second = []
    for n in range(200, 600):                     # streamed while the worker loads and swaps
        second.append(event(n, users[n % 40], item=catalog_products[n % 300].id))
        if n % 50 == 49:
            run(produce_raw(settings, [keyed(e) for e in second[-50:]]))
            time.sleep(0.3)
    ids |= {e["event_id"] for e in second}
    msgs = run(read_topic(settings, settings.recommendations_topic, timeout=120,
                          until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= ids))
    recs = recs_of(msgs)
    assert {i for r in recs for i in r["event_ids"]} >= ids, "no event lost during the swap"
    assert {r["variant"] for r in recs[:5]} == {"default"}
    late = [r for r in recs if int(r["event_ids"][-1][1:]) >= 550]
    by_variant = {r["variant"]: r for r in late}
    assert set(by_variant) == {"control", "candidate"}
    assert by_variant["candidate"]["session_model_version"] == version
    assert by_variant["control"]["session_model_version"] != version

    # a click on the candidate's first product, now: a hit for the candidate on the feedback topic
    rec = by_variant["candidate"]
    last = max((r for r in recs if r["user_id"] == rec["user_id"]), key=lambda r: int(r["event_ids"][-1][1:]))
    click = event(10_000, last["user_id"], "click", item=last["items"][0]["product_id"])
    run(produce_raw(settings, [keyed(click)]))
    hits = run(read_topic(settings, settings.resolved_feedback_topic, timeout=60,
                          until=lambda m: any(orjson.loads(x.value)["event_id"] == "e10000" for x in m)))
    hit = next(h for h in (orjson.loads(x.value) for x in hits) if h["event_id"] == "e10000")
    assert (hit["recommendation_id"], hit["variant"], hit["session_model_version"], hit["rank"]) == (
        last["recommendation_id"], last["variant"], last["session_model_version"], 1)


def test_a_registry_that_cannot_be_reached_is_tried_again_until_it_answers(index_snapshot, tower, tmp_path):
    """An unreachable registry is no verdict on the model: the worker keeps serving what it has,
    and tries again (the follower's loop does so on ``retry_at``) until the artifacts arrive."""
    import functools
    import http.server
    import threading

    from stream.live.model_follow import ModelFollower
    from stream.live.services import load_services
    from stream.ops.registry import Registry
    from stream.settings import Settings
    from stream.tools.broker import free_port

    art, index, version = tower
    folder = tmp_path / "registry"
    publisher = Registry(f"file://{folder}", tmp_path / "publisher-cache")
    m, i = publisher.publish(art, "model", version), publisher.publish(index, "index", version)
    port = free_port()
    settings = Settings(index_path=index_snapshot, encoder_backend="torch", data_dir=tmp_path, session_encoder="pooling",
                        registry=f"http://127.0.0.1:{port}/")
    services = load_services(settings)
    base = services.recommender.session_encoder.model_version
    follower = ModelFollower(settings, services)
    rec = ModelRecord(version=version, state="candidate", artifact=m.key, artifact_sha256=m.sha256, index=i.key,
                      index_sha256=i.sha256, share=0.5, decided_at=_now_us())
    assert not follower.apply([(version.encode(), rec.to_bytes(), 0, 0)])
    assert follower.retry_at is not None and "127.0.0.1" in follower.refused[version]
    assert served_models(services) == {"default": (base, 1.0)}

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert follower.apply([])                                   # the retry: fetched, verified, served
    finally:
        server.shutdown()
        server.server_close()
    assert served_models(services) == {"control": (base, 0.5), "candidate": (version, 0.5)}
    assert follower.retry_at is None

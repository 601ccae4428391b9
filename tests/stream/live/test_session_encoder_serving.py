"""A trained session encoder in the worker: its item tower defines the index's product space."""
from __future__ import annotations

import numpy as np
import pytest

from index import SnapshotError, load_snapshot
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of


@pytest.fixture(scope="module")
def session_artifact(tmp_path_factory, text_encoder):
    """A session encoder artifact whose item tower really moves product vectors (seeded weights)."""
    import torch

    from engines.session_model import save_artifact
    from engines.session_network import ModelConfig, SessionTransformer

    torch.manual_seed(0)
    model = SessionTransformer(ModelConfig(d_model=32, layers=1, heads=2, ffn=64, item_hidden=64))
    for name, p in model.named_parameters():
        if "fc2" in name:
            torch.nn.init.normal_(p, std=0.05)
    return save_artifact(model, tmp_path_factory.mktemp("session") / "artifact",
                         text_model_version=text_encoder.model_version, record={},
                         kinds_seen=["view", "add_to_cart", "purchase"], uses_time=False)


def test_index_built_for_the_item_tower_and_refused_without_it(settings_factory, session_artifact,
                                                              text_encoder, tmp_path):
    from stream.live.services import ProductEncoder, load_index, load_product_encoder
    from stream.tools.bootstrap import build_default_index

    settings = settings_factory(session_encoder=session_artifact, index_path=tmp_path / "tower-index")
    products = load_product_encoder(settings, text_encoder)
    assert "+items:" in products.model_version
    plain = text_encoder.encode(["red heart t-light holder"])
    towered = products.encode(["red heart t-light holder"])
    assert np.allclose(np.linalg.norm(towered, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(plain, towered, atol=1e-3), "the item tower changes product vectors"

    from index import default_catalog_path, load_catalog

    small = tmp_path / "catalog.jsonl"
    small.write_text("".join(__import__("orjson").dumps(p.to_dict()).decode() + "\n"
                             for p in load_catalog(default_catalog_path())[:300]))
    build_default_index(settings, catalog=small, progress=False)
    index = load_index(settings, products)
    assert index.model_version == products.model_version
    with pytest.raises(SnapshotError):
        load_index(settings, ProductEncoder(text_encoder))      # a text-space worker refuses it


def test_worker_serves_with_the_trained_session_encoder(settings_factory, worker_factory, session_artifact,
                                                        tmp_path, catalog_products):
    from stream.tools.bootstrap import build_default_index

    settings = settings_factory(session_encoder=session_artifact, index_path=tmp_path / "tower-index")
    small = tmp_path / "catalog.jsonl"
    small.write_text("".join(__import__("orjson").dumps(p.to_dict()).decode() + "\n" for p in catalog_products))
    build_default_index(settings, catalog=small, progress=False)
    manifest = __import__("json").loads((session_artifact / "manifest.json").read_text())
    worker_factory(settings, extra_env={"SHOPSTREAM_SESSION_ENCODER": str(session_artifact)})
    evs = [event(1, "u-t", "view", item=catalog_products[5].id),
           event(2, "u-t", "search", query="christmas lights", results=[p.id for p in catalog_products[:5]])]
    run(produce_raw(settings, [keyed(e) for e in evs]))
    msgs = run(read_topic(settings, settings.recommendations_topic,
                          until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= {"e1", "e2"}))
    recs = recs_of(msgs)
    assert {i for r in recs for i in r["event_ids"]} == {"e1", "e2"}
    assert all(r["session_model_version"].startswith(manifest["model_version"]) for r in recs)
    assert all(len(r["items"]) == settings.top_k for r in recs)
    assert load_snapshot(settings.resolved_index_path).model_version.endswith(manifest["model_version"])

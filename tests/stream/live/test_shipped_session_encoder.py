"""The trained session encoder that ships in the package serves by default, with the index built
in its item space; a product added after training gets its vector from its title alone."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of


def shipped_manifest() -> dict:
    from stream.live.services import SHIPPED_SESSION_ENCODER

    return json.loads((SHIPPED_SESSION_ENCODER / "manifest.json").read_text())


def test_the_default_is_the_shipped_model_and_pooling_is_a_choice(tmp_path):
    from stream.errors import ConfigError
    from stream.live.services import SHIPPED_SESSION_ENCODER, session_encoder_path
    from stream.settings import Settings

    assert Settings().session_encoder == "default"
    assert session_encoder_path(Settings()) == SHIPPED_SESSION_ENCODER
    assert session_encoder_path(Settings(session_encoder="pooling")) is None
    with pytest.raises(ConfigError, match="no session encoder artifact"):
        session_encoder_path(Settings(session_encoder=str(tmp_path / "nothing")))
    m = shipped_manifest()
    assert m["trained_on"]["name"] == "online-retail"
    assert m["config"]["item_ids"] == m["trained_on"]["items"], "an id vector for every product it was trained on"
    assert m["train_config"]["exclude_history"] and m["refit"]["epochs"] == m["best_epoch"]
    assert {"fp32", "fp16", "int8"} <= set(m["ranking_check"]) and m["ranking_check"]["fold"] == "valid"
    size = sum(p.stat().st_size for p in SHIPPED_SESSION_ENCODER.iterdir())
    assert size < 10 * 2**20, f"the shipped artifact grew to {size / 2**20:.1f} MiB"
    big = [p.name for p in SHIPPED_SESSION_ENCODER.iterdir() if p.stat().st_size > 3 * 2**20]
    assert not big, f"files over 3 MiB in the repository: {big}"
    assert m["id_vectors_fp16"]["rows"] == m["config"]["item_ids"]      # the id vectors ship in fp16


def test_a_product_added_after_training_gets_its_vector_from_its_title(text_encoder, catalog_products):
    from stream.live.services import load_product_encoder
    from stream.settings import Settings

    products = load_product_encoder(Settings(), text_encoder)
    title = "Snowflake Glass Tealight Holder With Silver Star"     # in no catalogue the model saw
    assert title.lower() not in {p.title.lower() for p in catalog_products}
    new = products.encode([title])[0]
    assert np.linalg.norm(new) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(new, products.tower.item_vectors(text_encoder.encode([title]))[0], atol=1e-6)
    known = products.encode([p.text for p in catalog_products])
    nearest = [catalog_products[i].title.lower() for i in np.argsort(-(known @ new))[:10]]
    assert sum(any(w in t for w in ("t-light", "tealight", "snowflake", "holder", "star")) for t in nearest) >= 5, nearest


def test_default_worker_serves_the_shipped_model(settings_factory, worker_factory, catalog_products, tmp_path):
    from index import load_snapshot
    from stream.tools.bootstrap import build_default_index

    settings = settings_factory(session_encoder="default", index_path=tmp_path / "shipped-index")
    small = tmp_path / "catalog.jsonl"
    small.write_text("".join(__import__("orjson").dumps(p.to_dict()).decode() + "\n" for p in catalog_products))
    build_default_index(settings, catalog=small, progress=False)
    version = shipped_manifest()["model_version"]
    assert load_snapshot(settings.resolved_index_path).model_version.endswith(f"+items:{version}")
    worker_factory(settings)
    evs = [event(1, "u-s", "view", item=catalog_products[3].id), event(2, "u-s", "add_to_cart", item=catalog_products[9].id)]
    run(produce_raw(settings, [keyed(e) for e in evs]))
    msgs = run(read_topic(settings, settings.recommendations_topic,
                          until=lambda m: {i for r in recs_of(m) for i in r["event_ids"]} >= {"e1", "e2"}))
    recs = recs_of(msgs)
    assert recs and all(r["session_model_version"].startswith(version) for r in recs), recs
    assert all(len(r["items"]) == settings.top_k for r in recs)

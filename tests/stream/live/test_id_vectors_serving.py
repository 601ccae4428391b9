"""A model with learned id vectors serves them: the index holds each trained product's id vector,
and a product added later through the catalogue topic serves from its title (the model's title path).

A tiny id + title model is trained in the test (seconds) on the shipped Online Retail sample; the
index is built by the same step as ``shopstream index build``; a real worker serves it on the
real broker, and the scores it publishes are checked against the model's own vectors.
"""
from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from index import Product, load_snapshot
from stream.clients import push_catalog
from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw, read_topic, recs_of

SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[3] / "stream" / "data" / "online_retail_sample.csv.gz"
NEW = Product(id="NEW-LANTERN-1", title="WHITE METAL LANTERN WITH HEART CANDLE HOLDER")


@pytest.fixture(scope="module")
def id_model(tmp_path_factory, text_encoder):
    """(artifact, data, title vectors): 60 products, an item tower and an id vector per product."""
    import torch

    from engines.session_model import save_artifact
    from learn.data import load_online_retail, most_popular_slice
    from learn.split import leave_one_out
    from learn.train import TrainConfig, train

    torch.set_num_threads(1)
    data = most_popular_slice(load_online_retail(SAMPLE), 60, min_length=3, max_users=300)
    vecs = text_encoder.encode(data.texts)
    cfg = TrainConfig(d_model=32, layers=1, heads=2, ffn=64, item_hidden=64, id_embeddings=True, batch_size=64,
                      lr=1e-2, epochs=2, patience=2, seed=0, threads=1)
    result = train(data, vecs, leave_one_out(data), cfg, progress=False)
    art = save_artifact(result.model, tmp_path_factory.mktemp("idmodel") / "artifact",
                        text_model_version=text_encoder.model_version, record={},
                        kinds_seen=data.kinds_seen(), uses_time=data.has_clock(), item_ids=data.item_ids)
    return art, data, vecs


def _catalog_file(path, data) -> None:
    path.write_text("".join(orjson.dumps({"id": pid, "title": t}).decode() + "\n"
                            for pid, t in zip(data.item_ids, data.texts[:data.n_items])))


def test_catalogue_updates_carry_id_vectors_and_titles_for_new_products(id_model, settings_factory, text_encoder,
                                                                        tmp_path):
    """The path a catalogue update, a hot swap's re-applied updates and a models-topic catch-up all
    take (``prepare_updates`` with the product encoder): known ids get their id vector, new ones
    their title's; an index of titles alone is another product space and is refused."""
    from engines.session_model import load_session_encoder
    from index import ItemIndex, SnapshotError, build_index, save_snapshot
    from stream.core.catalog import CatalogUpdate, apply_updates
    from stream.live.services import ProductEncoder, load_index, load_product_encoder

    art, data, vecs = id_model
    settings = settings_factory(session_encoder=art, index_path=tmp_path / "ids-index")
    products = load_product_encoder(settings, text_encoder)
    enc = load_session_encoder(art, backend="torch", precision="fp32")
    assert products.tower is not None and products.model_version.endswith(enc.items_version)
    index = ItemIndex(products.dim, model_version=products.model_version)
    known = Product(id=data.item_ids[3], title=data.texts[3])
    apply_updates(index, [CatalogUpdate(0, 0, known.id, known), CatalogUpdate(0, 1, NEW.id, NEW)], products.encode)
    got = index.vectors_of([known.id, NEW.id])
    assert np.allclose(got[0], enc.item_vectors(vecs[3:4], item_ids=[known.id])[0], atol=1e-5)
    assert not np.allclose(got[0], enc.item_vectors(vecs[3:4])[0], atol=1e-3), "the id vector moves the product"
    assert np.allclose(got[1], enc.item_vectors(text_encoder.encode([NEW.text]))[0], atol=1e-5)

    plain = build_index([known], text_encoder.encode, dim=text_encoder.dim, model_version=text_encoder.model_version)
    save_snapshot(plain, settings.resolved_index_path)
    with pytest.raises(SnapshotError):
        load_index(settings, products)              # built from titles alone: refused
    assert ProductEncoder(text_encoder).model_version != products.model_version


def test_worker_recommends_through_id_vectors_and_a_new_products_title(id_model, settings_factory, worker_factory,
                                                                       text_encoder, tmp_path):
    from engines.session import SessionSequence
    from engines.session_model import load_session_encoder
    from stream.tools.bootstrap import build_default_index

    art, data, vecs = id_model
    n = data.n_items
    settings = settings_factory(session_encoder=art, index_path=tmp_path / "ids-index", top_k=n + 5)
    catalog = tmp_path / "catalog.jsonl"
    _catalog_file(catalog, data)
    build_default_index(settings, catalog=catalog, progress=False)        # what `shopstream index build` runs
    enc = load_session_encoder(art, backend="torch", precision="fp32")
    ids = list(data.item_ids)
    snap = load_snapshot(settings.resolved_index_path)
    rows = snap.vectors_of(ids)
    id_space = enc.item_vectors(vecs[:n], item_ids=ids)
    titles_only = enc.item_vectors(vecs[:n])
    assert np.allclose(rows, id_space, atol=1e-5), "each trained product's index row is its id vector"
    assert np.abs(rows - titles_only).max() > 1e-2

    worker_factory(settings, extra_env={"SHOPSTREAM_SESSION_ENCODER": str(art), "SHOPSTREAM_SESSION_BACKEND": "torch",
                                        "SHOPSTREAM_TOP_K": str(n + 5)})
    run(push_catalog(settings, [NEW]))               # live: the worker embeds it with the model's title path
    seen = ids[0]
    new_vec = enc.item_vectors(text_encoder.encode([NEW.text]))[0]
    rec, ts, k = None, 0, 0
    deadline = time.monotonic() + 90
    while rec is None:                               # fresh shoppers until the new product is served
        if time.monotonic() > deadline:
            raise AssertionError("the product added through the catalogue topic was never recommended")
        k += 1
        ev = event(k, f"id-shopper-{k}", "view", item=seen)
        run(produce_raw(settings, [keyed(ev)]))
        msgs = run(read_topic(settings, settings.recommendations_topic,
                              until=lambda m, e=ev["event_id"]: any(e in r["event_ids"] for r in recs_of(m))))
        got = next(r for r in recs_of(msgs) if ev["event_id"] in r["event_ids"])
        if NEW.id in {i["product_id"] for i in got["items"]}:
            rec, ts = got, ev["ts"] / 1000.0
        else:
            time.sleep(0.5)
    user = enc.embed([SessionSequence(rows[:1], ["view"], np.array([ts]))], [ts])[0]
    scores = {i["product_id"]: i["score"] for i in rec["items"]}
    trained = [p for p in ids[1:] if p in scores]
    assert len(trained) >= n - 5, "the whole small catalogue is ranked"
    want = {p: float(user @ id_space[ids.index(p)]) for p in trained}
    assert all(abs(scores[p] - want[p]) < 1e-4 for p in trained), "trained products served through their id vectors"
    assert max(abs(scores[p] - float(user @ titles_only[ids.index(p)])) for p in trained) > 1e-3
    assert abs(scores[NEW.id] - float(user @ new_vec)) < 1e-4, "the new product served through its title vector"

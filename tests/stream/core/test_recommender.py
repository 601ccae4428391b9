"""The batch recommender with the real model and a real FAISS index (no broker)."""
from __future__ import annotations

import numpy as np
import pytest

from engines import PoolingSessionEncoder, QueryEmbeddingCache
from index import load_snapshot
from stream.core import session_state as ss
from stream.core.recommender import IndexHolder, Recommender, UserBatch
from stream.core.schema import Event
from stream.core.session_state import SessionLimits


@pytest.fixture(scope="module")
def recommender(index_snapshot, text_encoder):
    index = load_snapshot(index_snapshot)
    return Recommender(index=IndexHolder(index), queries=QueryEmbeddingCache(text_encoder),
                       session_encoder=PoolingSessionEncoder(dim=text_encoder.dim), top_k=10)


def fold_all(events, limits=SessionLimits()):
    s = None
    for e in events:
        s = ss.fold(s, e, limits)
    return s


def ev(n, etype, item=None, query=None, results=None, user="u1", ts=1_700_000_000.0):
    return Event(f"e{n}", etype, user, "s1", ts + n, item, query, results)


def title_of(rec, recommender, pid):
    return recommender.index.current.products[pid].title.lower()


def test_similar_products_and_exclusions(recommender, catalog_products):
    heart = next(p for p in catalog_products if "T-Light Holder" in p.title and "Heart" in p.title)
    events = [ev(1, "view", heart.id), ev(2, "add_to_cart", heart.id), ev(3, "purchase", heart.id)]
    rec = recommender.recommend([UserBatch("u1", fold_all(events), events)])[0]
    ids = [i["product_id"] for i in rec["items"]]
    assert heart.id not in ids and len(ids) == 10
    scores = [i["score"] for i in rec["items"]]
    assert scores == sorted(scores, reverse=True)
    # the nearest products of a heart t-light holder share words with it
    top_titles = " ".join(recommender.index.current.products[p].title.lower() for p in ids[:5])
    assert "holder" in top_titles or "heart" in top_titles or "t-light" in top_titles
    assert rec["event_ids"] == ["e1", "e2", "e3"]
    assert rec["index_version"] == recommender.index.current.version


def test_one_recommendation_per_user_per_batch(recommender, catalog_products):
    a, b = catalog_products[10].id, catalog_products[20].id
    e1 = [ev(1, "view", a, user="u1"), ev(2, "click", b, user="u1")]
    e2 = [ev(3, "view", b, user="u2")]
    recs = recommender.recommend([UserBatch("u1", fold_all(e1), e1), UserBatch("u2", fold_all(e2), e2)])
    assert [r["user_id"] for r in recs] == ["u1", "u2"]
    assert recs[0]["event_ids"] == ["e1", "e2"] and recs[1]["event_ids"] == ["e3"]


def test_search_results_are_reranked_for_the_shopper(recommender, catalog_products):
    candles = [p for p in catalog_products if "candle" in p.title.lower()][:3]
    others = [p for p in catalog_products if "candle" not in p.title.lower() and "bag" in p.title.lower()][:5]
    assert len(candles) >= 2 and len(others) >= 3
    history = [ev(i, "view", p.id) for i, p in enumerate(candles)]
    results = tuple(p.id for p in others) + tuple(p.id for p in candles[:1]) + ("UNKNOWN-ID",)
    search = ev(10, "search", query="gift", results=results)
    events = history + [search]
    rec = recommender.recommend([UserBatch("u1", fold_all(events), events)])[0]
    reranked = [i["product_id"] for i in rec["search"]["items"]]
    assert sorted(reranked) == sorted(results), "the re-ranking is a permutation of the storefront's results"
    # the candle the shopper cares about moves up from second-to-last place
    assert reranked.index(candles[0].id) < results.index(candles[0].id)


def test_blend_zero_keeps_storefront_order(recommender, catalog_products):
    r = Recommender(index=recommender.index, queries=recommender.queries,
                    session_encoder=recommender.session_encoder, search_blend=0.0)
    results = tuple(p.id for p in catalog_products[:6])
    events = [ev(1, "view", catalog_products[30].id), ev(2, "search", query="lamp", results=results)]
    rec = r.recommend([UserBatch("u1", fold_all(events), events)])[0]
    assert [i["product_id"] for i in rec["search"]["items"]] == list(results)


def test_recommendation_id_is_deterministic(recommender, catalog_products):
    events = [ev(1, "view", catalog_products[5].id)]
    a = recommender.recommend([UserBatch("u1", fold_all(events), events)])[0]
    b = recommender.recommend([UserBatch("u1", fold_all(events), events)])[0]
    assert a["recommendation_id"] == b["recommendation_id"] and a["items"] == b["items"]


def test_query_cache_hits_repeat_queries(text_encoder):
    cache = QueryEmbeddingCache(text_encoder, capacity=10)
    v1 = cache.encode(["Red Lamp", "blue rug"])
    v2 = cache.encode(["red  lamp", "blue rug", "green vase"])
    assert cache.hits == 2 and cache.misses == 3
    np.testing.assert_allclose(v1[0], v2[0])
    assert np.allclose(np.linalg.norm(v2, axis=1), 1.0, atol=1e-5)

"""The batch recommender with the real model and a real FAISS index (no broker)."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines import PoolingSessionEncoder, QueryEmbeddingCache
from index import load_snapshot
from stream.core import session_state as ss
from stream.core.metrics import Metrics
from stream.core.recommender import IndexHolder, OneEventResults, Recommender, UserBatch, iso
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


class Counted(Metrics):
    def __init__(self) -> None:
        self.kept = self.computed = 0

    def on_one_event_results(self, kept: int, computed: int) -> None:
        self.kept += kept
        self.computed += computed


def _keeping(index_holder, recommender, size: int) -> Recommender:
    return Recommender(index=index_holder, queries=recommender.queries, session_encoder=recommender.session_encoder,
                       top_k=10, metrics=Counted(), one_event=OneEventResults(size))


def _first_events(catalog_products, tag: str, n0: int) -> list[UserBatch]:
    """New shoppers, one event each: a view, an add-to-cart, a purchase and a search with results."""
    p, q = catalog_products[30].id, catalog_products[40].id
    events = [ev(n0, "view", p, user=f"{tag}1"), ev(n0 + 1, "add_to_cart", q, user=f"{tag}2"),
              ev(n0 + 2, "purchase", p, user=f"{tag}3"),
              ev(n0 + 3, "search", query="heart t-light holder", results=(p, q, catalog_products[50].id),
                 user=f"{tag}4")]
    return [UserBatch(e.user_id, fold_all([e]), [e]) for e in events]


def _served(rec):
    search = rec.get("search")
    return rec["items"], search and (search["query"], search["items"])


def test_a_one_event_session_takes_the_result_kept_from_one_like_it(recommender, catalog_products):
    keeping, plain = _keeping(recommender.index, recommender, 64), _keeping(recommender.index, recommender, 0)
    first = keeping.recommend(_first_events(catalog_products, "a", 1))
    assert (keeping.metrics.kept, keeping.metrics.computed, len(keeping.one_event)) == (0, 4, 4)
    again = keeping.recommend(_first_events(catalog_products, "b", 11))       # other shoppers, same first events
    assert (keeping.metrics.kept, keeping.metrics.computed) == (4, 4)
    computed = plain.recommend(_first_events(catalog_products, "b", 11))
    assert plain.metrics.kept == 0 and len(plain.one_event) == 0
    assert [_served(r) for r in again] == [_served(r) for r in computed] == [_served(r) for r in first]
    assert [r["user_id"] for r in again] == ["b1", "b2", "b3", "b4"]
    assert [r["recommendation_id"] for r in again] == [r["recommendation_id"] for r in computed]
    assert again[3]["search"]["items"] and again[0]["items"][0]["product_id"] != catalog_products[30].id

    # a session of two events is never taken from there, nor kept
    two = [ev(21, "view", catalog_products[30].id, user="c"), ev(22, "view", catalog_products[40].id, user="c")]
    keeping.recommend([UserBatch("c", fold_all(two), two)])
    assert (keeping.metrics.kept, keeping.metrics.computed, len(keeping.one_event)) == (4, 5, 4)


def test_kept_results_follow_exclusions_and_every_change_of_the_index(index_snapshot, recommender, catalog_products):
    holder = IndexHolder(load_snapshot(index_snapshot))          # this test changes its index
    keeping = _keeping(holder, recommender, 64)
    view = catalog_products[30].id
    newcomer = [ev(1, "view", view, user="n1")]
    top = keeping.recommend([UserBatch("n1", fold_all(newcomer), newcomer)])[0]["items"][0]["product_id"]

    # a returning shopper whose one-event session carries an earlier purchase: other exclusions, other result
    limits = SessionLimits()
    earlier = fold_all([ev(0, "purchase", top, user="r")])
    returning = ss.fold(earlier, ev(5000, "view", view, user="r"), limits)
    assert len(ss.timeline(returning)) == 1
    items = keeping.recommend([UserBatch("r", returning, [ev(5000, "view", view, user="r")])])[0]["items"]
    assert top not in [i["product_id"] for i in items] and keeping.metrics.kept == 0

    # the index changes (the top product goes out of stock): nothing kept from before stands
    again = [ev(2, "view", view, user="n2")]
    assert keeping.recommend([UserBatch("n2", fold_all(again), again)])[0]["items"][0]["product_id"] == top
    assert keeping.metrics.kept == 1
    holder.current.update_product(replace(holder.current.products[top], in_stock=False))
    third = [ev(3, "view", view, user="n3")]
    items = keeping.recommend([UserBatch("n3", fold_all(third), third)])[0]["items"]
    assert top not in [i["product_id"] for i in items] and keeping.metrics.kept == 1

    # a new index swapped in: the same
    keeping.recommend([UserBatch("n3", fold_all(third), third)])
    assert keeping.metrics.kept == 2
    holder.swap(load_snapshot(index_snapshot))
    items = keeping.recommend([UserBatch("n4", fold_all(third), third)])[0]["items"]
    assert items[0]["product_id"] == top and keeping.metrics.kept == 2

    # another session model: the same
    keeping.recommend([UserBatch("n5", fold_all(third), third)])
    assert keeping.metrics.kept == 3
    keeping.session_encoder = PoolingSessionEncoder(dim=recommender.session_encoder.dim)
    keeping.recommend([UserBatch("n6", fold_all(third), third)])
    assert keeping.metrics.kept == 3 and len(keeping.one_event) == 1


@given(st.one_of(st.floats(min_value=-2e9, max_value=4102444800.0, allow_nan=False),
                 st.integers(min_value=946684800000, max_value=4102444800000).map(lambda ms: ms / 1000),
                 st.tuples(st.integers(min_value=946684800, max_value=4102444800),
                           st.sampled_from([0.9999995, 0.9999994, 0.0000005, 0.9995, 0.0015, 0.1234565, 1e-7]))
                 .map(sum)))
@settings(max_examples=3000, deadline=None, derandomize=True, database=None)
def test_times_are_written_as_datetime_writes_them(ts):
    """``iso`` (event_time, produced_at, a hit's ts) builds no datetime per call; its text is the
    standard library's to the character, rounding to the microsecond included."""
    expected = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso(ts) == expected

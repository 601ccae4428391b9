"""ItemIndex on real FAISS: every kind answers, removes, filters and keeps k results."""
from __future__ import annotations

import numpy as np
import pytest

from index import Filters, IndexParams, ItemIndex, Product, choose_kind
from index.bench import exact_top, recall_at, synthetic_vectors

KINDS = ["flat", "hnsw", "ivf"]
DIM = 32


def catalogue(n: int, *, seed: int = 0, out_of_stock_every: int = 0):
    vecs = synthetic_vectors(n, DIM, seed=seed)
    products = [Product(f"p{i}", f"product {i}", category="mugs" if i % 3 == 0 else "lamps",
                        price=float(i % 50), in_stock=not (out_of_stock_every and i % out_of_stock_every == 0))
                for i in range(n)]
    return products, vecs


def make(kind: str, n: int = 3000, **kw) -> tuple[ItemIndex, list[Product], np.ndarray]:
    products, vecs = catalogue(n, **kw)
    index = ItemIndex(DIM, model_version="test", kind=kind, params=IndexParams(ivf_nprobe=64))
    index.upsert(products, vecs)
    return index, products, vecs


def ids(rows) -> list[list[str]]:
    return [[c.product_id for c in row] for row in rows]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_finds_the_exact_neighbours(kind):
    index, _, vecs = make(kind)
    queries = synthetic_vectors(3200, DIM, seed=0)[3000:]        # same shape, not in the index
    truth = exact_top(vecs, queries, 10)
    found = [[int(p[1:]) for p in row] for row in ids(index.search(queries, 10))]
    assert recall_at(found, truth, 10) >= (0.999 if kind == "flat" else 0.9)
    assert index.search_kind == kind


def test_a_batch_of_queries_is_scored_through_blas_and_agrees_with_single_queries():
    """Exact search of a worker's batch goes through one BLAS product (from ``BLAS_MIN_QUERIES`` rows;
    faiss-cpu 1.15.1 ships a threshold that never reaches it), and finds what one query at a time does."""
    import faiss

    from index.kinds import BLAS_MIN_QUERIES

    index, _, _ = make("flat")
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_MIN_QUERIES
    queries = synthetic_vectors(3064, DIM, seed=0)[3000:]
    batched = index.search(queries, 10)
    single = [index.search(q[None, :], 10)[0] for q in queries]
    assert ids(batched) == ids(single)
    assert np.allclose([[c.score for c in row] for row in batched], [[c.score for c in row] for row in single],
                       atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_removed_and_replaced_products_never_come_back(kind):
    index, products, vecs = make(kind)
    q = vecs[:50]                                 # each query is a product's own vector
    before = ids(index.search(q, 5))
    assert [row[0] for row in before] == [f"p{i}" for i in range(50)]
    index.compact_ratio = 10.0                    # keep the tombstones: query-time filtering alone
    assert index.remove([f"p{i}" for i in range(0, 50, 2)] + ["nope"]) == 25
    assert index.dead == 25
    after = ids(index.search(q, 5))
    gone = {f"p{i}" for i in range(0, 50, 2)}
    assert not gone & {p for row in after for p in row}
    assert all(len(row) == 5 for row in after)
    # replace p1's vector by p2000's: a query with p2000's vector now finds p1 (and p2000) first
    index.upsert([Product("p1", "moved")], vecs[2000:2001])
    top = ids(index.search(vecs[2000:2001], 2))[0]
    assert set(top) == {"p1", "p2000"}
    assert index.products["p1"].title == "moved"
    np.testing.assert_allclose(index.vectors_of(["p1"])[0], vecs[2000], atol=1e-6)
    # compaction drops the tombstones and changes no answer
    before_compact = ids(index.search(vecs[100:140], 10))
    assert index.compact() == 26
    assert index.dead == 0 and len(index) == 3000 - 25
    after_compact = ids(index.search(vecs[100:140], 10))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(before_compact, after_compact)])
    assert overlap >= (1.0 if kind == "flat" else 0.9)


def test_compaction_starts_by_itself_past_the_ratio():
    index, _, _ = make("flat", n=1000)
    index.remove([f"p{i}" for i in range(200)])
    assert index.dead == 200                      # 20% < compact_ratio 25%
    index.remove([f"p{i}" for i in range(200, 300)])
    assert index.dead == 0 and len(index) == 700


@pytest.mark.parametrize("kind", KINDS)
def test_filters_keep_k_results(kind):
    index, products, vecs = make(kind, out_of_stock_every=2)       # half the catalogue out of stock
    by_id = {p.id: p for p in products}
    q = vecs[:64]
    exclude = [{f"p{i + 1}", f"p{i + 3}"} for i in range(64)]
    rows = ids(index.search(q, 10, exclude=exclude))
    for row, excl in zip(rows, exclude):
        assert len(row) == 10
        assert all(by_id[p].in_stock for p in row) and not excl & set(row)
    filters = Filters(category="mugs", min_price=10, max_price=30)
    rows = ids(index.search(q, 10, filters=filters))
    for row in rows:
        assert len(row) == 10
        for p in row:
            assert by_id[p].category == "mugs" and 10 <= by_id[p].price <= 30 and by_id[p].in_stock
    # the over-fetch factor was measured from what the filters rejected: well above 1
    assert index.overfetch > 1.5


def test_overfetch_is_measured_not_fixed():
    index, _, vecs = make("flat", out_of_stock_every=0)
    for _ in range(20):
        index.search(vecs[:32], 10)
    assert index.overfetch < 1.1                  # nothing rejected: no over-fetch needed
    index2, _, _ = make("flat", out_of_stock_every=2)
    for _ in range(20):
        index2.search(vecs[:32], 10)
    assert 1.5 < index2.overfetch < 4.0           # about half rejected: about twice as many fetched


def test_an_unreachable_filter_returns_fewer_not_wrong_results():
    index, _, vecs = make("hnsw")
    rows = index.search(vecs[:4], 10, filters=Filters(category="sofas"))
    assert rows == [[], [], [], []]


def test_record_updates_take_effect_without_a_new_vector():
    index, products, vecs = make("flat", n=500)
    assert ids(index.search(vecs[7:8], 1))[0] == ["p7"]
    index.update_product(Product("p7", products[7].title, in_stock=False))
    assert "p7" not in ids(index.search(vecs[7:8], 10))[0]


def test_auto_kind_by_size():
    assert choose_kind("auto", 10_000) == "flat"
    assert choose_kind("auto", 2_000_000) == "hnsw"
    with pytest.raises(Exception, match="unknown index kind"):
        choose_kind("annoy", 10)


@pytest.mark.gpu
def test_torch_cuda_exact_search_matches_faiss_flat():
    index, _, vecs = make("flat")
    gpu = ItemIndex(DIM, model_version="test", kind="flat", device="cuda")
    products = [index.products[f"p{i}"] for i in range(3000)]
    gpu.upsert(products, vecs)
    assert gpu.device in ("torch-cuda", "faiss-gpu")
    a, b = ids(index.search(vecs[:100], 10)), ids(gpu.search(vecs[:100], 10))
    assert np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]) >= 0.98
    gpu.remove(["p0"])
    assert "p0" not in ids(gpu.search(vecs[:1], 10))[0]


@pytest.mark.parametrize("args, needle", [
    (["--items", "0"], "argument --items: '0' is below 1000"),
    (["--queries", "-5"], "argument --queries: '-5' is below 100"),
    (["--kind", "annoy"], "invalid choice: 'annoy'"),
    (["--spread", "x"], "argument --spread: 'x' is not a number"),
])
def test_the_index_benchmark_refuses_bad_arguments_in_one_line(args, needle):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "index.bench", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("python -m index.bench: error:")]
    assert len(errors) == 1 and needle in errors[0], r.stderr

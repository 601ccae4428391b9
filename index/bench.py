"""``shopstream bench index``: build time, queries/s, recall@10, memory and update rates.

Runs on synthetic unit vectors of a clustered, low-rank shape (closer to sentence embeddings than
isotropic noise, which is the worst case for graph indexes). Queries are drawn from the same
distribution but are not in the index. Recall@10 is measured against exact float32 search.

Also runnable without the ``stream`` package or FAISS (the GPU path needs only numpy and torch)::

    python -m index.bench --items 1000000 --device cuda --json
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import time
from typing import Sequence

import numpy as np

from index.catalog import Product
from index.item_index import ItemIndex
from index.kinds import IndexParams, choose_kind

log = logging.getLogger(__name__)

INTRINSIC_DIM = 32
GROUP = 200          # products per cluster (think variants of one kind of product)
SPREAD = 0.5         # within-cluster spread, relative to the distance between clusters


def synthetic_vectors(n: int, dim: int, *, seed: int = 0, spread: float = SPREAD,
                      chunk: int = 200_000) -> np.ndarray:
    """``n`` unit vectors in ``max(16, n / GROUP)`` clusters: a centre, plus a spread in a shared
    ``INTRINSIC_DIM``-dimensional subspace, plus a little isotropic noise."""
    rng = np.random.default_rng(seed)
    clusters = max(16, n // GROUP)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    basis = rng.standard_normal((INTRINSIC_DIM, dim)).astype(np.float32) / math.sqrt(INTRINSIC_DIM)
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        m = hi - lo
        x = centres[rng.integers(0, clusters, m)]
        x += rng.standard_normal((m, INTRINSIC_DIM)).astype(np.float32) @ basis * spread
        x += rng.standard_normal((m, dim)).astype(np.float32) * 0.1 * spread
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:hi] = x
    return out


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def exact_top(base: np.ndarray, queries: np.ndarray, k: int, max_scores: int = 100_000_000) -> np.ndarray:
    """Exact float32 top-k ids by inner product (numpy, chunked to ``max_scores`` scores at a time)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    chunk = max(k, max_scores // max(len(queries), 1))
    for lo in range(0, len(base), chunk):
        s = queries @ base[lo:lo + chunk].T
        part = np.argpartition(s, s.shape[1] - k, axis=1)[:, -k:]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + lo], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall_at(found: list[list[int]], truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k].tolist())) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def _qps(fn, queries: np.ndarray, batch: int) -> float:
    """Queries per second over one pass of distinct queries (repeating them would warm the caches)."""
    fn(queries[:batch])                                  # warm-up
    done, t0 = 0, time.perf_counter()
    for lo in range(0, len(queries) - batch + 1, batch):
        fn(queries[lo:lo + batch])
        done += batch
    return done / (time.perf_counter() - t0)


def run_index_bench(*, items: int, dim: int = 384, kind: str = "auto", device: str = "cpu",
                    queries: int = 5000, k: int = 10, params: IndexParams | None = None,
                    updates: int = 2000, seed: int = 0, spread: float = SPREAD,
                    ef_sweep: Sequence[int] = (32, 48, 64, 96), compact: bool = True) -> dict:
    """Measure one index configuration; returns a JSON-ready dict."""
    if device != "cpu":
        return run_gpu_bench(items=items, dim=dim, queries=queries, k=k, seed=seed, updates=updates)
    kind = choose_kind(kind, items)
    params = params or IndexParams()
    t0 = time.perf_counter()
    data = synthetic_vectors(items + queries + updates, dim, seed=seed, spread=spread)
    base, qs, extra = data[:items], data[items:items + queries], data[items + queries:]
    gen_s = time.perf_counter() - t0
    truth = exact_top(base, qs, k)
    products = [Product(f"p{i}", f"product {i}") for i in range(items)]
    gc.collect()
    rss0 = rss_bytes()
    index = ItemIndex(dim, model_version="synthetic", kind=kind, params=params)
    t0 = time.perf_counter()
    index.upsert(products, base)
    build_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    del products
    structure = index._structure

    found = index.search(qs, k)
    recall = recall_at([[int(c.product_id[1:]) for c in row] for row in found], truth, k)
    raw = {b: _qps(lambda q: structure.search(q, k), qs, b) for b in (1, 64)}
    qps = {b: _qps(lambda q: index.search(q, k), qs, b) for b in (1, 64)}
    sweep = []
    if index.search_kind == "hnsw":
        for ef in ef_sweep:                              # the same graph, other efSearch values
            structure._faiss.hnsw.efSearch = ef
            rows = index.search(qs, k)
            sweep.append({"ef_search": ef, f"recall_at_{k}": round(recall_at(
                [[int(c.product_id[1:]) for c in row] for row in rows], truth, k), 4),
                "qps_batch1": round(_qps(lambda q: index.search(q, k), qs, 1), 1)})
        structure._faiss.hnsw.efSearch = params.hnsw_ef_search

    filtered = _filtered_run(index, qs, truth, k, seed)
    stall = _search_stall(index, qs, extra[:256], k)

    new = [Product(f"n{i}", f"new {i}") for i in range(updates)]
    t0 = time.perf_counter()
    for lo in range(0, updates, 100):
        index.upsert(new[lo:lo + 100], extra[lo:lo + 100])
    upsert_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    gone = [f"p{i}" for i in rng.choice(items, size=min(updates, items), replace=False)]
    t0 = time.perf_counter()
    for lo in range(0, len(gone), 100):
        index.remove(gone[lo:lo + 100])
    delete_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if compact:
        index.compact()
    compact_s = time.perf_counter() - t0 if compact else None
    return {
        "bench": "index", "items": items, "dim": dim, "spread": spread, "kind": index.search_kind, "device": "cpu",
        "params": params.to_dict() if kind != "flat" else {}, "k": k, "queries": queries,
        "cpu_threads": _faiss_threads(), "load_avg": os.getloadavg()[0],
        "generate_s": round(gen_s, 2), "build_s": round(build_s, 2),
        "qps_batch1": round(qps[1], 1), "qps_batch64": round(qps[64], 1),
        "raw_qps_batch1": round(raw[1], 1), "raw_qps_batch64": round(raw[64], 1),
        f"recall_at_{k}": round(recall, 4),
        "structure_mb": round(index.stats()["structure_bytes"] / 1e6, 1),
        "rss_growth_mb": round((rss1 - rss0) / 1e6, 1),
        "upserts_per_s": round(updates / upsert_s, 1), "deletes_per_s": round(len(gone) / delete_s, 1),
        "compact_s": compact_s and round(compact_s, 2), **filtered, **stall, "ef_sweep": sweep,
    }


def _search_stall(index: ItemIndex, qs: np.ndarray, vectors: np.ndarray, k: int) -> dict:
    """The longest batch-1 search while one catalogue batch of 256 upserts goes in (another thread)."""
    import threading

    latencies: list[float] = []
    done = threading.Event()

    def searcher() -> None:
        i = 0
        while not done.is_set():
            t0 = time.perf_counter()
            index.search(qs[i % len(qs):i % len(qs) + 1], k)
            latencies.append(time.perf_counter() - t0)
            i += 1

    thread = threading.Thread(target=searcher)
    thread.start()
    t0 = time.perf_counter()
    index.upsert([Product(f"s{i}", f"stall {i}") for i in range(len(vectors))], vectors)
    upsert_s = time.perf_counter() - t0
    done.set()
    thread.join()
    index.remove([f"s{i}" for i in range(len(vectors))])
    return {"batch256_upsert_ms": round(upsert_s * 1e3, 1),
            "max_search_ms_during_batch256": round(max(latencies) * 1e3, 2) if latencies else None,
            "searches_during_batch256": len(latencies)}


def _filtered_run(index: ItemIndex, qs: np.ndarray, truth: np.ndarray, k: int, seed: int,
                  out_of_stock: float = 0.2) -> dict:
    """Search with a share of the catalogue out of stock and each shopper's top 5 excluded (as if
    bought): the over-fetch factor the index measures, and whether k results remain."""
    rng = np.random.default_rng(seed + 2)
    pids = list(index.products)
    for i in rng.choice(len(pids), size=int(out_of_stock * len(pids)), replace=False):
        p = index.products[pids[i]]
        index.update_product(Product(p.id, p.title, in_stock=False))
    exclude = [{f"p{j}" for j in row[:5]} for row in truth]
    index.overfetch = 2.0
    t0 = time.perf_counter()
    rows = [index.search(qs[i:i + 1], k, exclude=[exclude[i]])[0] for i in range(len(qs))]
    elapsed = time.perf_counter() - t0
    ok = all(index.products[c.product_id].in_stock and c.product_id not in exclude[i]
             for i, row in enumerate(rows) for c in row)
    for pid in pids:                                      # back in stock for the update timings
        p = index.products[pid]
        if not p.in_stock:
            index.update_product(Product(p.id, p.title))
    return {"filtered_out_of_stock_share": out_of_stock, "filtered_qps_batch1": round(len(qs) / elapsed, 1),
            "filtered_rows_with_k": round(sum(len(r) == k for r in rows) / len(rows), 4),
            "filtered_results_valid": ok, "overfetch_measured": round(index.overfetch, 3)}


def _faiss_threads() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.omp_get_max_threads())


# -- GPU ------------------------------------------------------------------------------------------
def run_gpu_bench(*, items: int, dim: int = 384, queries: int = 1000, k: int = 10, seed: int = 0,
                  updates: int = 2000, reps: int = 200) -> dict:
    """Exact fp16 search with torch on CUDA (the path index.gpu takes without faiss-gpu)."""
    import torch

    from index.errors import IndexError_
    from index.gpu import TORCH_HINT, TorchExactSearch, torch_cuda_available

    if not torch_cuda_available():
        raise IndexError_("--device cuda but no GPU is usable: " + TORCH_HINT)
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(seed)
    # the same clustered shape as synthetic_vectors, generated on the device in chunks
    clusters = max(16, items // GROUP)
    centres = torch.randn((clusters, dim), device=dev, generator=g)
    basis = torch.randn((INTRINSIC_DIM, dim), device=dev, generator=g) / math.sqrt(INTRINSIC_DIM)

    def make(m: int):
        x = centres[torch.randint(0, clusters, (m,), device=dev, generator=g)]
        x += torch.randn((m, INTRINSIC_DIM), device=dev, generator=g) @ basis * SPREAD
        x += torch.randn((m, dim), device=dev, generator=g) * 0.1 * SPREAD
        return torch.nn.functional.normalize(x, dim=1)

    structure = TorchExactSearch(dim, keep_host_copy=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    chunk = 1_000_000
    for lo in range(0, items, chunk):
        structure.add_tensor(make(min(chunk, items - lo)).half())
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    qs = make(queries)
    qh = qs.half()

    # recall@k of fp16 search against exact float32 search (computed on the device, in chunks)
    truth_s = torch.full((queries, k), -float("inf"), device=dev)
    truth_i = torch.zeros((queries, k), dtype=torch.long, device=dev)
    for lo in range(0, items, chunk):
        s = qs @ structure._gpu[lo:min(items, lo + chunk)].float().T
        v, i = torch.topk(s, k, dim=1)
        cs, ci = torch.cat([truth_s, v], 1), torch.cat([truth_i, i + lo], 1)
        o = torch.argsort(cs, dim=1, descending=True)[:, :k]
        truth_s, truth_i = torch.gather(cs, 1, o), torch.gather(ci, 1, o)
    _, found = structure.search_tensor(qh, k)
    recall = recall_at(found.cpu().tolist(), truth_i.cpu().numpy(), k)

    def timed(fn, n_reps: int) -> float:
        """Median milliseconds per call, CUDA events, rotating the query rows."""
        for i in range(10):
            fn(i)
        times = []
        for i in range(n_reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(i)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return float(np.median(times))

    b1_ms = timed(lambda i: structure.search_tensor(qh[i % queries:i % queries + 1], k), reps)
    one_stage_ms = timed(lambda i: structure.search_tensor(qh[i % queries:i % queries + 1], k,
                                                           blocked=False), reps)
    two_stage_ms = timed(lambda i: structure.search_tensor(qh[i % queries:i % queries + 1], k,
                                                           blocked=True), reps)
    _, found2 = structure.search_tensor(qh, k, blocked=True)
    _, found1 = structure.search_tensor(qh, k, blocked=False)
    agree = float((torch.sort(found1, 1).values == torch.sort(found2, 1).values).float().mean())
    mv_ms = timed(lambda i: torch.mv(structure._gpu[:items], qh[i % queries]), reps)
    b64_ms = timed(lambda i: structure.search_tensor(qh[(i * 64) % (queries - 64):][:64], k), reps // 2)
    host_q = qs.float().cpu().numpy()
    t0 = time.perf_counter()
    for i in range(reps):
        structure.search(host_q[i % queries:i % queries + 1], k)
    host_b1_ms = (time.perf_counter() - t0) / reps * 1e3

    # device memory bandwidth, measured: a large device-to-device copy (bytes read + written)
    buf = torch.empty(512 * 1024 * 1024, dtype=torch.float16, device=dev)
    copy_ms = timed(lambda i: buf.clone(), 20)
    bw = 2 * buf.nelement() * 2 / (copy_ms / 1e3)
    del buf
    matrix_bytes = items * dim * 2
    bound_ms = matrix_bytes / bw * 1e3
    nominal_bound_ms = matrix_bytes / 3e12 * 1e3

    # live updates through ItemIndex on the GPU (host copy kept for exact vectors_of)
    upserts = deletes = ii_recall = None
    if items <= 2_000_000:
        index = ItemIndex(dim, model_version="synthetic", kind="flat", device="cuda")
        base = structure._gpu[:items].float().cpu().numpy()
        index.upsert([Product(f"p{i}", f"product {i}") for i in range(items)], base)
        del base
        extra = make(updates).cpu().numpy()
        new = [Product(f"n{i}", f"new {i}") for i in range(updates)]
        rows = index.search(host_q[:100], k)
        ii_recall = recall_at([[int(c.product_id[1:]) for c in r] for r in rows], truth_i[:100].cpu().numpy(), k)
        t0 = time.perf_counter()
        for lo in range(0, updates, 100):
            index.upsert(new[lo:lo + 100], extra[lo:lo + 100])
        upserts = updates / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for lo in range(0, updates, 100):
            index.remove([f"p{i}" for i in range(lo, lo + 100)])
        deletes = updates / (time.perf_counter() - t0)
        del index
    return {
        "bench": "index", "items": items, "dim": dim, "kind": "flat", "device": "torch-cuda",
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "k": k, "queries": queries,
        "build_s": round(build_s, 3), f"recall_at_{k}": round(recall, 4),
        "batch1_ms": round(b1_ms, 4), "qps_batch1": round(1e3 / b1_ms, 1),
        "gemv_only_ms": round(mv_ms, 4), "one_stage_topk_b1_ms": round(one_stage_ms, 4),
        "block_topk_b1_ms": round(two_stage_ms, 4), "block_topk_agrees": round(agree, 4),
        "itemindex_recall_at_10": ii_recall,
        "batch64_ms": round(b64_ms, 4), "qps_batch64": round(64e3 / b64_ms, 1),
        "host_batch1_ms": round(host_b1_ms, 4),
        "matrix_mb": round(matrix_bytes / 1e6, 1), "measured_bandwidth_tb_s": round(bw / 1e12, 3),
        "bound_ms_measured_bw": round(bound_ms, 4), "bound_ms_3tb_s": round(nominal_bound_ms, 4),
        "batch1_over_bound": round(b1_ms / bound_ms, 3), "batch1_over_3tb_s_bound": round(b1_ms / nominal_bound_ms, 3),
        "structure_mb": round(structure.memory_bytes() / 1e6, 1),
        "upserts_per_s": None if upserts is None else round(upserts, 1),
        "deletes_per_s": None if deletes is None else round(deletes, 1),
    }


def render(r: dict) -> str:
    rows = [f"{k:>24}: {v}" for k, v in r.items()]
    return "\n".join(rows)


def _at_least(low: float, kind=int):
    """An argparse type: a number of ``kind`` no smaller than ``low`` (the bounds of ``shopstream bench index``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{text!r} is below {low}")
        return value
    return parse


def main(argv: list[str] | None = None) -> None:
    from index.errors import IndexError_
    from index.kinds import KINDS

    ap = argparse.ArgumentParser(prog="python -m index.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=_at_least(1000), nargs="+", default=[100_000])
    ap.add_argument("--dim", type=_at_least(8), default=384)
    ap.add_argument("--kind", default="auto", choices=["auto", *KINDS])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--queries", type=_at_least(100), default=5000)
    ap.add_argument("--no-compact", action="store_true")
    ap.add_argument("--ef-search", type=_at_least(1), default=None)
    ap.add_argument("--spread", type=_at_least(0.05, float), default=SPREAD)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default=None, help="also append each result as a JSON line to this file")
    a = ap.parse_args(argv)
    logging.basicConfig(level="WARNING")
    params = IndexParams(hnsw_ef_search=a.ef_search) if a.ef_search else None
    for n in a.items:
        try:
            r = run_index_bench(items=n, dim=a.dim, kind=a.kind, device=a.device, queries=a.queries,
                                params=params, spread=a.spread, compact=not a.no_compact)
        except IndexError_ as exc:              # e.g. --device cuda without a usable GPU
            ap.exit(2, f"{ap.prog}: error: {exc}\n")
        line = json.dumps(r)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write(line + "\n")
        print(line if a.json else render(r), flush=True)
        gc.collect()


if __name__ == "__main__":
    main(sys.argv[1:])

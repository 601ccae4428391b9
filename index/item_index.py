"""ItemIndex: product vectors in, candidate products out, with ids, filters and live updates."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import numpy as np

from index.catalog import Product
from index.errors import UnknownProductError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    product_id: str
    score: float


@dataclass(frozen=True)
class Filters:
    """Query-time constraints besides the per-user exclusions."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None

    def admits(self, p: Product) -> bool:
        if self.category is not None and p.category != self.category:
            return False
        if self.min_price is not None and (p.price is None or p.price < self.min_price):
            return False
        if self.max_price is not None and (p.price is None or p.price > self.max_price):
            return False
        return True


class ItemIndex:
    """A FAISS inner-product index over unit vectors, keyed by product id.

    Vectors must be L2-normalised so inner product is cosine similarity. The index keeps the
    product records, so out-of-stock products and per-user exclusions are filtered at query time.
    All mutation goes through :meth:`upsert` and :meth:`remove`; readers and writers are serialised
    by a lock so updates can be applied while the stream runs.
    """

    #: Candidates fetched per wanted result beyond the exclusions, before a retry widens it.
    overfetch: float = 2.0

    def __init__(self, dim: int, *, model_version: str, version: str = "unversioned") -> None:
        self.dim = dim
        self.model_version = model_version
        self.version = version
        self.products: dict[str, Product] = {}
        self._int_of: dict[str, int] = {}
        self._pid_of: dict[int, str] = {}
        self._next_id = 0
        self._faiss = None
        self._lock = threading.RLock()
        self.kind = "flat"

    # -- construction -------------------------------------------------------------------------
    def _ensure_faiss(self):
        if self._faiss is None:
            import faiss

            self._faiss = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        return self._faiss

    def __len__(self) -> int:
        return len(self.products)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self.products

    def upsert(self, products: Sequence[Product], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(products), self.dim):
            raise ValueError(f"expected vectors of shape ({len(products)}, {self.dim}), got {vectors.shape}")
        with self._lock:
            fx = self._ensure_faiss()
            stale = [self._int_of[p.id] for p in products if p.id in self._int_of]
            if stale:
                fx.remove_ids(np.asarray(stale, dtype=np.int64))
                for i in stale:
                    del self._pid_of[i]
            ids = np.arange(self._next_id, self._next_id + len(products), dtype=np.int64)
            self._next_id += len(products)
            for p, i in zip(products, ids):
                self._int_of[p.id] = int(i)
                self._pid_of[int(i)] = p.id
                self.products[p.id] = p
            fx.add_with_ids(vectors, ids)

    def update_product(self, product: Product) -> None:
        """Change a product's record (stock, price, ...) without touching its vector."""
        with self._lock:
            if product.id not in self.products:
                raise UnknownProductError(product.id)
            self.products[product.id] = product

    def remove(self, product_ids: Iterable[str]) -> int:
        with self._lock:
            ints = [self._int_of.pop(pid) for pid in product_ids if pid in self._int_of]
            if not ints:
                return 0
            self._ensure_faiss().remove_ids(np.asarray(ints, dtype=np.int64))
            for i in ints:
                self.products.pop(self._pid_of.pop(i), None)
            return len(ints)

    # -- queries ------------------------------------------------------------------------------
    def vectors_of(self, product_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of known products (the index is the one source of product vectors)."""
        with self._lock:
            try:
                ints = np.asarray([self._int_of[p] for p in product_ids], dtype=np.int64)
            except KeyError as exc:
                raise UnknownProductError(exc.args[0]) from None
            if len(ints) == 0:
                return np.zeros((0, self.dim), dtype=np.float32)
            return self._ensure_faiss().reconstruct_batch(ints)

    def search(self, queries: np.ndarray, k: int, *,
               exclude: Sequence[Collection[str]] | None = None,
               filters: Filters | None = None) -> list[list[Candidate]]:
        """Top ``k`` in-stock products per query row, minus each row's exclusions and filter misses."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        n = len(queries)
        exclude = exclude if exclude is not None else [()] * n
        with self._lock:
            total = len(self.products)
            if total == 0 or n == 0:
                return [[] for _ in range(n)]
            results: list[list[Candidate] | None] = [None] * n
            todo = list(range(n))
            longest = max(len(e) for e in exclude)
            fetch = min(total, int(k * self.overfetch) + longest + 8)
            while todo:
                scores, ints = self._ensure_faiss().search(queries[todo], fetch)
                retry = []
                for row, qi in enumerate(todo):
                    picked = self._pick(scores[row], ints[row], k, exclude[qi], filters)
                    if len(picked) < k and fetch < total:
                        retry.append(qi)
                    else:
                        results[qi] = picked
                todo = retry
                fetch = min(total, fetch * 4)
            return results  # type: ignore[return-value]

    def _pick(self, scores, ints, k, excluded, filters) -> list[Candidate]:
        out: list[Candidate] = []
        for s, i in zip(scores, ints):
            if i < 0:
                break
            pid = self._pid_of.get(int(i))
            if pid is None or pid in excluded:
                continue
            p = self.products[pid]
            if not p.in_stock or (filters is not None and not filters.admits(p)):
                continue
            out.append(Candidate(pid, float(s)))
            if len(out) == k:
                break
        return out

    def score(self, queries: np.ndarray, product_ids: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Inner products of each query with its own list of products (unknown ids score -inf)."""
        out = []
        for q, pids in zip(queries, product_ids):
            known = [p for p in pids if p in self._int_of]
            vec = self.vectors_of(known) @ q if known else np.zeros(0, dtype=np.float32)
            lookup = dict(zip(known, vec))
            out.append(np.asarray([lookup.get(p, -np.inf) for p in pids], dtype=np.float32))
        return out

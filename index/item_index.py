"""ItemIndex: product vectors in, candidate products out, with ids, filters and live updates."""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import numpy as np

from index.catalog import Product
from index.errors import UnknownProductError
from index.kinds import FaissStructure, IndexParams, choose_kind

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


def new_structure(kind: str, dim: int, params: IndexParams, device: str):
    """The search structure for a resolved kind on a resolved device (see index.gpu.choose_device)."""
    if device == "torch-cuda":
        from index.gpu import TorchExactSearch

        return TorchExactSearch(dim)
    if device == "faiss-gpu":
        from index.gpu import FaissGpuFlat

        return FaissGpuFlat(dim)
    return FaissStructure(kind, dim, params)


class ItemIndex:
    """Unit product vectors searched by inner product (= cosine), keyed by product id.

    ``kind`` is ``flat`` (exact), ``hnsw`` or ``ivf`` (see :mod:`index.kinds`), or ``auto`` to
    choose by the size of the first batch. ``device`` is ``cpu``, ``auto`` or ``cuda`` (see
    :mod:`index.gpu`); on a GPU every kind is served by exact search.

    Vectors live in the search structure at *slots*. A removed or replaced product leaves a
    tombstone: its slot is skipped at query time and the structure is rebuilt without tombstones
    (:meth:`compact`) once they exceed ``compact_ratio`` of it. Query-time filtering (tombstones,
    out-of-stock products, per-user exclusions, :class:`Filters`) over-fetches by a factor measured
    on recent queries, and widens the search for the rows that still come up short.

    Readers and writers share ``_lock``; writers also hold ``_write_lock`` so that compaction can
    rebuild the structure while queries continue on the old one.
    """

    #: Candidates fetched per wanted result; re-measured after every search (EWMA).
    overfetch: float = 2.0
    compact_ratio: float = 0.25
    compact_min_dead: int = 64
    #: Approximate kinds stop widening here: asking HNSW for the whole catalogue is a full scan.
    max_fetch_approximate: int = 16_384
    #: Graph and IVF inserts are slow (about 1k/s into a 1M HNSW graph on 2 cores); they go in
    #: chunks of this many, releasing the lock between chunks so that searches do not wait long.
    insert_chunk: int = 8

    def __init__(self, dim: int, *, model_version: str, version: str = "unversioned",
                 kind: str = "flat", params: IndexParams | None = None, device: str = "cpu") -> None:
        self.dim = dim
        self.model_version = model_version
        self.version = version
        self.kind = kind if kind == "auto" else choose_kind(kind, 0)
        self.params = params or IndexParams()
        self.device = device
        self.products: dict[str, Product] = {}
        self._slot_of: dict[str, int] = {}
        self._pid_at: list[str | None] = []
        self._structure = None
        self._lock = threading.RLock()
        self._write_lock = threading.RLock()
        #: Counts every change to what a search can return (vectors, records, removals); a result
        #: kept from an earlier search stands only while it is unchanged.
        self.revision = 0

    # -- construction -------------------------------------------------------------------------
    def _new_structure(self, n: int):
        if self.kind == "auto":
            self.kind = choose_kind("auto", n)
            log.info("index kind auto -> %s for %d products", self.kind, n)
        if self.device in ("auto", "cuda"):
            from index.gpu import choose_device

            self.device = choose_device(self.device)
        return new_structure(self.kind, self.dim, self.params, self.device)

    def _ensure_structure(self, n: int):
        if self._structure is None:
            self._structure = self._new_structure(n)
        return self._structure

    @property
    def search_kind(self) -> str:
        """What actually answers queries (``flat`` on a GPU whatever :attr:`kind` says)."""
        return self._structure.kind if self._structure is not None else self.kind

    def __len__(self) -> int:
        return len(self.products)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self.products

    @property
    def dead(self) -> int:
        """Tombstoned slots waiting for compaction."""
        return len(self._pid_at) - len(self._slot_of)

    def upsert(self, products: Sequence[Product], vectors: np.ndarray) -> None:
        """Add products or replace their vectors and records (the last of a repeated id wins)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(products), self.dim):
            raise ValueError(f"expected vectors of shape ({len(products)}, {self.dim}), got {vectors.shape}")
        last = {p.id: i for i, p in enumerate(products)}
        if len(last) != len(products):
            keep = sorted(last.values())
            products, vectors = [products[i] for i in keep], vectors[keep]
        if not products:
            return
        with self._write_lock:
            with self._lock:
                self._ensure_structure(len(products))
            live = self.search_kind != "flat" and len(self._pid_at) > 0    # a first load goes in whole
            step = self.insert_chunk if live else len(products)
            for lo in range(0, len(products), step):       # searches run between the chunks
                with self._lock:
                    self._add(products[lo:lo + step], vectors[lo:lo + step])
        self._maybe_compact()

    def _add(self, products: Sequence[Product], vectors: np.ndarray) -> None:
        start = len(self._pid_at)
        self.revision += 1
        for p in products:
            old = self._slot_of.get(p.id)
            if old is not None:
                self._pid_at[old] = None
        self._structure.add(vectors)
        for i, p in enumerate(products):
            self._slot_of[p.id] = start + i
            self._pid_at.append(p.id)
            self.products[p.id] = p

    def update_product(self, product: Product) -> None:
        """Change a product's record (stock, price, ...) without touching its vector."""
        with self._lock:
            if product.id not in self.products:
                raise UnknownProductError(product.id)
            self.products[product.id] = product
            self.revision += 1

    def remove(self, product_ids: Iterable[str]) -> int:
        with self._write_lock, self._lock:
            n = 0
            for pid in product_ids:
                slot = self._slot_of.pop(pid, None)
                if slot is None:
                    continue
                self._pid_at[slot] = None
                self.products.pop(pid, None)
                n += 1
            if n:
                self.revision += 1
        if n:
            self._maybe_compact()
        return n

    def _maybe_compact(self) -> None:
        dead = self.dead
        if dead >= self.compact_min_dead and dead > self.compact_ratio * len(self._pid_at):
            self.compact()

    def compact(self) -> int:
        """Rebuild the structure without tombstones; queries keep using the old one meanwhile."""
        with self._write_lock:
            with self._lock:
                dead = self.dead
                if dead == 0 or self._structure is None:
                    return 0
                pids = list(self._slot_of)
                vectors = self._structure.reconstruct(np.fromiter(self._slot_of.values(), np.int64, len(pids)))
            fresh = new_structure(self.search_kind, self.dim, self.params, self.device)
            fresh.add(vectors)
            with self._lock:
                self._structure = fresh
                self._pid_at = list(pids)
                self._slot_of = {pid: i for i, pid in enumerate(pids)}
                self.revision += 1
        log.info("compacted %s index: %d tombstones dropped, %d products", self.search_kind, dead, len(pids))
        return dead

    # -- queries ------------------------------------------------------------------------------
    def vectors_of(self, product_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of known products (the index is the one source of product vectors)."""
        with self._lock:
            try:
                slots = np.asarray([self._slot_of[p] for p in product_ids], dtype=np.int64)
            except KeyError as exc:
                raise UnknownProductError(exc.args[0]) from None
            if len(slots) == 0:
                return np.zeros((0, self.dim), dtype=np.float32)
            return self._structure.reconstruct(slots)

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
            if not self.products or n == 0 or k <= 0:
                return [[] for _ in range(n)]
            structure = self._structure
            total = structure.ntotal
            cap = total if self.search_kind == "flat" else min(total, max(self.max_fetch_approximate, k))
            results: list[list[Candidate] | None] = [None] * n
            todo = list(range(n))
            longest = max(len(e) for e in exclude)
            fetch = min(cap, math.ceil(k * self.overfetch * 1.2) + longest + 8)
            ratios = []
            while todo:
                scores, slots = structure.search(queries[todo], fetch)
                retry = []
                for row, qi in enumerate(todo):
                    picked, rejected = self._pick(scores[row], slots[row], k, exclude[qi], filters)
                    if len(picked) < k and fetch < cap:
                        retry.append(qi)
                    elif len(picked) < k and fetch >= total and self.search_kind != "flat":
                        # a graph or IVF search may not reach every vector: scan the few there are
                        picked, _ = self._pick(*self._exact(structure, queries[qi], total), k, exclude[qi], filters)
                        results[qi] = picked
                    else:
                        results[qi] = picked
                        if len(picked) == k:          # short rows say more about the query than the index
                            ratios.append((k + rejected) / k)
                todo = retry
                fetch = min(cap, fetch * 4)
            if ratios:
                ratios.sort()
                seen = ratios[int(0.9 * (len(ratios) - 1))]
                self.overfetch = min(64.0, max(1.0, 0.8 * self.overfetch + 0.2 * seen))
            return results  # type: ignore[return-value]

    def _exact(self, structure, query: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
        slots = np.arange(total, dtype=np.int64)
        scores = structure.reconstruct(slots) @ query
        order = np.argsort(-scores)
        return scores[order], slots[order]

    def _pick(self, scores, slots, k, excluded, filters) -> tuple[list[Candidate], int]:
        """The first ``k`` admissible candidates and how many were rejected on the way (not counting
        the per-user exclusions, which the fetch size adds separately)."""
        out: list[Candidate] = []
        rejected = 0
        pid_at = self._pid_at
        for s, i in zip(scores.tolist(), slots.tolist()):
            if i < 0:
                break
            pid = pid_at[i]
            if pid is None:
                rejected += 1
                continue
            if pid in excluded:
                continue
            p = self.products[pid]
            if not p.in_stock or (filters is not None and not filters.admits(p)):
                rejected += 1
                continue
            out.append(Candidate(pid, s))
            if len(out) == k:
                break
        return out, rejected

    def score(self, queries: np.ndarray, product_ids: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Inner products of each query with its own list of products (unknown ids score -inf)."""
        out = []
        for q, pids in zip(queries, product_ids):
            known = [p for p in pids if p in self._slot_of]
            vec = self.vectors_of(known) @ q if known else np.zeros(0, dtype=np.float32)
            lookup = dict(zip(known, vec))
            out.append(np.asarray([lookup.get(p, -np.inf) for p in pids], dtype=np.float32))
        return out

    def stats(self) -> dict:
        with self._lock:
            s = self._structure
            return {"kind": self.kind, "search_kind": self.search_kind, "device": self.device,
                    "products": len(self.products), "tombstones": self.dead,
                    "overfetch": round(self.overfetch, 3),
                    "structure_bytes": s.memory_bytes() if s is not None else 0}

    # -- snapshots ----------------------------------------------------------------------------
    def export(self) -> tuple[list[Product], np.ndarray, np.ndarray, object]:
        """Live products, their vectors and slots, and the structure (for :mod:`index.snapshot`)."""
        with self._write_lock, self._lock:
            pids = list(self._slot_of)
            slots = np.fromiter(self._slot_of.values(), np.int64, len(pids))
            vectors = self._structure.reconstruct(slots) if pids else np.zeros((0, self.dim), np.float32)
            return [self.products[p] for p in pids], vectors, slots, self._structure

    @classmethod
    def restore(cls, products: Sequence[Product], slots: np.ndarray, structure, *, dim: int,
                model_version: str, version: str, kind: str, params: IndexParams) -> "ItemIndex":
        """An index around a loaded structure whose slot ``slots[i]`` holds ``products[i]``."""
        index = cls(dim, model_version=model_version, version=version, kind=kind, params=params)
        index._structure = structure
        index._pid_at = [None] * structure.ntotal
        for p, slot in zip(products, slots.tolist()):
            index._pid_at[slot] = p.id
            index._slot_of[p.id] = slot
            index.products[p.id] = p
        return index

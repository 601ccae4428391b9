"""Index kinds on the CPU (FAISS): exact ``flat``, graph ``hnsw``, inverted-file ``ivf``.

Each kind is held by a :class:`FaissStructure` whose labels are *slots*: the position at which a
vector was added (0, 1, 2, ...). :class:`index.item_index.ItemIndex` maps product ids to slots and
keeps removed slots as tombstones until it compacts, so every kind supports removal the same way.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from index.errors import IndexError_, SnapshotError

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf")
#: Exact search reads every vector per query (n x 384 x 4 bytes: 31 MB at 20k products); past this
#: size HNSW answers a batch-1 query far sooner at recall@10 near 1 (docs/benchmarks.md).
AUTO_FLAT_MAX = 20_000
FAISS_HINT = "FAISS is missing: pip install faiss-cpu (or shopstream[gpu] for faiss-gpu)"
#: From this many queries in one call on, exact search scores them with one BLAS matrix product
#: instead of a SIMD loop per (query, product) pair. FAISS long used 20; faiss-cpu 1.15.1 ships
#: 128,000, which left a worker's 256-query batches on the loop: 39 ms against 12.6 ms through
#: BLAS (one thread, 3,768 products x 384 dims; the two meet near 4 queries; docs/benchmarks.md).
BLAS_MIN_QUERIES = 20


def import_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise IndexError_(FAISS_HINT) from exc
    if faiss.cvar.distance_compute_blas_threshold > BLAS_MIN_QUERIES:
        faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES
    return faiss


@dataclass(frozen=True)
class IndexParams:
    """Tuning of the approximate kinds; the defaults are the ones measured in docs/benchmarks.md."""

    hnsw_m: int = 32
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 64
    ivf_nlist: int = 0          # 0: about 4 * sqrt(n) lists, chosen at first training
    ivf_nprobe: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict | None) -> "IndexParams":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: int(v) for k, v in (raw or {}).items() if k in names})


def choose_kind(requested: str, n: int) -> str:
    """``auto``: exact search up to :data:`AUTO_FLAT_MAX` products, HNSW above."""
    if requested == "auto":
        return "flat" if n <= AUTO_FLAT_MAX else "hnsw"
    if requested not in KINDS:
        raise IndexError_(f"unknown index kind {requested!r}; choose one of auto, {', '.join(KINDS)}")
    return requested


class FaissStructure:
    """One FAISS CPU index of a given kind, labels = slots in insertion order."""

    device = "cpu"

    def __init__(self, kind: str, dim: int, params: IndexParams | None = None) -> None:
        if kind not in KINDS:
            raise IndexError_(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.dim = dim
        self.params = params or IndexParams()
        self._faiss = None          # built on the first add (no work in the constructor)

    # -- life cycle ---------------------------------------------------------------------------
    def _create(self, first: np.ndarray):
        faiss = import_faiss()
        p = self.params
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            fx = faiss.IndexHNSWFlat(self.dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            fx.hnsw.efConstruction = p.hnsw_ef_construction
            fx.hnsw.efSearch = p.hnsw_ef_search
            return fx
        nlist = p.ivf_nlist or max(1, int(4 * math.sqrt(max(len(first), 1))))
        nlist = max(1, min(nlist, len(first) // 39 or 1))      # FAISS wants ~39 points per list
        quantizer = faiss.IndexFlatIP(self.dim)
        fx = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        fx.train(first)
        fx.nprobe = min(p.ivf_nprobe, nlist)
        fx.make_direct_map()
        log.info("trained IVF with %d lists on %d vectors", nlist, len(first))
        return fx

    @property
    def ntotal(self) -> int:
        return 0 if self._faiss is None else int(self._faiss.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        if len(vectors) == 0:
            return
        if self._faiss is None:
            self._faiss = self._create(vectors)
        self._faiss.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._faiss is None:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        return self._faiss.search(queries, k)

    def reconstruct(self, slots: np.ndarray) -> np.ndarray:
        if len(slots) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._faiss.reconstruct_batch(np.asarray(slots, dtype=np.int64))

    def memory_bytes(self) -> int:
        if self._faiss is None:
            return 0
        return int(import_faiss().serialize_index(self._faiss).nbytes)

    # -- snapshots ----------------------------------------------------------------------------
    @property
    def persisted(self) -> bool:
        """Whether snapshots store the structure (rebuilding a flat one from vectors is cheaper)."""
        return self.kind != "flat"

    def save(self, path: Path) -> None:
        import_faiss().write_index(self._faiss, str(path))

    @classmethod
    def load(cls, path: Path, kind: str, dim: int, params: IndexParams) -> "FaissStructure":
        faiss = import_faiss()
        try:
            fx = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise SnapshotError(f"{path}: unreadable {kind} index: {str(exc).splitlines()[0]}") from None
        if fx.d != dim:
            raise SnapshotError(f"{path}: {kind} index has dimension {fx.d}, manifest says {dim}")
        if (kind == "hnsw" and not hasattr(fx, "hnsw")) or (kind == "ivf" and not hasattr(fx, "nprobe")):
            raise SnapshotError(f"{path}: holds a {type(fx).__name__}, not the {kind} index the manifest names")
        structure = cls(kind, dim, params)
        if kind == "hnsw":
            fx.hnsw.efSearch = params.hnsw_ef_search
        elif kind == "ivf":
            fx.nprobe = min(params.ivf_nprobe, fx.nlist)
            fx.make_direct_map()
        structure._faiss = fx
        return structure

"""Does a compiled engine compute the same embeddings as the PyTorch model?

Checked on real catalogue titles, never on random tokens: int8 error depends on the activations
real text produces. Thresholds: fp32 max abs difference <= 1e-4; fp16 cosine >= 0.999;
int8 cosine >= 0.99 (worst text). Retrieval agreement is reported too: the mean overlap of the
top-10 neighbours of each text among all checked texts, by the engine and by the reference.

:func:`compare_embeddings` takes any two output arrays, so other models (the session encoder)
check their engines with it as well.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engines.errors import ParityError

log = logging.getLogger(__name__)

MAX_ABS_FP32 = 1e-4
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}


@dataclass(frozen=True)
class ParityReport:
    precision: str
    texts: int
    max_abs_diff: float
    min_cosine: float
    mean_cosine: float
    top10_overlap: float
    passed: bool
    rule: str

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (f"parity {verdict} ({self.precision}, {self.texts} texts): max|diff| {self.max_abs_diff:.2e}, "
                f"cosine min {self.min_cosine:.5f} mean {self.mean_cosine:.5f}, "
                f"top-10 overlap {self.top10_overlap:.3f}; rule: {self.rule}")


def catalogue_texts(n: int = 512, path: str | Path | None = None, seed: int = 0) -> list[str]:
    """``n`` product titles drawn (fixed seed) from the shipped catalogue, or one per line of ``path``."""
    if path is not None:
        titles = [t for t in Path(path).read_text().splitlines() if t.strip()]
    else:
        from index import default_catalog_path, load_catalog

        titles = [p.title for p in load_catalog(default_catalog_path())]
    if len(titles) <= n:
        return titles
    pick = np.random.default_rng(seed).choice(len(titles), n, replace=False)
    return [titles[i] for i in sorted(pick)]


def top_k_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """Mean |top-k(ref) ∩ top-k(cand)| / k, each row a query against all rows (itself excluded)."""
    k = min(k, len(reference) - 1)
    if k <= 0:
        return 1.0

    def top(x: np.ndarray) -> np.ndarray:
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k, axis=1)[:, :k]

    a, b = top(reference.astype(np.float32)), top(candidate.astype(np.float32))
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray, precision: str) -> ParityReport:
    """Compare row-aligned unit vectors from the reference model and from an engine."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ParityError(f"engine output shape {candidate.shape} differs from the reference {reference.shape}")
    if not np.isfinite(candidate).all():
        return ParityReport(precision, len(reference), float("inf"), -1.0, -1.0, 0.0, False, "finite outputs")
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cos = (reference * candidate).sum(axis=1) / np.maximum(norms, 1e-12)
    max_abs = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    if precision == "fp32":
        passed, rule = max_abs <= MAX_ABS_FP32, f"max|diff| <= {MAX_ABS_FP32:g}"
    else:
        threshold = MIN_COSINE[precision]
        passed, rule = float(cos.min()) >= threshold, f"min cosine >= {threshold}"
    return ParityReport(precision, len(reference), max_abs, float(cos.min()), float(cos.mean()),
                        top_k_overlap(reference, candidate), bool(passed), rule)


def check_parity(reference: Callable[[Sequence[str]], np.ndarray],
                 candidate: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str],
                 precision: str, *, strict: bool = True) -> ParityReport:
    """Encode ``texts`` with both and compare; raise :class:`ParityError` on failure if ``strict``."""
    report = compare_embeddings(reference(texts), candidate(texts), precision)
    log.info("%s", report)
    if strict and not report.passed:
        raise ParityError(str(report))
    return report

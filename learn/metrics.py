"""Ranking metrics under full ranking: one rank per user, then Recall, NDCG and MRR at K.

A rank is 0-based: the number of candidate items placed before the target. Ties are broken by
item index (what a stable top-K over the item table returns), so a method that scores many
items equally gets no credit it would not get in production.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray, excluded: Sequence[Iterable[int]] | None = None) -> np.ndarray:
    """0-based rank of ``targets[u]`` in row ``u`` of ``scores`` (B, N), excluded items left out.

    ``excluded[u]`` are item indices removed from user ``u``'s ranking (the live pipeline never
    recommends what a shopper bought). A target that is itself excluded can never be shown: its
    rank is ``N`` (a miss at every K).
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (B, N) and targets (B,), got {scores.shape} and {targets.shape}")
    rows = np.arange(len(targets))
    missed = np.zeros(len(targets), dtype=bool)
    if excluded is not None:
        for u, ex in enumerate(excluded):
            ex = np.fromiter(ex, dtype=np.int64)
            if len(ex):
                missed[u] = bool(np.any(ex == targets[u]))
                scores[u, ex] = -np.inf
    t = scores[rows, targets][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    before = (scores > t) | ((scores == t) & (cols < targets[:, None]))
    ranks = before.sum(axis=1).astype(np.int64)
    ranks[missed] = scores.shape[1]
    return ranks


def recall_at(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def ndcg_at(ranks: np.ndarray, k: int) -> float:
    """One relevant item per user: DCG = 1 / log2(rank + 2) inside the top K, ideal DCG = 1."""
    ranks = np.asarray(ranks)
    if not len(ranks):
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean())


def mrr_at(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    if not len(ranks):
        return 0.0
    return float(np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0).mean())


def top_k(scores: np.ndarray, k: int, excluded: Sequence[Iterable[int]] | None = None) -> np.ndarray:
    """Indices of the ``k`` best items per row (best first, ties by item index), exclusions removed."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if excluded is not None:
        for u, ex in enumerate(excluded):
            ex = list(ex)
            if ex:
                scores[u, ex] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    rows = np.arange(scores.shape[0])[:, None]
    order = np.lexsort((part, -scores[rows, part]), axis=1)
    return part[rows, order]


def coverage(top_lists: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's list."""
    if n_items <= 0:
        return 0.0
    return float(len(np.unique(np.asarray(top_lists).ravel())) / n_items)


def summarise(ranks: np.ndarray, ks: Sequence[int] = (10, 20), mrr_k: int = 20) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at(ranks, k)
    out[f"mrr@{mrr_k}"] = mrr_at(ranks, mrr_k)
    return out

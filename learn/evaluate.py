"""Offline evaluation: leave-one-out, full ranking over every product, one protocol for all methods.

For each shopper the method scores **every** product of the catalogue (no sampled negatives); the
products already in the shopper's input are removed from the ranking for every method alike (the
live pipeline never recommends what a shopper bought); the rank of the held-out product gives
Recall, NDCG and MRR at K, and the top lists give catalogue coverage.

Methods:
* ``popularity``: how often each product occurs in all shoppers' inputs of the fold;
* ``last-item-knn``: cosine of each product's title vector with the newest event's vector;
* ``pooling``: the live pipeline's :class:`engines.session.PoolingSessionEncoder` over title vectors
  (every event of these data sets is a purchase; with no clock every event is "now", so only the
  half-life in events, 8, weighs them), scored against title vectors like the plain text index;
* a trained session encoder (``engines.session_model``), scored against its own product vectors.
"""
from __future__ import annotations

import logging
import time
from typing import Protocol, Sequence

import numpy as np

from learn.data import SEARCH, Interactions, UserSequence
from learn.metrics import (
    coverage,
    mrr_at,
    ndcg_at,
    recall_at,
    summarise,
    target_ranks,
    top_k,
)
from learn.split import Fold

log = logging.getLogger(__name__)

CURVE_KS = (1, 2, 3, 5, 10, 15, 20, 30, 40, 50)


class Method(Protocol):
    name: str

    def scores(self, inputs: list[UserSequence]) -> np.ndarray:
        """``(len(inputs), n_items)`` scores, higher is better."""
        ...


def history_items(s: UserSequence, n_items: int) -> np.ndarray:
    return np.unique(s.tokens[(s.kinds != SEARCH) & (s.tokens < n_items)])


def score_fold(method: Method, data: Interactions, fold: Fold, *, top: int = 0, chunk: int = 1024,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Ranks of the fold's targets (and each shopper's top-``top`` products when ``top``)."""
    ranks, tops = [], []
    it = range(0, len(fold), chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=method.name, unit="chunk", leave=False)
    for i in it:
        inputs = fold.inputs[i:i + chunk]
        scores = method.scores(inputs)
        if scores.shape != (len(inputs), data.n_items):
            raise ValueError(f"{method.name}: scores of shape {scores.shape}, expected {(len(inputs), data.n_items)}")
        excluded = [history_items(s, data.n_items) for s in inputs]
        ranks.append(target_ranks(scores, fold.targets[i:i + chunk], excluded))
        if top:
            tops.append(top_k(scores, top, excluded))
    return np.concatenate(ranks), (np.concatenate(tops) if top else None)


def fold_ranks(method: Method, data: Interactions, fold: Fold) -> np.ndarray:
    return score_fold(method, data, fold)[0]


# -- baselines -----------------------------------------------------------------------------------
class Popularity:
    name = "popularity"

    def __init__(self, fold: Fold, n_items: int) -> None:
        counts = np.zeros(n_items, dtype=np.float64)
        for s in fold.inputs:
            items = s.tokens[(s.kinds != SEARCH) & (s.tokens < n_items)]
            np.add.at(counts, items, 1.0)
        self.counts = counts.astype(np.float32)

    def scores(self, inputs: list[UserSequence]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(inputs), len(self.counts))).copy()


class LastItemKNN:
    name = "last-item-knn"

    def __init__(self, text_vecs: np.ndarray, n_items: int) -> None:
        self.vecs, self.n_items = text_vecs, n_items

    def scores(self, inputs: list[UserSequence]) -> np.ndarray:
        last = np.stack([self.vecs[s.tokens[-1]] for s in inputs])
        return last @ self.vecs[:self.n_items].T


class Pooling:
    """The live pipeline's pooling user embedding against the plain text index."""

    name = "pooling"

    def __init__(self, text_vecs: np.ndarray, n_items: int, encoder=None) -> None:
        from engines.session import PoolingSessionEncoder

        self.vecs, self.n_items = text_vecs, n_items
        self.encoder = encoder or PoolingSessionEncoder(dim=text_vecs.shape[1])

    def scores(self, inputs: list[UserSequence]) -> np.ndarray:
        sessions, now = to_sessions(inputs, self.vecs)
        return self.encoder.embed(sessions, now) @ self.vecs[:self.n_items].T


def to_sessions(inputs: list[UserSequence], space: np.ndarray, *, keep_nan: bool = False):
    """:class:`engines.session.SessionSequence` objects as the live pipeline builds them.

    With no clock (NaN times) every event is stamped 0 and ``now`` is 0, unless ``keep_nan``
    (a trained encoder reads NaN as "unknown time", as in training).
    """
    from engines.session import SessionSequence
    from learn.data import KIND_CODES

    names = {code: kind for kind, code in KIND_CODES.items()}
    sessions, now = [], []
    for s in inputs:
        times = s.times if keep_nan else np.where(np.isfinite(s.times), s.times, 0.0)
        sessions.append(SessionSequence(space[s.tokens].astype(np.float32), [names[int(k)] for k in s.kinds], times))
        now.append(float(times[-1]) if len(times) and np.isfinite(times[-1]) else 0.0)
    return sessions, now


class TrainedEncoder:
    """A :class:`engines.session.SessionEncoder` with its product space (``item_vectors``)."""

    def __init__(self, encoder, text_vecs: np.ndarray, n_items: int, name: str | None = None,
                 item_ids: Sequence[str] | None = None) -> None:
        self.encoder = encoder
        self.n_items = n_items
        if item_ids is not None:      # a model with id vectors adds them to the products it knows
            ids = list(item_ids) + [None] * (len(text_vecs) - len(item_ids))
            self.space = encoder.item_vectors(text_vecs, item_ids=ids)
        else:
            self.space = encoder.item_vectors(text_vecs)      # products and queries in index space
        self.name = name or encoder.name
        # the live pipeline hands the encoder index vectors for products and text vectors for queries
        self._inputs = self.space.copy()
        self._inputs[n_items:] = text_vecs[n_items:]

    def scores(self, inputs: list[UserSequence]) -> np.ndarray:
        sessions, now = to_sessions(inputs, self._inputs, keep_nan=True)
        return self.encoder.embed(sessions, now) @ self.space[:self.n_items].T


# -- the report ----------------------------------------------------------------------------------
def evaluate(methods: Sequence[Method], data: Interactions, fold: Fold, *, ks: Sequence[int] = (10, 20),
             curve_ks: Sequence[int] = CURVE_KS, progress: bool = True) -> dict:
    """Metrics of each method on one fold, plus Recall/NDCG against K for the plot."""
    out = {}
    top = max(max(ks), max(curve_ks))
    for m in methods:
        t0 = time.perf_counter()
        ranks, tops = score_fold(m, data, fold, top=top, progress=progress)
        row = summarise(ranks, ks)
        for k in ks:
            row[f"coverage@{k}"] = coverage(tops[:, :k], data.n_items)
        row["curve"] = {"k": list(curve_ks), "recall": [recall_at(ranks, k) for k in curve_ks],
                        "ndcg": [ndcg_at(ranks, k) for k in curve_ks], "mrr": [mrr_at(ranks, k) for k in curve_ks]}
        row["seconds"] = round(time.perf_counter() - t0, 2)
        out[m.name] = row
        log.info("%s: recall@10 %.4f ndcg@10 %.4f (%.1fs)", m.name, row["recall@10"], row["ndcg@10"], row["seconds"])
    return out

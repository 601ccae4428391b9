"""User embeddings from a shopper's session: one interface, pooling now, a learned encoder later.

A session reaches the encoder as a :class:`SessionSequence` (vectors of the products and queries
the shopper touched, oldest first, with event types and times), never as Kafka or Faust objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

EVENT_TYPES: tuple[str, ...] = ("view", "click", "search", "add_to_cart", "purchase")
# the integer each event type is fed to a trained session network as (0 is padding)
KIND_CODES: dict[str, int] = {k: i + 1 for i, k in enumerate(EVENT_TYPES)}


@dataclass(frozen=True)
class SessionSequence:
    vectors: np.ndarray            # (L, dim) float32, unit rows, oldest first
    kinds: Sequence[str]           # event type of each row
    timestamps: np.ndarray         # (L,) float seconds since epoch

    def __len__(self) -> int:
        return len(self.kinds)


@runtime_checkable
class SessionEncoder(Protocol):
    name: str
    dim: int
    model_version: str

    def embed(self, sessions: Sequence[SessionSequence], now: Sequence[float]) -> np.ndarray:
        """``(len(sessions), dim)`` float32 unit vectors; an empty session gives a zero row."""
        ...


DEFAULT_TYPE_WEIGHTS: Mapping[str, float] = {
    "view": 1.0, "click": 1.5, "search": 1.2, "add_to_cart": 2.5, "purchase": 1.0,
}


@dataclass
class PoolingSessionEncoder:
    """Recency- and event-type-weighted mean of the session's vectors.

    weight_i = type_weight[kind_i] * 0.5 ** (age_i / half_life_s) * 0.5 ** (rank_i / half_life_events)
    where rank 0 is the newest event. Purchases weigh little by default: a bought product says
    less about what to show next than a product in the cart.
    """

    dim: int
    half_life_s: float = 1800.0
    half_life_events: float = 8.0
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    name: str = "pooling"
    model_version: str = "pooling-v1"

    def embed(self, sessions: Sequence[SessionSequence], now: Sequence[float]) -> np.ndarray:
        out = np.zeros((len(sessions), self.dim), dtype=np.float32)
        for i, (s, t) in enumerate(zip(sessions, now)):
            n = len(s)
            if n == 0:
                continue
            age = np.maximum(0.0, float(t) - np.asarray(s.timestamps, dtype=np.float64))
            rank = np.arange(n - 1, -1, -1, dtype=np.float64)
            w = np.array([self.type_weights.get(k, 1.0) for k in s.kinds], dtype=np.float64)
            w *= np.power(0.5, age / self.half_life_s) * np.power(0.5, rank / self.half_life_events)
            if w.sum() <= 0:
                w = np.ones(n)
            v = (w[:, None] * s.vectors).sum(axis=0)
            norm = np.linalg.norm(v)
            if norm > 0:
                out[i] = v / norm
        return out

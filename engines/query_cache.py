"""An LRU cache in front of a text encoder: shoppers repeat head queries."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from engines.base import TextEncoder


class QueryEmbeddingCache:
    def __init__(self, encoder: TextEncoder, capacity: int = 50_000) -> None:
        self.encoder = encoder
        self.capacity = capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def normalise(query: str) -> str:
        return " ".join(query.lower().split())

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """One encoder call for all misses in ``queries``; rows in input order."""
        keys = [self.normalise(q) for q in queries]
        missing: dict[str, None] = {}
        for k in keys:
            if k in self._cache:
                self._cache.move_to_end(k)
                self.hits += 1
            else:
                self.misses += 1
                missing[k] = None
        if missing:
            vecs = self.encoder.encode(list(missing))
            for k, v in zip(missing, vecs):
                self._cache[k] = v
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        if not keys:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

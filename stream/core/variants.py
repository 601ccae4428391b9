"""A/B variants: which session model serves which shopper, and one recommender per variant.

``SHOPSTREAM_VARIANTS`` names each variant, its session model and its weight::

    control=pooling:50,candidate=var/models/session-tf-1234:50
    control=pooling:90,candidate=default@var/index/tower:10     (an explicit index after @)

A shopper's variant is a keyed hash (BLAKE2b) of the user id into 10,000 buckets, split by
weight in the order given: the same shopper gets the same variant on every worker and after every
restart, and nobody can choose theirs without the key. Pure: no Kafka, no models loaded here.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from stream.errors import ConfigError

BUCKETS = 10_000
DEFAULT_VARIANT = "default"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class VariantSpec:
    name: str
    model: str                 # "pooling", "default" (the shipped trained encoder) or an artifact path
    weight: float
    index: str = ""            # an index snapshot for the model's product space ("" = found by convention)


def parse_variants(spec: str) -> tuple[VariantSpec, ...]:
    """``name=model[@index]:weight,...`` -> specs; ConfigError (one line) for a bad spec."""
    out: list[VariantSpec] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, eq, rest = part.partition("=")
        model, colon, weight = rest.rpartition(":")
        name = name.strip()
        if not eq or not colon or not model.strip():
            raise ConfigError(f"SHOPSTREAM_VARIANTS: {part!r} is not name=model:weight "
                              "(e.g. control=pooling:50,candidate=PATH:50)")
        if not _NAME.match(name):
            raise ConfigError(f"SHOPSTREAM_VARIANTS: variant name {name!r} must be a letter then letters, "
                              "digits, _ or - (at most 32)")
        try:
            w = float(weight)
        except ValueError:
            raise ConfigError(f"SHOPSTREAM_VARIANTS: weight {weight!r} of {name!r} is not a number") from None
        if not w >= 0:
            raise ConfigError(f"SHOPSTREAM_VARIANTS: weight of {name!r} must not be negative")
        model, _, index = model.strip().partition("@")
        out.append(VariantSpec(name, model.strip(), w, index.strip()))
    if not out:
        raise ConfigError("SHOPSTREAM_VARIANTS names no variant")
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"SHOPSTREAM_VARIANTS names a variant twice: {', '.join(names)}")
    if sum(v.weight for v in out) <= 0:
        raise ConfigError("SHOPSTREAM_VARIANTS: the weights add up to 0")
    return tuple(out)


def bucket_of(user_id: str, key: str) -> int:
    """The shopper's bucket in 0..9999: BLAKE2b keyed with ``key`` (stable everywhere)."""
    digest = hashlib.blake2b(user_id.encode(), key=key.encode()[:64], digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def assign(user_id: str, weights: Sequence[tuple[str, float]], key: str) -> str:
    """The variant (by name) ``user_id`` is in, with buckets split by weight in the order given."""
    total = sum(w for _, w in weights)
    b = bucket_of(user_id, key)
    edge = 0.0
    for name, w in weights:
        edge += w / total * BUCKETS
        if b < edge:
            return name
    return weights[-1][0]


@dataclass(frozen=True)
class Arm:
    """One variant being served: its name, weight and recommender (session model + its index)."""

    name: str
    weight: float
    recommender: Any           # stream.core.recommender.Recommender
    products: Any = None       # the encoder of its index's product space (catalogue updates)


class VariantRecommender:
    """Recommends each shopper with their variant's recommender: one encoder call and one index
    search per variant per batch. ``set_arms`` replaces the variants atomically between batches."""

    def __init__(self, arms: Sequence[Arm], key: str) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._arms: tuple[Arm, ...] = ()
        self.set_arms(arms)

    @property
    def arms(self) -> tuple[Arm, ...]:
        return self._arms

    def set_arms(self, arms: Sequence[Arm]) -> tuple[Arm, ...]:
        arms = tuple(arms)
        if not arms or sum(a.weight for a in arms) <= 0:
            raise ConfigError("at least one variant with a positive weight must be served")
        for a in arms:
            a.recommender.variant = a.name
        with self._lock:
            old, self._arms = self._arms, arms
        return old

    @property
    def clock(self) -> Any:
        return self._arms[0].recommender.clock

    @clock.setter
    def clock(self, value: Any) -> None:
        for a in self._arms:
            a.recommender.clock = value

    def variant_of(self, user_id: str) -> str:
        arms = self._arms
        if len(arms) == 1:
            return arms[0].name
        return assign(user_id, [(a.name, a.weight) for a in arms], self.key)

    def recommend(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        with self._lock:
            arms = self._arms                 # one set of variants for the whole batch
        if len(arms) == 1:
            return arms[0].recommender.recommend(batch)
        weights = [(a.name, a.weight) for a in arms]
        groups: dict[str, list[int]] = {}
        for i, ub in enumerate(batch):
            groups.setdefault(assign(ub.user_id, weights, self.key), []).append(i)
        out: list[Any] = [None] * len(batch)
        for arm in arms:
            idx = groups.get(arm.name)
            if not idx:
                continue
            for i, rec in zip(idx, arm.recommender.recommend([batch[i] for i in idx])):
                out[i] = rec
        return out

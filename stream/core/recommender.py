"""From folded sessions to recommendations: one batched encoder call, one batched index search.

Pure of Kafka and Faust, so the worker, the replay command and the benchmarks share it.
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from engines import QueryEmbeddingCache, SessionEncoder, SessionSequence
from index import ItemIndex
from stream.core.metrics import Metrics
from stream.core.schema import SCHEMA_VERSION, Event
from stream.core.session_state import SessionLimits, excluded_products, timeline


_SECONDS: dict[int, str] = {}      # whole seconds since the epoch -> "YYYY-MM-DDTHH:MM:SS" (UTC)
_SECONDS_KEPT = 4096


def iso(ts: float) -> str:
    """``ts`` (seconds since the epoch) as RFC 3339 UTC text to the millisecond, e.g.
    ``2026-12-05T08:30:00.123Z``: exactly ``datetime.fromtimestamp(ts, timezone.utc).isoformat(
    timespec="milliseconds")`` with ``Z`` -- rounded to the microsecond half to even as that does,
    then cut to the millisecond -- without a datetime per call (building one was 8% of the core with
    every event a new shopper: two per recommendation)."""
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole += 1.0
        us -= 1_000_000
    elif us < 0:
        whole -= 1.0
        us += 1_000_000
    second = int(whole)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        text = _SECONDS[second] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{us // 1000:03d}Z"


@dataclass
class UserBatch:
    """One user's events in a micro-batch and their session state after folding them."""

    user_id: str
    state: dict[str, Any]
    events: list[Event]

    @property
    def latest(self) -> float:
        """The event time of the newest of ``events``."""
        events = self.events
        if len(events) == 1:             # most shoppers' share of a batch; max() over a generator is ~1 us
            return events[0].ts
        return max(e.ts for e in events)


class IndexHolder:
    """The index in use; swapped atomically for a new snapshot while the stream runs.

    ``lock`` is held by whoever reads or changes the live index as a whole: a batch's
    recommendations (so one batch sees one consistent index) and a catalogue update's mutations.
    Embedding new product titles happens outside it.
    """

    def __init__(self, index: ItemIndex) -> None:
        self._index = index
        self._lock = threading.Lock()
        self.lock = threading.RLock()

    @property
    def current(self) -> ItemIndex:
        return self._index

    def swap(self, new: ItemIndex) -> ItemIndex:
        with self._lock:
            old, self._index = self._index, new
        return old


class OneEventResults:
    """The vector and candidates of sessions of one event, kept for the next session like it.

    A session that holds one event -- a new shopper's first, most of a shop's traffic from outside
    -- gets a vector and candidates that are a function of that event alone: its type, its product
    or query, the products excluded for it and the time since it (zero), for one index revision,
    one pair of encoders and one ``top_k``. The next session that starts the same way takes them
    from here, without an encoder call or a search. Bounded (the least recently used go first) and
    emptied whenever the index, an encoder or ``top_k`` changes. ``size`` 0 keeps nothing.
    """

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._kept: OrderedDict[tuple, tuple[np.ndarray, list[dict]]] = OrderedDict()
        self._of: tuple[int, ...] = ()  # what the kept results were made with: ids, the index revision, top_k
        self._held: tuple = ()           # the objects of those ids, held so that no other object takes an id

    def current(self, index: ItemIndex, session_encoder: Any, query_encoder: Any, top_k: int) -> "OneEventResults":
        of = (id(index), index.revision, id(session_encoder), id(query_encoder), top_k)
        if of != self._of:
            self._kept.clear()
            self._of, self._held = of, (index, session_encoder, query_encoder)
        return self

    def get(self, key: tuple) -> tuple[np.ndarray, list[dict]] | None:
        got = self._kept.get(key)
        if got is not None:
            self._kept.move_to_end(key)
        return got

    def put(self, key: tuple, vector: np.ndarray, items: list[dict]) -> None:
        if self.size <= 0:
            return
        self._kept[key] = (vector.copy(), items)     # a copy: a row would hold the batch's array
        if len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kept)


@dataclass
class Recommender:
    index: IndexHolder
    queries: QueryEmbeddingCache
    session_encoder: SessionEncoder
    limits: SessionLimits = field(default_factory=SessionLimits)
    top_k: int = 10
    search_blend: float = 0.5
    clock: Any = None
    metrics: Metrics = field(default_factory=Metrics)
    popularity: Counter = field(default_factory=Counter)
    variant: str = "default"                 # the A/B variant this recommender serves (stream.core.variants)
    one_event: OneEventResults = field(default_factory=OneEventResults)

    @property
    def model_version(self) -> str:
        return self.queries.encoder.model_version

    def recommend(self, batch: Sequence[UserBatch]) -> list[dict[str, Any]]:
        if not batch:
            return []
        with self.index.lock:               # one consistent index for the whole batch
            return self._recommend(self.index.current, batch)

    def _recommend(self, index: ItemIndex, batch: Sequence[UserBatch]) -> list[dict[str, Any]]:
        for ub in batch:
            for e in ub.events:
                if e.item_id is not None:
                    self.popularity[e.item_id] += 1
        timelines = [timeline(ub.state) for ub in batch]
        exclusions = [excluded_products(ub.state, self.limits) for ub in batch]
        now = [ub.latest for ub in batch]
        kept = self.one_event.current(index, self.session_encoder, self.queries.encoder, self.top_k)
        keys: list[tuple | None] = [None] * len(batch)
        known: dict[int, tuple[np.ndarray, list[dict]]] = {}
        for i, (tl, excl) in enumerate(zip(timelines, exclusions)):
            if len(tl) == 1 and kept.size:   # a session of one event: its result is a function of it
                kind, value, ts = tl[0]
                keys[i] = key = (kind, value, now[i] - ts, frozenset(excl))
                got = kept.get(key)
                if got is not None:
                    known[i] = got
        todo = [i for i in range(len(batch)) if i not in known] if known else list(range(len(batch)))
        fresh = self._search(index, [timelines[i] for i in todo], [now[i] for i in todo],
                             [exclusions[i] for i in todo]) if todo else []
        results: list[tuple[np.ndarray, list[dict] | None]] = [None] * len(batch)   # type: ignore[list-item]
        for i, got in known.items():
            results[i] = got
        for i, (vec, cands) in zip(todo, fresh):
            if not vec.any():              # the method: np.any() costs ~10 us of Python per call
                results[i] = (vec, None)
                continue
            items = [{"product_id": c.product_id, "score": round(c.score, 6)} for c in cands]
            results[i] = (vec, items)
            if keys[i] is not None:
                kept.put(keys[i], vec, items)
        self.metrics.on_one_event_results(len(known), len(todo))

        produced_at = iso(self._now())
        recs = []
        for ub, (vec, items), excl in zip(batch, results, exclusions):
            items = self._popular(index, excl) if items is None else list(items)
            event_ids = [e.event_id for e in ub.events]
            rec: dict[str, Any] = {
                "schema_version": SCHEMA_VERSION,
                "recommendation_id": self._rec_id(ub.user_id, event_ids, index.version),
                "user_id": ub.user_id,
                "session_id": ub.state["session_id"],
                "items": items,
                "event_ids": event_ids,
                "model_version": self.model_version,
                "session_model_version": self.session_encoder.model_version,
                "index_version": index.version,
                "variant": self.variant,
                "event_time": iso(now[len(recs)]),
                "produced_at": produced_at,
            }
            search = None
            for e in reversed(ub.events):
                if e.type == "search" and e.results:
                    search = e
                    break
            if search is not None:
                rec["search"] = {"event_id": search.event_id, "query": search.query,
                                 "items": self.rerank(index, vec, search.results)}
            recs.append(rec)
        return recs

    def _search(self, index: ItemIndex, timelines: list, now: list[float],
                exclusions: list[set[str]]) -> list[tuple[np.ndarray, list]]:
        """Each session's vector (one batched encoder call) and its candidates (one batched search)."""
        query_texts = sorted({v for tl in timelines for kind, v, _ in tl if kind == "search"})
        t0 = time.perf_counter()
        query_vecs = dict(zip(query_texts, self.queries.encode(query_texts))) if query_texts else {}
        self.metrics.observe_encoder(time.perf_counter() - t0)
        product_ids = sorted({v for tl in timelines for kind, v, _ in tl if kind != "search" and v in index})
        product_vecs = dict(zip(product_ids, index.vectors_of(product_ids))) if product_ids else {}

        sequences = []
        for tl in timelines:
            rows = [(kind, (query_vecs if kind == "search" else product_vecs).get(v), ts) for kind, v, ts in tl]
            rows = [r for r in rows if r[1] is not None]
            vecs = np.stack([r[1] for r in rows]) if rows else np.zeros((0, index.dim), np.float32)
            sequences.append(SessionSequence(vecs, [r[0] for r in rows], np.array([r[2] for r in rows])))
        user_vecs = self.session_encoder.embed(sequences, now)
        t0 = time.perf_counter()
        found = index.search(user_vecs, self.top_k, exclude=exclusions)
        self.metrics.observe_index(time.perf_counter() - t0)
        return list(zip(user_vecs, found))

    def rerank(self, index: ItemIndex, user_vec: np.ndarray, results: Sequence[str]) -> list[dict]:
        """Blend the storefront's order with the shopper's affinity.

        score = blend * cosine(user, product) + (1 - blend) * (1 - rank / n)
        Products the index does not know keep their storefront score alone (affinity 0).
        """
        n = len(results)
        order = 1.0 - np.arange(n, dtype=np.float32) / max(n, 1)
        affinity = index.score(user_vec[None, :], [list(results)])[0]
        affinity = np.where(np.isfinite(affinity), affinity, 0.0)
        if not user_vec.any():
            affinity = np.zeros_like(affinity)
        scores = self.search_blend * affinity + (1.0 - self.search_blend) * order
        ranked = sorted(range(n), key=lambda i: (-scores[i], i))
        seen: set[str] = set()
        out = []
        for i in ranked:
            if results[i] not in seen:
                seen.add(results[i])
                out.append({"product_id": results[i], "score": round(float(scores[i]), 6)})
        return out

    def _popular(self, index: ItemIndex, excluded: set[str]) -> list[dict]:
        out = []
        for pid, count in self.popularity.most_common(self.top_k + len(excluded) + 10):
            p = index.products.get(pid)
            if p is not None and p.in_stock and pid not in excluded:
                out.append({"product_id": pid, "score": 0.0})
                if len(out) == self.top_k:
                    break
        return out

    def _rec_id(self, user_id: str, event_ids: list[str], index_version: str) -> str:
        parts = (user_id, index_version, self.model_version, self.session_encoder.model_version, *event_ids)
        return hashlib.blake2b(("\x1f".join(parts) + "\x1f").encode(), digest_size=12).hexdigest()

    def _now(self) -> float:
        return (self.clock or time.time)()

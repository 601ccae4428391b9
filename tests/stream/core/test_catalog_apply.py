"""Catalogue records applied to a real index with the real text encoder (no broker needed)."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from index import CatalogError, ItemIndex, Product, load_snapshot
from stream.core.catalog import apply_prepared, apply_updates, parse_record, prepare_updates
from stream.core.metrics import Metrics
from stream.core.recommender import IndexHolder


def rec(key, value, offset):
    return SimpleNamespace(key=key, value=value, partition=0, offset=offset)


def test_parse_record():
    u = parse_record(b"p1", orjson.dumps({"id": "p1", "title": "Red mug", "price": 3}), 0, 7)
    assert u.product == Product("p1", "Red mug", price=3.0) and u.offset == 7
    assert parse_record(b"p1", None, 0, 8).product is None             # tombstone: delete
    for key, value in [(None, b"{}"), (b"p1", b"not json"), (b"p1", orjson.dumps({"id": "p2", "title": "x"})),
                       (b"p1", orjson.dumps({"id": "p1"}))]:
        with pytest.raises(CatalogError):
            parse_record(key, value, 0, 9)


def test_apply_updates_embeds_only_changed_text(index_snapshot, text_encoder):
    index = load_snapshot(index_snapshot, dim=text_encoder.dim, model_version=text_encoder.model_version)
    first, second, third = list(index.products.values())[:3]
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return text_encoder.encode(texts)

    clone = Product("NEW-1", first.title, category=first.category, brand=first.brand)
    updates = [parse_record(k, v, 0, i) for i, (k, v) in enumerate([
        (b"NEW-1", orjson.dumps(clone.to_dict())),
        (second.id.encode(), orjson.dumps({**second.to_dict(), "in_stock": False})),   # record only
        (third.id.encode(), None),                                                     # delete
    ])]
    done = apply_updates(index, updates, encode)
    assert calls == [[clone.text]]                     # only the new text was embedded
    assert {u.product_id for u in done} == {"NEW-1", second.id, third.id}
    assert all(u.vector is not None for u in done if u.product is not None)
    q = index.vectors_of([first.id])
    top = [c.product_id for c in index.search(q, 5, exclude=[{first.id}])[0]]
    assert top[0] == "NEW-1"                           # same text, same vector
    near = [c.product_id for c in index.search(index.vectors_of([second.id]), 50)[0]]
    assert second.id not in near and third.id not in index


def test_prepare_only_reads_and_apply_only_writes(index_snapshot, text_encoder):
    index = load_snapshot(index_snapshot, dim=text_encoder.dim, model_version=text_encoder.model_version)
    first, second = list(index.products.values())[:2]
    updates = [parse_record(b"NEW-2", orjson.dumps({"id": "NEW-2", "title": first.title}), 0, 0),
               parse_record(second.id.encode(), None, 0, 1)]
    before = (len(index), set(index.products))
    prepared = prepare_updates(index, updates, text_encoder.encode)
    assert (len(index), set(index.products)) == before           # nothing changed yet
    assert [u.product_id for u in prepared.with_vector] == ["NEW-2"] and prepared.with_vector[0].vector is not None
    done = apply_prepared(prepared)
    assert "NEW-2" in index and second.id not in index and len(done) == 2


# -- the live index under concurrent batches (a small synthetic index, no model) ------------------
DIM = 16
GROUP = 20


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


class TableEncoder:
    """Product text -> a fixed vector: group A and B titles lie near ``QUERY``, the rest far away."""

    dim, model_version = DIM, "table-test"

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        self.query = unit(rng.normal(size=DIM))
        self.vectors = {}
        for g in "AB":
            for i in range(GROUP):
                self.vectors[f"{g}-{i}"] = unit(self.query + 0.05 * rng.normal(size=DIM))
        for i in range(200):
            self.vectors[f"base-{i}"] = unit(-self.query + 0.5 * rng.normal(size=DIM))
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vectors[t] for t in texts])


def catalog_sync(encoder: TableEncoder, products: list[Product]):
    from stream.live.catalog_sync import CatalogSync
    from stream.settings import Settings

    index = ItemIndex(DIM, model_version=encoder.model_version, version="live")
    index.upsert(products, encoder.encode([p.text for p in products]))
    holder = IndexHolder(index)
    services = SimpleNamespace(index=holder, products=encoder, metrics=Metrics())
    return CatalogSync(Settings(), services), holder


def records(pairs, start: int):
    return [SimpleNamespace(key=pid.encode(), value=None if title is None else orjson.dumps({"id": pid, "title": title}),
                            partition=0, offset=start + i) for i, (pid, title) in enumerate(pairs)]


def test_titles_are_embedded_outside_the_lock_and_the_index_changes_only_between_batches():
    encoder = TableEncoder()
    sync, holder = catalog_sync(encoder, [Product(f"p{i}", f"base-{i}") for i in range(200)])
    done = threading.Event()
    with holder.lock:                                  # a batch of recommendations is running
        worker = threading.Thread(target=lambda: (sync.apply_records(records([("a0", "A-0")], 0)), done.set()))
        worker.start()
        deadline = time.monotonic() + 10
        while ["A-0"] not in encoder.calls:              # embedding goes on while the batch holds the lock
            assert time.monotonic() < deadline, "embedding waited for the batch to end"
            time.sleep(0.01)
        time.sleep(0.1)
        assert "a0" not in holder.current and not done.is_set()     # the change waits for the batch
    worker.join(10)
    assert done.is_set() and "a0" in holder.current


def test_a_search_during_a_catalogue_apply_sees_the_old_or_the_new_index_never_a_half():
    encoder = TableEncoder()
    group = {g: [(f"{g.lower()}{i}", f"{g}-{i}") for i in range(GROUP)] for g in "AB"}
    base = [Product(f"p{i}", f"base-{i}") for i in range(200)]
    sync, holder = catalog_sync(encoder, base + [Product(pid, title) for pid, title in group["A"]])
    ids = {g: {pid for pid, _ in pairs} for g, pairs in group.items()}
    stop, seen, errors = threading.Event(), {"A": 0, "B": 0}, []

    def batches():
        while not stop.is_set():
            with holder.lock:                          # what the recommender holds for one batch
                index = holder.current
                found = {c.product_id for c in index.search(encoder.query[None, :], GROUP)[0]}
                size = len(index)
            which = [g for g in "AB" if found == ids[g]]
            if not which or size != len(base) + GROUP:
                errors.append((sorted(found), size))
                return
            seen[which[0]] += 1

    reader = threading.Thread(target=batches)
    reader.start()
    offset, current = 0, "A"
    try:
        for _ in range(60):                            # swap group A for group B and back, in one update each
            nxt = "B" if current == "A" else "A"
            pairs = [(pid, None) for pid, _ in group[current]] + group[nxt]
            sync.apply_records(records(pairs, offset))
            offset += len(pairs)
            current = nxt
            time.sleep(0.001)
            if errors:
                break
    finally:
        stop.set()
        reader.join(10)
    assert not errors, f"a batch saw a half-applied update: {errors[0]}"
    assert seen["A"] and seen["B"], f"the reader never saw both sides: {seen}"

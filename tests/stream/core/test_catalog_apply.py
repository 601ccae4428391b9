"""Catalogue records applied to a real index with the real text encoder (no broker needed)."""
from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from index import CatalogError, Product, load_snapshot
from stream.core.catalog import apply_updates, parse_record


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

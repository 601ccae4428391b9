"""Catalogue updates as data: a catalog-topic record parsed into an update, and updates applied to an index.

Pure of Kafka: the live worker's catalogue sync and the tests drive it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import orjson

from index import CatalogError, ItemIndex, Product


@dataclass(frozen=True)
class CatalogUpdate:
    """One applied update: ``product`` None means deleted. ``vector`` is kept for a hot swap."""

    partition: int
    offset: int
    product_id: str
    product: Product | None
    vector: np.ndarray | None = None


def parse_record(key: bytes | None, value: bytes | None, partition: int, offset: int) -> CatalogUpdate:
    """A catalog-topic record as an update; raises :class:`index.CatalogError` for a bad one."""
    if not key:
        raise CatalogError("catalogue record without a key (the key must be the product id)")
    pid = key.decode("utf-8", "replace")
    if value is None:
        return CatalogUpdate(partition, offset, pid, None)
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"product {pid!r}: value is not JSON ({exc})") from None
    product = Product.from_mapping(raw, where=f"catalog record {partition}/{offset}: ")
    if product.id != pid:
        raise CatalogError(f"catalog record {partition}/{offset}: key {pid!r} but product id {product.id!r}")
    return CatalogUpdate(partition, offset, pid, product)


def apply_updates(index: ItemIndex, updates: Sequence[CatalogUpdate], encode) -> list[CatalogUpdate]:
    """Apply ``updates`` (in order; the last per product wins) to ``index``.

    Products whose text changed (or that are new) are embedded with ``encode`` in one call; an
    update that carries its vector is not embedded again. Returns the updates with their vectors.
    """
    last: dict[str, CatalogUpdate] = {}
    for u in updates:
        last[u.product_id] = u
    deletes = [u for u in last.values() if u.product is None]
    record_only, with_vector, to_embed = [], [], []
    for u in last.values():
        if u.product is None:
            continue
        old = index.products.get(u.product_id)
        if old is not None and old.text == u.product.text:
            record_only.append(u)                  # same text, same vector: price, stock, ...
        elif u.vector is not None:
            with_vector.append(u)
        else:
            to_embed.append(u)
    if to_embed:
        vectors = np.asarray(encode([u.product.text for u in to_embed]), dtype=np.float32)
        with_vector += [CatalogUpdate(u.partition, u.offset, u.product_id, u.product, v)
                        for u, v in zip(to_embed, vectors)]
    if deletes:
        index.remove([u.product_id for u in deletes])
    if record_only:
        kept = index.vectors_of([u.product_id for u in record_only])
        record_only = [CatalogUpdate(u.partition, u.offset, u.product_id, u.product, v)
                       for u, v in zip(record_only, kept)]
        for u in record_only:
            index.update_product(u.product)
    if with_vector:
        index.upsert([u.product for u in with_vector], np.stack([u.vector for u in with_vector]))
    return deletes + record_only + with_vector

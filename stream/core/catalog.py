"""Catalogue updates as data: a catalog-topic record parsed into an update, and updates applied to an index.

Pure of Kafka: the live worker's catalogue sync and the tests drive it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import orjson

from index import CatalogError, ItemIndex, Product
from index.build import encode_products


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


@dataclass(frozen=True)
class PreparedUpdates:
    """Updates decided and embedded against ``index``, not yet applied to it.

    The slow part of an update (embedding new titles) is done by :func:`prepare_updates`, outside
    any lock; :func:`apply_prepared` only changes the index, quickly, and is what a caller holds
    the live index's lock around. The two must see the same index with no other writer between
    them: ``record_only`` relies on the products it found still being there.
    """

    index: ItemIndex
    deletes: list[CatalogUpdate]
    record_only: list[CatalogUpdate]       # same text: only the record changes; carry the kept vector
    with_vector: list[CatalogUpdate]       # new or re-titled products, with their (new) vectors

    @property
    def updates(self) -> list[CatalogUpdate]:
        return self.deletes + self.record_only + self.with_vector


def prepare_updates(index: ItemIndex, updates: Sequence[CatalogUpdate], encode) -> PreparedUpdates:
    """Decide what ``updates`` (in order; the last per product wins) do to ``index``, and embed.

    Products whose text changed (or that are new) are embedded with ``encode`` in one call (with
    their ids when ``encode`` takes them: :func:`index.build.encode_products`); an
    update that carries its vector is not embedded again. ``index`` is only read.
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
        vectors = np.asarray(encode_products([u.product for u in to_embed], encode), dtype=np.float32)
        with_vector += [CatalogUpdate(u.partition, u.offset, u.product_id, u.product, v)
                        for u, v in zip(to_embed, vectors)]
    if record_only:
        kept = index.vectors_of([u.product_id for u in record_only])
        record_only = [CatalogUpdate(u.partition, u.offset, u.product_id, u.product, v)
                       for u, v in zip(record_only, kept)]
    return PreparedUpdates(index, deletes, record_only, with_vector)


def apply_prepared(prepared: PreparedUpdates) -> list[CatalogUpdate]:
    """Change the index the updates were prepared against; returns the updates with their vectors."""
    index = prepared.index
    if prepared.deletes:
        index.remove([u.product_id for u in prepared.deletes])
    for u in prepared.record_only:
        index.update_product(u.product)
    if prepared.with_vector:
        index.upsert([u.product for u in prepared.with_vector],
                     np.stack([u.vector for u in prepared.with_vector]))
    return prepared.updates


def apply_updates(index: ItemIndex, updates: Sequence[CatalogUpdate], encode) -> list[CatalogUpdate]:
    """Prepare and apply ``updates`` to ``index`` in one go (an index no one else is reading).

    The live worker prepares outside the index lock and applies inside it instead
    (:class:`stream.live.catalog_sync.CatalogSync`).
    """
    return apply_prepared(prepare_updates(index, updates, encode))

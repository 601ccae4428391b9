"""Catalogue updates as data: a catalog-topic record parsed into an update, and updates applied to an index.

Pure of Kafka: the live worker's catalogue sync and the tests drive it.

A record of any shape parses into an update or raises :class:`InvalidCatalogRecord` (a
:class:`index.CatalogError`) with a short ``reason``; nothing else escapes :func:`parse_record`.
What a worker keeps from a record is bounded:

- the key (the product id): at most :data:`MAX_KEY_BYTES`, UTF-8;
- the value: at most :data:`MAX_VALUE_BYTES` (refused before it is parsed); a JSON object whose
  ``id`` and ``title`` are strings (an integer id is taken as its digits), ``category`` and ``brand``
  strings or null, ``price`` a finite number >= 0 or null, ``in_stock`` a boolean;
- of the value only the product's fields are kept: the title cut to ``index.catalog.MAX_TITLE_CHARS``
  (512) characters, category and brand to :data:`MAX_FIELD_CHARS`; any other field is dropped;
- headers are not read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import orjson

from index import CatalogError, ItemIndex, Product
from index.build import encode_products

MAX_KEY_BYTES = 256            # a product id
MAX_VALUE_BYTES = 64 * 1024    # a product record; a real one is a few hundred bytes
MAX_FIELD_CHARS = 256          # category, brand


class InvalidCatalogRecord(CatalogError):
    """A catalog-topic record that is not a product update; ``reason`` is a short code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class CatalogUpdate:
    """One applied update: ``product`` None means deleted. ``vector`` is kept for a hot swap."""

    partition: int
    offset: int
    product_id: str
    product: Product | None
    vector: np.ndarray | None = None


def parse_record(key: bytes | None, value: bytes | None, partition: int, offset: int) -> CatalogUpdate:
    """A catalog-topic record as an update; raises :class:`InvalidCatalogRecord` for a bad one."""
    if not key:
        raise InvalidCatalogRecord("no_key", "catalogue record without a key (the key must be the product id)")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidCatalogRecord("key_too_long", f"key of {len(key)} bytes (at most {MAX_KEY_BYTES})")
    try:
        pid = key.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidCatalogRecord("key_not_utf8", f"key {key[:40]!r} is not UTF-8") from None
    if not pid:
        raise InvalidCatalogRecord("no_key", "catalogue record with a blank key")
    if value is None:
        return CatalogUpdate(partition, offset, pid, None)
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidCatalogRecord("too_large", f"product {pid!r}: value of {len(value)} bytes "
                                                f"(at most {MAX_VALUE_BYTES})")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidCatalogRecord("not_json", f"product {pid!r}: value is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        kind = {type(None): "null", str: "string", list: "array", bool: "boolean"}.get(type(raw), "number")
        raise InvalidCatalogRecord("not_an_object", f"product {pid!r}: value is a JSON {kind}, not an object")
    problem = _field_problem(raw)
    if problem:
        raise InvalidCatalogRecord("invalid_field", f"product {pid!r}: {problem}")
    fields = {k: raw[k] for k in ("id", "title", "category", "brand", "price", "in_stock") if k in raw}
    for name in ("category", "brand"):
        if isinstance(fields.get(name), str):
            fields[name] = fields[name][:MAX_FIELD_CHARS]
    try:
        product = Product.from_mapping(fields, where=f"catalog record {partition}/{offset}: ")
    except CatalogError as exc:
        raise InvalidCatalogRecord("invalid_field", str(exc)) from None
    if product.id != pid:
        raise InvalidCatalogRecord("key_mismatch", f"catalog record {partition}/{offset}: key {pid!r} "
                                                   f"but product id {product.id!r}")
    return CatalogUpdate(partition, offset, pid, product)


def _field_problem(raw: dict[str, Any]) -> str | None:
    """Why the product fields of ``raw`` have the wrong type, or None (values are checked later)."""
    pid = raw.get("id")
    if not (isinstance(pid, str) or (isinstance(pid, int) and not isinstance(pid, bool))):
        return f"'id' must be a string, not {type(pid).__name__}"
    if not isinstance(raw.get("title"), str):
        return f"'title' must be a string, not {type(raw.get('title')).__name__}"
    for name in ("category", "brand"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            return f"{name!r} must be a string or null, not {type(raw[name]).__name__}"
    price = raw.get("price")
    if price is not None and price != "":
        if isinstance(price, bool) or not isinstance(price, (int, float, str)):
            return f"'price' must be a number, not {type(price).__name__}"
        try:
            finite = math.isfinite(float(price))
        except (TypeError, ValueError, OverflowError):
            return f"'price' {str(price)[:40]!r} is not a number"
        if not finite:
            return f"'price' {str(price)[:40]!r} is not a finite number"
    if not isinstance(raw.get("in_stock", True), (bool, str)):
        return f"'in_stock' must be a boolean, not {type(raw['in_stock']).__name__}"
    return None


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

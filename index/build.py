"""Embed a catalogue into an :class:`ItemIndex` (the explicit build step; serving only loads)."""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from index.catalog import Product
from index.item_index import ItemIndex
from index.kinds import IndexParams, choose_kind

log = logging.getLogger(__name__)

Encode = Callable[[Sequence[str]], np.ndarray]


def takes_ids(encode: Encode) -> bool:
    """Whether ``encode`` also takes the products' ids (``encode(texts, ids=...)``): an encoder
    whose product space has a learned vector per product id says so with a ``takes_ids = True``
    attribute on the function (a bound method reads its function's)."""
    return bool(getattr(encode, "takes_ids", False))


def encode_products(products: Sequence[Product], encode: Encode) -> np.ndarray:
    """The vectors of ``products``: from their texts, and their ids where ``encode`` takes them."""
    texts = [p.text for p in products]
    return encode(texts, ids=[p.id for p in products]) if takes_ids(encode) else encode(texts)


def embed_products(products: Sequence[Product], encode: Encode, *, batch_size: int = 256,
                   progress: bool = False) -> np.ndarray:
    chunks = range(0, len(products), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="embedding products", unit="batch")
    parts = [encode_products(products[i:i + batch_size], encode) for i in chunks]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


def build_index(products: Sequence[Product], encode: Encode, *, dim: int, model_version: str,
                batch_size: int = 256, progress: bool = False, kind: str = "auto",
                params: IndexParams | None = None) -> ItemIndex:
    """Embed ``products`` into an index of ``kind`` (``auto``: by catalogue size, see index.kinds)."""
    vectors = embed_products(products, encode, batch_size=batch_size, progress=progress)
    index = ItemIndex(dim, model_version=model_version, kind=choose_kind(kind, len(products)), params=params)
    index.upsert(list(products), vectors)
    log.info("built %s index of %d products", index.kind, len(index))
    return index

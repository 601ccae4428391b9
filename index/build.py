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


def embed_products(products: Sequence[Product], encode: Encode, *, batch_size: int = 256,
                   progress: bool = False) -> np.ndarray:
    chunks = range(0, len(products), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="embedding products", unit="batch")
    parts = [encode([p.text for p in products[i:i + batch_size]]) for i in chunks]
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

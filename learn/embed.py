"""Text vectors of items and queries, computed once per (model, texts) and cached on disk."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from engines.base import TextEncoder

log = logging.getLogger(__name__)


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def text_vectors(texts: Sequence[str], encoder: TextEncoder, *, cache_dir: str | Path | None = None,
                 batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """``(len(texts), dim)`` unit vectors; an empty text gets the vector of the empty string."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{encoder.model_version}-{texts_digest(texts)}.npy"
        if path.is_file():
            vecs = np.load(path, allow_pickle=False)
            if vecs.shape == (len(texts), encoder.dim):
                log.info("text vectors from cache %s", path)
                return vecs
    chunks = range(0, len(texts), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="embedding texts", unit="batch")
    parts = [encoder.encode(list(texts[i:i + batch_size])) for i in chunks]
    vecs = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, encoder.dim), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(path)
    return vecs

"""Batched tokenisation with padding to fixed length buckets.

Padding to a small set of lengths keeps compiled engines (CUDA graphs, TensorRT profiles) to a
few shapes and makes tokenisation cost measurable on its own.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128)


@dataclass(frozen=True)
class TokenBatch:
    input_ids: np.ndarray       # (batch, length) int64
    attention_mask: np.ndarray  # (batch, length) int64

    @property
    def shape(self) -> tuple[int, int]:
        return self.input_ids.shape  # type: ignore[return-value]


class Tokenizer:
    """The model's fast (Rust) tokenizer, padding each batch to the smallest bucket that fits."""

    def __init__(self, model_dir: str | Path, buckets: Sequence[int] = DEFAULT_BUCKETS) -> None:
        self.model_dir = Path(model_dir)
        self.buckets = tuple(sorted(buckets))
        self._tok = None

    def _tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer as FastTokenizer

            tok = FastTokenizer.from_file(str(self.model_dir / "tokenizer.json"))
            tok.no_padding()
            tok.enable_truncation(max_length=self.buckets[-1])
            self._tok = tok
        return self._tok

    def bucket_for(self, length: int) -> int:
        i = bisect.bisect_left(self.buckets, length)
        return self.buckets[min(i, len(self.buckets) - 1)]

    def __call__(self, texts: Sequence[str], length: int | None = None) -> TokenBatch:
        encs = self._tokenizer().encode_batch(list(texts))
        longest = max((len(e.ids) for e in encs), default=1)
        width = length or self.bucket_for(longest)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            n = min(len(e.ids), width)
            ids[i, :n] = e.ids[:n]
            mask[i, :n] = 1
        return TokenBatch(ids, mask)

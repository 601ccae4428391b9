"""Batched tokenisation with padding to fixed length buckets.

Padding to a small set of lengths keeps compiled engines (CUDA graphs, TensorRT profiles) to a
few shapes and makes tokenisation cost measurable on its own. :func:`encode_texts` sorts a call's
texts by token count before cutting them into batches, so short queries are not padded to the
length of the longest title in the call.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text ([CLS] ... [SEP]), truncated to the largest bucket, unpadded."""
        return [e.ids for e in self._tokenizer().encode_batch(list(texts))]

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None) -> TokenBatch:
        """Pad (or truncate) to ``length``, by default the smallest bucket that fits the longest."""
        longest = max((len(x) for x in ids), default=1)
        width = length or self.bucket_for(longest)
        out_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            n = min(len(row), width)
            out_ids[i, :n] = row[:n]
            mask[i, :n] = 1
        return TokenBatch(out_ids, mask)

    def __call__(self, texts: Sequence[str], length: int | None = None) -> TokenBatch:
        return self.pad(self.token_ids(texts), length)


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_batch: int, dim: int,
                 run: Callable[[np.ndarray, np.ndarray], np.ndarray], *, exact_length: bool = False) -> np.ndarray:
    """Tokenise ``texts`` once, run them through ``run(ids, mask)`` in length-sorted batches of at
    most ``max_batch``, and return the ``(len(texts), dim)`` float32 rows in input order.

    ``exact_length``: pad each batch to its longest text, not to a bucket. For an engine that takes
    any shape (ONNX Runtime on the CPU), where the work grows with the padded length: a shopper's
    query is ~6 tokens, and padding it to 16 made each one cost 1.6 times as much (issue 13)."""
    if len(texts) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    ids = tokenizer.token_ids(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.empty((len(ids), dim), dtype=np.float32)
    for start in range(0, len(order), max_batch):
        part = order[start:start + max_batch]
        rows = [ids[i] for i in part]
        batch = tokenizer.pad(rows, max(len(r) for r in rows) if exact_length else None)
        out[part] = run(batch.input_ids, batch.attention_mask)
    return out

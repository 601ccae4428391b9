"""PyTorch on the CPU: the plain reference every other backend is checked against."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engines.model import TEXT_DIM, model_version, resolve_model_dir
from engines.tokenize import Tokenizer


class TorchTextEncoder:
    name = "torch"

    def __init__(self, model_dir: str | Path | None = None, *, threads: int | None = None,
                 max_batch: int = 256) -> None:
        self.model_dir = model_dir
        self.threads = threads
        self.max_batch = max_batch
        self.dim = TEXT_DIM
        self.model_version = ""
        self._model = None
        self.tokenizer: Tokenizer | None = None

    def load(self) -> "TorchTextEncoder":
        import torch

        from engines.text_model import load_pooled_encoder

        model_dir = resolve_model_dir(self.model_dir)
        if self.threads:
            torch.set_num_threads(self.threads)
        self._model = load_pooled_encoder(model_dir)
        self.tokenizer = Tokenizer(model_dir)
        self.model_version = model_version(model_dir)
        return self

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return out.numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("call load() before encode()")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for i in range(0, len(texts), self.max_batch):
            batch = self.tokenizer(texts[i:i + self.max_batch])
            parts.append(self.encode_tokens(batch.input_ids, batch.attention_mask))
        return np.concatenate(parts)

    def close(self) -> None:
        self._model = None

"""PyTorch on the CPU: the plain reference every other backend is checked against."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engines.model import TEXT_DIM, model_version, resolve_model_dir
from engines.tokenize import Tokenizer, encode_texts


class TorchTextEncoder:
    name = "torch"

    def __init__(self, model_dir: str | Path | None = None, *, artifact: str | Path | None = None,
                 threads: int | None = None, max_batch: int = 256) -> None:
        self.model_dir = model_dir
        self.artifact = Path(artifact) if artifact else None
        self.threads = threads
        self.max_batch = max_batch
        self.dim = TEXT_DIM
        self.model_version = ""
        self.precision = "fp32"
        self._model = None
        self.tokenizer: Tokenizer | None = None

    def load(self) -> "TorchTextEncoder":
        import torch

        from engines.text_model import load_pooled_encoder

        model_dir = resolve_model_dir(self.model_dir)
        version = model_version(model_dir)
        if self.artifact is not None:
            from engines.artifact import load_artifact_for_weights

            load_artifact_for_weights(self.artifact, self.name, version, model_dir)
        if self.threads:
            torch.set_num_threads(self.threads)
        self._model = load_pooled_encoder(model_dir)
        self.tokenizer = Tokenizer(model_dir)
        self.model_version = version
        return self

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return out.numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("call load() before encode()")
        return encode_texts(self.tokenizer, texts, self.max_batch, self.dim, self.encode_tokens)

    def close(self) -> None:
        self._model = None

"""The session encoder on PyTorch, CPU, fp32: the reference every other session backend is checked
against (``engines.parity``-style tests in ``tests/engines/test_session_backends.py``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class TorchSessionRunner:
    name = "torch"

    def __init__(self, folder: str | Path, *, precision: str = "fp32", threads: int | None = None) -> None:
        if precision != "fp32":
            raise ValueError(f"the torch session backend runs fp32, not {precision}")
        self.folder = Path(folder)
        self.precision = precision
        self.threads = threads
        self._model = None

    def load(self, manifest: dict, model) -> "TorchSessionRunner":
        self._model = model
        return self

    def run(self, vectors: np.ndarray, kinds: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._model(torch.from_numpy(vectors), torch.from_numpy(kinds), torch.from_numpy(gaps)).numpy()

    def close(self) -> None:
        self._model = None

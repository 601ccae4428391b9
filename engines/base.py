"""The one interface every text-encoder backend offers."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TextEncoder(Protocol):
    """Turns product titles and search queries into L2-normalised vectors.

    ``encode`` returns a ``(len(texts), dim)`` float32 array whose rows have unit length.
    Construction does no I/O; ``load()`` reads weights / engines and may be called once.
    """

    name: str            # backend name, e.g. "onnxruntime"
    dim: int
    model_version: str   # identifies the weights; recommendations carry it

    def load(self) -> "TextEncoder": ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def close(self) -> None: ...

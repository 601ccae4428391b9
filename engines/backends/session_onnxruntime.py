"""The session encoder on ONNX Runtime, CPU: the fp32 graph, or its fp16 / int8 variants, as
exported into the artifact by ``shopstream train`` (never exported at load time)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.backends.onnxruntime_cpu import make_session


class OnnxRuntimeSessionRunner:
    name = "onnxruntime"

    def __init__(self, folder: str | Path, *, precision: str = "fp32", threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.precision = precision
        self.threads = threads
        self._session = None

    def load(self, manifest: dict, model=None) -> "OnnxRuntimeSessionRunner":
        from engines.errors import ArtifactError
        from engines.session_model import ONNX_FILES

        path = self.folder / ONNX_FILES[self.precision]
        if not path.is_file():
            raise ArtifactError(f"{path}: no such ONNX file; `shopstream train --export` writes it")
        self._session = make_session(path, self.threads)
        return self

    def run(self, vectors: np.ndarray, kinds: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {"vectors": vectors, "kinds": kinds, "gaps": gaps})[0]
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self._session = None

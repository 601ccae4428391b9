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
        return run_by_length(self._run, vectors, kinds, gaps)

    def _run(self, vectors: np.ndarray, kinds: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {"vectors": vectors, "kinds": kinds, "gaps": gaps})[0]
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self._session = None


#: Sessions up to these many events run together, cut to the longest of their group.
LENGTH_GROUPS: tuple[int, ...] = (8, 16, 32)


def run_by_length(run, vectors: np.ndarray, kinds: np.ndarray, gaps: np.ndarray, *,
                  groups: tuple[int, ...] = LENGTH_GROUPS, min_rows: int = 32) -> np.ndarray:
    """One worker batch, run in a few length groups instead of padded to its longest session.

    Sessions are right-aligned and positions count from the newest event, so dropping the columns
    that are padding for every row of a group changes nothing (a test checks against one run).
    On the CPU the work is proportional to the padded length: a batch whose sessions average 24
    events, padded to 50, spends half its time on padding."""
    n, width = kinds.shape
    if n < min_rows:
        return run(vectors, kinds, gaps)
    lengths = (kinds != 0).sum(axis=1)
    out = None
    lower = 0
    for upper in (*[g for g in groups if g < width], width):
        rows = np.flatnonzero((lengths > lower) & (lengths <= upper)) if lower else np.flatnonzero(lengths <= upper)
        lower = upper
        if not len(rows):
            continue
        cut = max(1, int(lengths[rows].max()))
        got = run(np.ascontiguousarray(vectors[rows, width - cut:]), np.ascontiguousarray(kinds[rows, width - cut:]),
                  np.ascontiguousarray(gaps[rows, width - cut:]))
        if out is None:
            out = np.zeros((n, got.shape[1]), dtype=np.float32)
        out[rows] = got
    return out

"""ONNX Runtime on the CPU: the fast CPU path (fp32, or int8 with dynamically quantised weights).

Loads an artifact written by ``shopstream engine build --backend onnxruntime``; it never exports
at load time.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from engines.artifact import load_artifact
from engines.errors import ArtifactError, MissingExtraError
from engines.tokenize import Tokenizer, encode_texts

log = logging.getLogger(__name__)


def physical_cores() -> int:
    """CPUs this process may use (ONNX Runtime's own default counts every logical CPU)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def make_session(onnx_path: str | Path, threads: int | None = None, spin: bool = False):
    """An ONNX Runtime CPU session with all graph optimisations and ``threads`` intra-op threads.

    Generic: any ONNX file (the session encoder uses it too). ``spin`` off (the default): ONNX
    Runtime's intra-op threads otherwise busy-wait after every run, and in a worker they take the
    cores from the event loop -- on the 2-core machine the worker went from 1,905 to 3,358 events/s
    with spinning off (issue 13, docs/benchmarks.md). A benchmark of the encoder alone may spin.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingExtraError("onnxruntime", "onnx", exc) from exc
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


class OnnxRuntimeTextEncoder:
    name = "onnxruntime"

    def __init__(self, artifact: str | Path | None = None, *, model_dir: str | Path | None = None,
                 threads: int | None = None, max_batch: int = 256) -> None:
        self.artifact = Path(artifact) if artifact else None
        self.model_dir = model_dir   # unused: the artifact carries graph and tokenizer
        self.threads = threads
        self.max_batch = max_batch
        self.dim = 0
        self.model_version = ""
        self.precision = ""
        self.tokenizer: Tokenizer | None = None
        self._session = None

    def load(self) -> "OnnxRuntimeTextEncoder":
        if self.artifact is None:
            raise ArtifactError("the onnxruntime backend needs an artifact: "
                                "shopstream engine build --backend onnxruntime --out DIR")
        manifest = load_artifact(self.artifact, self.name)
        self._session = make_session(manifest.path_of(self.artifact, "onnx"), self.threads)
        self.tokenizer = Tokenizer(self.artifact, manifest.length_buckets or (16, 32, 64, 128))
        self.dim = manifest.dim
        self.model_version = manifest.model_version
        self.precision = manifest.precision
        log.info("onnxruntime %s engine from %s, %d threads", self.precision, self.artifact,
                 self.threads or physical_cores())
        return self

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._session is None:
            raise RuntimeError("call load() before encode()")
        return encode_texts(self.tokenizer, texts, self.max_batch, self.dim, self.encode_tokens,
                            exact_length=True)     # any shape runs: no padding to a bucket

    def close(self) -> None:
        self._session = None

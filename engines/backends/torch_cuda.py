"""PyTorch on an NVIDIA GPU: fp16, fixed (batch, length) buckets, one CUDA graph per bucket.

Each bucket owns, made once at ``load()``: a pinned host buffer holding ids and mask side by side,
the device input it is copied to, the captured graph, and a pinned host buffer for the result.
A call copies tokens into the pinned buffer, issues one host-to-device copy, replays the graph,
issues one device-to-host copy and waits on the backend's own stream: nothing is allocated on the
device, and no kernel is launched one by one from Python.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engines.errors import BackendUnavailableError, EngineError
from engines.model import TEXT_DIM, model_version, resolve_model_dir
from engines.tokenize import DEFAULT_BUCKETS, Tokenizer, encode_texts

log = logging.getLogger(__name__)

BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False
    return torch.cuda.is_available()


@dataclass
class _Bucket:
    batch: int
    length: int
    host_in: Any        # pinned (2, batch, length) int64: ids, mask
    host_in_np: np.ndarray
    device_in: Any      # (2, batch, length) int64 on the GPU
    device_out: Any     # (batch, dim) float32 on the GPU, written by the graph
    host_out: Any       # pinned (batch, dim) float32
    host_out_np: np.ndarray
    graph: Any = None   # torch.cuda.CUDAGraph, or None when graphs are off


class TorchCudaTextEncoder:
    name = "torch-cuda"

    def __init__(self, model_dir: str | Path | None = None, *, artifact: str | Path | None = None,
                 precision: str = "fp16", batch_buckets: Sequence[int] = BATCH_BUCKETS,
                 length_buckets: Sequence[int] = DEFAULT_BUCKETS, device: int = 0,
                 cuda_graphs: bool = True) -> None:
        self.model_dir = model_dir
        self.artifact = Path(artifact) if artifact else None
        self.precision = precision
        self.batch_buckets = tuple(sorted(batch_buckets))
        self.length_buckets = tuple(sorted(length_buckets))
        self.device_index = device
        self.cuda_graphs = cuda_graphs
        self.max_batch = self.batch_buckets[-1]
        self.dim = TEXT_DIM
        self.model_version = ""
        self.tokenizer: Tokenizer | None = None
        self._model = None
        self._stream = None
        self._buckets: dict[tuple[int, int], _Bucket] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> "TorchCudaTextEncoder":
        import torch

        from engines.fused_text_model import load_fused_encoder

        if not torch.cuda.is_available():
            raise BackendUnavailableError("torch-cuda needs an NVIDIA GPU; torch.cuda.is_available() "
                                          "is False on this machine")
        model_dir = resolve_model_dir(self.model_dir)
        version = model_version(model_dir)
        if self.artifact is not None:
            from engines.artifact import load_artifact_for_weights

            manifest = load_artifact_for_weights(self.artifact, self.name, version, model_dir)
            self.precision = manifest.precision
            self.batch_buckets = manifest.batch_buckets or self.batch_buckets
            self.length_buckets = manifest.length_buckets or self.length_buckets
            self.max_batch = self.batch_buckets[-1]
        dtypes = {"fp16": torch.float16, "fp32": torch.float32}
        if self.precision not in dtypes:
            raise EngineError(f"torch-cuda runs fp16 or fp32, not {self.precision}")
        device = torch.device("cuda", self.device_index)
        self._model = load_fused_encoder(model_dir, dtype=dtypes[self.precision], device=device)
        self.tokenizer = Tokenizer(model_dir, self.length_buckets)
        self.model_version = version
        self._stream = torch.cuda.Stream(device=device)
        for b in self.batch_buckets:
            for n in self.length_buckets:
                self._buckets[(b, n)] = self._make_bucket(b, n, device)
        log.info("torch-cuda %s on %s: %d buckets%s", self.precision, torch.cuda.get_device_name(device),
                 len(self._buckets), ", CUDA graphs captured" if self.cuda_graphs else "")
        return self

    def _make_bucket(self, batch: int, length: int, device) -> _Bucket:
        import torch

        host_in = torch.zeros((2, batch, length), dtype=torch.int64).pin_memory()
        host_in[1, :, 0] = 1          # padding rows attend to one token: no empty softmax
        host_out = torch.zeros((batch, self.dim), dtype=torch.float32).pin_memory()
        device_in = host_in.to(device)
        bucket = _Bucket(batch, length, host_in, host_in.numpy(), device_in, None, host_out,
                         host_out.numpy())
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            for _ in range(2):        # warm-up on the side stream: cuBLAS handles, kernel choice
                bucket.device_out = self._model(device_in[0], device_in[1])
            if self.cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    bucket.device_out = self._model(device_in[0], device_in[1])
                bucket.graph = graph
        self._stream.synchronize()
        return bucket

    def close(self) -> None:
        self._buckets.clear()
        self._model = None

    # -- hot path ----------------------------------------------------------------------------
    def _bucket_for(self, batch: int, length: int) -> _Bucket:
        bi = bisect.bisect_left(self.batch_buckets, batch)
        li = bisect.bisect_left(self.length_buckets, length)
        if bi == len(self.batch_buckets) or li == len(self.length_buckets):
            raise EngineError(f"no bucket holds batch {batch} x length {length} "
                              f"(largest {self.batch_buckets[-1]} x {self.length_buckets[-1]})")
        return self._buckets[(self.batch_buckets[bi], self.length_buckets[li])]

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("call load() before encode()")
        n = input_ids.shape[0]
        if n > self.max_batch:
            return np.concatenate([self.encode_tokens(input_ids[i:i + self.max_batch],
                                                      attention_mask[i:i + self.max_batch])
                                   for i in range(0, n, self.max_batch)])
        length = input_ids.shape[1]
        bucket = self._bucket_for(n, length)
        staged = bucket.host_in_np
        staged[0, :n, :length] = input_ids
        staged[1, :n, :length] = attention_mask
        if length < bucket.length:
            staged[:, :n, length:] = 0
        if n < bucket.batch:             # rows a bigger call left behind become padding rows
            staged[:, n:, :] = 0
            staged[1, n:, 0] = 1
        self._run(bucket)
        return bucket.host_out_np[:n].copy()

    def _run(self, bucket: _Bucket) -> None:
        import torch

        with torch.cuda.stream(self._stream):
            bucket.device_in.copy_(bucket.host_in, non_blocking=True)
            if bucket.graph is not None:
                bucket.graph.replay()
            else:
                with torch.inference_mode():
                    bucket.device_out = self._model(bucket.device_in[0], bucket.device_in[1])
            bucket.host_out.copy_(bucket.device_out, non_blocking=True)
        self._stream.synchronize()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("call load() before encode()")
        return encode_texts(self.tokenizer, texts, self.max_batch, self.dim, self.encode_tokens)

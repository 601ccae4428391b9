"""The session encoder on an NVIDIA GPU: fp16 weights, fixed (batch, length) buckets, one CUDA
graph per bucket.

Like the text encoder's ``torch_cuda`` backend: each bucket owns, made once at ``load()``, pinned
host buffers for the packed sessions (vectors, kinds, gaps), their device copies, the captured
graph and a pinned host buffer for the embeddings. A call copies the worker batch into the pinned
buffers, issues the host-to-device copies, replays the graph and copies the result back on the
backend's own stream: nothing is allocated on the device and no kernel is launched from Python.

Padding is exact: sessions are right-aligned and positions count from the newest event, so extra
left padding (a longer length bucket) and padding rows (a bigger batch bucket) change nothing in
the real rows (attention masks padding keys with a finite bias, see ``session_network.MASKED``).
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engines.errors import BackendUnavailableError, EngineError

log = logging.getLogger(__name__)

BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS: tuple[int, ...] = (4, 8, 16, 32, 50)


@dataclass
class _Bucket:
    batch: int
    length: int
    host: dict[str, Any]        # pinned host tensors: vectors, kinds, gaps, out
    host_np: dict[str, np.ndarray]
    device: dict[str, Any]      # device inputs, and "out" written by the graph
    graph: Any = None


class TorchCudaSessionRunner:
    name = "torch-cuda"

    def __init__(self, folder: str | Path, *, precision: str = "fp16", threads: int | None = None,
                 batch_buckets: Sequence[int] = BATCH_BUCKETS, length_buckets: Sequence[int] | None = None,
                 device: int = 0, cuda_graphs: bool = True) -> None:
        if precision not in ("fp16", "fp32"):
            raise EngineError(f"torch-cuda runs the session encoder in fp16 or fp32, not {precision}")
        self.folder = Path(folder)
        self.precision = precision
        self.batch_buckets = tuple(sorted(batch_buckets))
        self.length_buckets = tuple(sorted(length_buckets)) if length_buckets else None
        self.device_index = device
        self.cuda_graphs = cuda_graphs
        self.dim = 0
        self._model = None
        self._stream = None
        self._buckets: dict[tuple[int, int], _Bucket] = {}

    def load(self, manifest: dict, model) -> "TorchCudaSessionRunner":
        import copy

        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("torch-cuda needs an NVIDIA GPU; torch.cuda.is_available() is False here")
        max_len = manifest["config"]["max_len"]
        lengths = self.length_buckets or LENGTH_BUCKETS
        self.length_buckets = tuple(sorted({min(n, max_len) for n in lengths} | {max_len}))
        self.dim = manifest["dim"]
        device = torch.device("cuda", self.device_index)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self._model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        self._dtype = dtype
        self._stream = torch.cuda.Stream(device=device)
        for b in self.batch_buckets:
            for n in self.length_buckets:
                self._buckets[(b, n)] = self._make_bucket(b, n, device)
        log.info("session encoder torch-cuda %s on %s: %d buckets%s", self.precision,
                 torch.cuda.get_device_name(device), len(self._buckets),
                 ", CUDA graphs captured" if self.cuda_graphs else "")
        return self

    def _forward(self, dev: dict) -> Any:
        return self._model(dev["vectors"].to(self._dtype), dev["kinds"], dev["gaps"]).float()

    def _make_bucket(self, batch: int, length: int, device) -> _Bucket:
        import torch

        host = {"vectors": torch.zeros((batch, length, self.dim), dtype=torch.float32).pin_memory(),
                "kinds": torch.zeros((batch, length), dtype=torch.int64).pin_memory(),
                "gaps": torch.zeros((batch, length), dtype=torch.int64).pin_memory(),
                "out": torch.zeros((batch, self.dim), dtype=torch.float32).pin_memory()}
        dev = {k: v.to(device) for k, v in host.items() if k != "out"}
        bucket = _Bucket(batch, length, host, {k: v.numpy() for k, v in host.items()}, dev)
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            for _ in range(2):        # warm-up on the side stream: cuBLAS handles, kernel choice
                dev["out"] = self._forward(dev)
            if self.cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    dev["out"] = self._forward(dev)
                bucket.graph = graph
        self._stream.synchronize()
        return bucket

    def _bucket_for(self, batch: int, length: int) -> _Bucket:
        bi = bisect.bisect_left(self.batch_buckets, batch)
        li = bisect.bisect_left(self.length_buckets, length)
        if bi == len(self.batch_buckets) or li == len(self.length_buckets):
            raise EngineError(f"no bucket holds batch {batch} x length {length}")
        return self._buckets[(self.batch_buckets[bi], self.length_buckets[li])]

    def run(self, vectors: np.ndarray, kinds: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        import torch

        if self._model is None:
            raise RuntimeError("call load() before run()")
        n, length = kinds.shape
        top = self.batch_buckets[-1]
        if n > top:
            return np.concatenate([self.run(vectors[i:i + top], kinds[i:i + top], gaps[i:i + top])
                                   for i in range(0, n, top)])
        bucket = self._bucket_for(n, length)
        w = bucket.length
        h = bucket.host_np
        h["vectors"][:n, w - length:] = vectors            # right-aligned: pad on the left
        h["kinds"][:n, w - length:] = kinds
        h["gaps"][:n, w - length:] = gaps
        if length < w:
            h["vectors"][:n, :w - length] = 0.0
            h["kinds"][:n, :w - length] = 0
            h["gaps"][:n, :w - length] = 0
        if n < bucket.batch:                                # rows a bigger call left behind: padding
            h["kinds"][n:] = 0
            h["gaps"][n:] = 0
        with torch.cuda.stream(self._stream):
            for k in ("vectors", "kinds", "gaps"):
                bucket.device[k].copy_(bucket.host[k], non_blocking=True)
            if bucket.graph is not None:
                bucket.graph.replay()
            else:
                with torch.inference_mode():
                    bucket.device["out"] = self._forward(bucket.device)
            bucket.host["out"].copy_(bucket.device["out"], non_blocking=True)
        self._stream.synchronize()
        return h["out"][:n].copy()

    def close(self) -> None:
        self._buckets.clear()
        self._model = None

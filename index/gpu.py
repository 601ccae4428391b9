"""Exact search on an NVIDIA GPU: faiss-gpu when importable, otherwise torch (fp16 matrix + top-k).

Importing this module imports neither FAISS nor torch; both are imported when a structure is made.
On the GPU every kind is served by exact search: a batch-1 query over 1M x 384 fp16 reads 768 MB,
well under a millisecond at H100 memory bandwidth, so no approximation is needed.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from index.errors import IndexError_

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
TORCH_HINT = "torch with CUDA is needed for GPU search: install a CUDA build of torch, or shopstream[gpu]"


def faiss_gpu_count() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_device(requested: str) -> str:
    """``cpu``, ``faiss-gpu`` or ``torch-cuda``; ``auto`` takes a GPU when there is one. Logged."""
    if requested not in DEVICES:
        raise IndexError_(f"unknown index device {requested!r}; choose one of {', '.join(DEVICES)}")
    if requested == "cpu":
        log.info("index search on the CPU with faiss-cpu (index_device=cpu)")
        return "cpu"
    if faiss_gpu_count() > 0:
        log.info("index search on the GPU with faiss-gpu (exact inner product)")
        return "faiss-gpu"
    if torch_cuda_available():
        log.info("index search on the GPU with torch CUDA (fp16 matrix + top-k); faiss-gpu not importable")
        return "torch-cuda"
    if requested == "cuda":
        raise IndexError_("index_device=cuda but no GPU is usable: " + TORCH_HINT)
    log.info("index search on the CPU with faiss-cpu (no GPU found)")
    return "cpu"


class TorchExactSearch:
    """Exact inner-product search with a half-precision matrix on a CUDA device.

    Rows are appended into a preallocated matrix that doubles when full, so upserts do not copy the
    whole catalogue. A float32 copy stays on the host for exact :meth:`reconstruct`.
    """

    kind = "flat"
    device = "torch-cuda"
    persisted = False

    def __init__(self, dim: int, *, cuda_device: str = "cuda", keep_host_copy: bool = True) -> None:
        self.dim = dim
        self.cuda_device = cuda_device
        self.keep_host_copy = keep_host_copy
        self._gpu = None
        self._host: list[np.ndarray] = []
        self._host_cat: np.ndarray | None = None
        self._n = 0

    @staticmethod
    def _torch():
        try:
            import torch
        except ImportError as exc:
            raise IndexError_(TORCH_HINT) from exc
        return torch

    @property
    def ntotal(self) -> int:
        return self._n

    def _reserve(self, n: int) -> int:
        torch = self._torch()
        need = self._n + n
        if self._gpu is None or need > self._gpu.shape[0]:
            cap = max(need, 2 * (self._gpu.shape[0] if self._gpu is not None else 0), 1024)
            grown = torch.empty((cap, self.dim), dtype=torch.float16, device=self.cuda_device)
            if self._gpu is not None:
                grown[:self._n] = self._gpu[:self._n]
            self._gpu = grown
        return need

    def add(self, vectors: np.ndarray) -> None:
        n = len(vectors)
        if n == 0:
            return
        need = self._reserve(n)
        self._gpu[self._n:need] = self._torch().from_numpy(np.ascontiguousarray(vectors, np.float32)).to(
            self.cuda_device).half()
        if self.keep_host_copy:
            self._host.append(np.array(vectors, dtype=np.float32))
            self._host_cat = None
        self._n = need

    def add_tensor(self, vectors) -> None:
        """Append rows already on the device (no host copy: only with ``keep_host_copy=False``)."""
        if self.keep_host_copy:
            raise IndexError_("add_tensor needs keep_host_copy=False")
        need = self._reserve(len(vectors))
        self._gpu[self._n:need] = vectors
        self._n = need

    #: From this many rows top-k is taken in two steps: the maxima of blocks of TOPK_BLOCK scores,
    #: then an exact top-k over the k blocks with the largest maxima (they hold the k best scores).
    #: One radix select over 1M scores costs about a third of the matrix read; this costs little.
    block_topk_from: int = 65_536
    TOPK_BLOCK = 1024

    def search_tensor(self, q, k: int, *, blocked: bool | None = None):
        """Scores and slots as CUDA tensors (the benchmark times this without host copies)."""
        torch = self._torch()
        n = self._n
        matrix = self._gpu[:n]
        scores = torch.mv(matrix, q[0]).unsqueeze(0) if q.shape[0] == 1 else torch.matmul(q, matrix.T)
        if blocked is None:
            blocked = n >= self.block_topk_from
        size = self.TOPK_BLOCK
        blocks = n // size
        if not blocked or blocks <= k:
            return torch.topk(scores, k, dim=1, sorted=True)
        b = q.shape[0]
        head = scores[:, :blocks * size].view(b, blocks, size)
        _, best = torch.topk(head.amax(dim=2), k, dim=1, sorted=False)          # (b, k) block numbers
        cand = torch.gather(head, 1, best.unsqueeze(2).expand(b, k, size)).reshape(b, k * size)
        slots = (best.unsqueeze(2) * size + torch.arange(size, device=best.device)).reshape(b, k * size)
        if n > blocks * size:                                                     # the last, short block
            cand = torch.cat([cand, scores[:, blocks * size:]], 1)
            slots = torch.cat([slots, torch.arange(blocks * size, n, device=best.device).expand(b, -1)], 1)
        top, where = torch.topk(cand, k, dim=1, sorted=True)
        return top, torch.gather(slots, 1, where)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch()
        n = len(queries)
        k = min(k, self._n)
        if k == 0:
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        q = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(self.cuda_device).half()
        vals, idx = self.search_tensor(q, k)
        return vals.float().cpu().numpy(), idx.cpu().numpy().astype(np.int64)

    def reconstruct(self, slots: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots) == 0:
            return np.zeros((0, self.dim), np.float32)
        if not self.keep_host_copy:
            return self._gpu[self._torch().from_numpy(slots).to(self.cuda_device)].float().cpu().numpy()
        if self._host_cat is None:
            self._host_cat = np.concatenate(self._host) if len(self._host) > 1 else self._host[0]
            self._host = [self._host_cat]
        return self._host_cat[slots]

    def memory_bytes(self) -> int:
        return 0 if self._gpu is None else self._gpu.element_size() * self._gpu.nelement()

    def save(self, path: Path) -> None:  # pragma: no cover - persisted is False
        raise IndexError_("GPU structures are rebuilt from the snapshot's vectors")


class FaissGpuFlat:
    """faiss-gpu exact inner-product search (``GpuIndexFlatIP``), labels = slots."""

    kind = "flat"
    device = "faiss-gpu"
    persisted = False

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._faiss = None
        self._res = None

    @property
    def ntotal(self) -> int:
        return 0 if self._faiss is None else int(self._faiss.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        if len(vectors) == 0:
            return
        if self._faiss is None:
            import faiss

            self._res = faiss.StandardGpuResources()
            cfg = faiss.GpuIndexFlatConfig()
            cfg.useFloat16 = True
            self._faiss = faiss.GpuIndexFlatIP(self._res, self.dim, cfg)
        self._faiss.add(np.ascontiguousarray(vectors, np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._faiss is None:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        return self._faiss.search(np.ascontiguousarray(queries, np.float32), min(k, self.ntotal))

    def reconstruct(self, slots: np.ndarray) -> np.ndarray:
        if len(slots) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._faiss.reconstruct(int(s)) for s in slots])

    def memory_bytes(self) -> int:
        return 2 * self.dim * self.ntotal

    def save(self, path: Path) -> None:  # pragma: no cover - persisted is False
        raise IndexError_("GPU structures are rebuilt from the snapshot's vectors")

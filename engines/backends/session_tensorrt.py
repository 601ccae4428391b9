"""The session encoder on TensorRT 10: a plan built from the artifact's ``session_encoder.onnx``.

Written to the TensorRT 10 Python API (``build_serialized_network``, named I/O tensors,
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``), device buffers from torch,
like the text encoder's ``engines.backends.tensorrt``. Never run: TensorRT could not be installed
where the project is verified (NVIDIA's package index is unreachable there); the tests that need
it are skipped with that reason.

Build step, explicit (serving never builds): :func:`build_session_plan` writes
``session_encoder.trt<version>.sm<cc>.<precision>.plan`` into a folder (the artifact's own, or
another for a read-only install); the runner loads the plan made for this TensorRT and GPU, and
``auto`` considers TensorRT only when such a plan exists. One optimisation profile covers batch
1..``max_batch`` and length 1..``max_len``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.backends.tensorrt import (
    _logger,
    compute_capability,
    import_tensorrt,
    tensorrt_available,
)
from engines.errors import ArtifactError, BackendUnavailableError, EngineError

log = logging.getLogger(__name__)

MAX_BATCH = 256


def session_plan_name(trt_version: str, capability: str, precision: str) -> str:
    return f"session_encoder.trt{trt_version}.sm{capability.replace('.', '')}.{precision}.plan"


def find_session_plan(folder: str | Path, precision: str) -> Path | None:
    """The plan in ``folder`` made for this TensorRT and this GPU, if there is one."""
    try:
        trt = import_tensorrt()
    except ImportError:
        return None
    ok, _ = tensorrt_available()
    if not ok:
        return None
    plan = Path(folder) / session_plan_name(trt.__version__, compute_capability(), precision)
    return plan if plan.is_file() else None


def build_session_plan(artifact: str | Path, out_dir: str | Path | None = None, *, precision: str = "fp16",
                       max_batch: int = MAX_BATCH, opt_batch: int = 64, workspace_gib: float = 2.0) -> Path:
    """Build (or reuse) a TensorRT plan of the artifact's fp32 ONNX user tower."""
    from engines.session_model import ONNX_FILES, read_manifest

    trt = import_tensorrt()
    ok, why = tensorrt_available()
    if not ok:
        raise BackendUnavailableError(why)
    if precision not in ("fp16", "fp32"):
        raise EngineError(f"session encoder TensorRT plans are fp16 or fp32, not {precision}")
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    out_dir = Path(out_dir or artifact)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = out_dir / session_plan_name(trt.__version__, compute_capability(), precision)
    if plan.is_file():
        return plan
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    onnx_path = artifact / ONNX_FILES["fp32"]
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    dim, max_len = manifest["dim"], manifest["config"]["max_len"]
    profile = builder.create_optimization_profile()
    opt = (min(opt_batch, max_batch), max_len)
    profile.set_shape("vectors", (1, 1, dim), (*opt, dim), (max_batch, max_len, dim))
    for name in ("kinds", "gaps"):
        profile.set_shape(name, (1, 1), opt, (max_batch, max_len))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build a {precision} plan from {onnx_path}")
    plan.write_bytes(bytes(serialized))
    log.info("built TensorRT %s session plan %s", precision, plan)
    return plan


class TensorRTSessionRunner:
    name = "tensorrt"

    def __init__(self, folder: str | Path, *, precision: str = "fp16", threads: int | None = None,
                 plan_dir: str | Path | None = None, device: int = 0) -> None:
        self.folder = Path(folder)
        self.plan_dir = Path(plan_dir) if plan_dir else self.folder
        self.precision = precision
        self.device_index = device
        self._engine = None
        self._context = None
        self._stream = None
        self._bufs: dict = {}

    def load(self, manifest: dict, model=None) -> "TensorRTSessionRunner":
        trt = import_tensorrt()
        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailableError(why)
        import torch

        plan = find_session_plan(self.plan_dir, self.precision)
        if plan is None:
            raise ArtifactError(f"{self.plan_dir}: no {self.precision} session plan for TensorRT {trt.__version__} "
                                f"on sm {compute_capability()}; build one with engines.backends.session_tensorrt."
                                "build_session_plan")
        self._engine = trt.Runtime(_logger(trt)).deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{plan}: TensorRT could not deserialise the plan")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self.device_index)
        self._context.set_optimization_profile_async(0, self._stream.cuda_stream)
        device = torch.device("cuda", self.device_index)
        dim, max_len = manifest["dim"], manifest["config"]["max_len"]
        self._bufs = {"vectors": torch.empty((MAX_BATCH, max_len, dim), dtype=torch.float32, device=device),
                      "kinds": torch.empty((MAX_BATCH, max_len), dtype=torch.int64, device=device),
                      "gaps": torch.empty((MAX_BATCH, max_len), dtype=torch.int64, device=device),
                      "embeddings": torch.empty((MAX_BATCH, dim), dtype=torch.float32, device=device),
                      "host_out": torch.empty((MAX_BATCH, dim), dtype=torch.float32).pin_memory()}
        self._stream.synchronize()
        log.info("session encoder TensorRT %s %s plan %s", trt.__version__, self.precision, plan)
        return self

    def run(self, vectors: np.ndarray, kinds: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        import torch

        n, length = kinds.shape
        if n > MAX_BATCH:
            return np.concatenate([self.run(vectors[i:i + MAX_BATCH], kinds[i:i + MAX_BATCH], gaps[i:i + MAX_BATCH])
                                   for i in range(0, n, MAX_BATCH)])
        ctx, bufs = self._context, self._bufs
        with torch.cuda.stream(self._stream):
            for name, host in (("vectors", vectors), ("kinds", kinds), ("gaps", gaps)):
                dev = bufs[name].view(-1)[:host.size].view(host.shape)     # contiguous (n, length[, dim])
                dev.copy_(torch.from_numpy(np.ascontiguousarray(host)))
                ctx.set_input_shape(name, tuple(host.shape))
                ctx.set_tensor_address(name, dev.data_ptr())
            ctx.set_tensor_address("embeddings", bufs["embeddings"].data_ptr())
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise EngineError("TensorRT execute_async_v3 failed")
            bufs["host_out"][:n].copy_(bufs["embeddings"][:n], non_blocking=True)
        self._stream.synchronize()
        return bufs["host_out"][:n].numpy().copy()

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._bufs.clear()

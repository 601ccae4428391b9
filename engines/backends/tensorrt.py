"""TensorRT 10 on an NVIDIA GPU: an engine (plan) built from the exported ONNX graph.

Written to the TensorRT 10 Python API (``build_serialized_network``, named I/O tensors,
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``), device buffers from torch.
Never run: TensorRT could not be installed where the project is verified (its wheels come from
NVIDIA's package index, which is unreachable there). See docs/engines.md for exactly what is and
is not verified.

Build (``shopstream engine build --backend tensorrt``): parse the ONNX file, one optimisation
profile per sequence-length bucket (batch 1..max, tuned at ``opt_batch``), fp16 and/or int8 flags,
serialise the plan into the artifact under a name carrying the TensorRT version and the GPU's
compute capability, so a plan is reused only on the GPU and TensorRT it was built for.
Run: one execution context per profile; ``execute_async_v3`` on the backend's own CUDA stream.
"""
from __future__ import annotations

import bisect
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from engines.errors import (
    ArtifactError,
    BackendUnavailableError,
    EngineError,
    MissingExtraError,
)
from engines.tokenize import DEFAULT_BUCKETS, Tokenizer, encode_texts

log = logging.getLogger(__name__)


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingExtraError("TensorRT", "tensorrt", exc) from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise MissingExtraError(f"TensorRT >= 10 (found {trt.__version__})", "tensorrt")
    return trt


def tensorrt_available() -> tuple[bool, str]:
    """Whether TensorRT 10 and a CUDA GPU are both here, and why not."""
    try:
        import_tensorrt()
    except MissingExtraError as exc:
        return False, str(exc)
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    return True, "TensorRT and a CUDA GPU are present"


def compute_capability(device: int = 0) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def plan_name(trt_version: str, capability: str, precision: str) -> str:
    return f"model.trt{trt_version}.sm{capability.replace('.', '')}.{precision}.plan"


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


class _Calibrator:
    """Entropy calibration for int8 from real tokenised texts (TensorRT's implicit quantisation)."""

    def __new__(cls, trt, batches: list[tuple[np.ndarray, np.ndarray]], cache: Path):
        import torch

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self) -> None:
                super().__init__()
                self._it: Iterator = iter(batches)
                self._held: list = []
                self.cache = cache

            def get_batch_size(self) -> int:
                return batches[0][0].shape[0]

            def get_batch(self, names):
                try:
                    ids, mask = next(self._it)
                except StopIteration:
                    return None
                by_name = {"input_ids": ids, "attention_mask": mask}
                self._held = [torch.from_numpy(by_name[n]).cuda() for n in names]
                return [int(t.data_ptr()) for t in self._held]

            def read_calibration_cache(self):
                return self.cache.read_bytes() if self.cache.is_file() else None

            def write_calibration_cache(self, data) -> None:
                self.cache.write_bytes(bytes(data))

        return Calibrator()


def build_plan(onnx_path: str | Path, out_dir: str | Path, *, precision: str = "fp16",
               length_buckets: Sequence[int] = DEFAULT_BUCKETS, max_batch: int = 256,
               opt_batch: int = 64, workspace_gib: float = 4.0,
               calibration: list[tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[Path, str, str]:
    """Build (or reuse, when one for this TensorRT and GPU exists) a serialised plan.

    Returns ``(plan_path, tensorrt_version, compute_capability)``.
    """
    trt = import_tensorrt()
    ok, why = tensorrt_available()
    if not ok:
        raise BackendUnavailableError(why)
    out_dir = Path(out_dir)
    capability = compute_capability()
    plan = out_dir / plan_name(trt.__version__, capability, precision)
    if plan.is_file():
        log.info("reusing TensorRT plan %s", plan)
        return plan, trt.__version__, capability
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)      # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not calibration:
            raise EngineError("int8 TensorRT plans need calibration batches of real texts")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _Calibrator(trt, calibration, out_dir / "int8.calibration")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    for length in sorted(length_buckets):
        profile = builder.create_optimization_profile()
        for name in inputs:
            profile.set_shape(name, (1, length), (min(opt_batch, max_batch), length), (max_batch, length))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build a {precision} plan from {onnx_path}")
    plan.write_bytes(bytes(serialized))
    log.info("built TensorRT %s plan %s (TensorRT %s, sm %s)", precision, plan, trt.__version__, capability)
    return plan, trt.__version__, capability


class TensorRTTextEncoder:
    name = "tensorrt"

    def __init__(self, artifact: str | Path | None = None, *, model_dir: str | Path | None = None,
                 device: int = 0) -> None:
        self.artifact = Path(artifact) if artifact else None
        self.model_dir = model_dir
        self.device_index = device
        self.dim = 0
        self.model_version = ""
        self.precision = ""
        self.max_batch = 0
        self.length_buckets: tuple[int, ...] = ()
        self.tokenizer: Tokenizer | None = None
        self._engine = None
        self._contexts: list[Any] = []
        self._stream = None
        self._dtypes: dict[str, Any] = {}
        self._buffers: dict[int, dict[str, Any]] = {}

    def load(self) -> "TensorRTTextEncoder":
        trt = import_tensorrt()
        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailableError(why)
        import torch

        from engines.artifact import load_artifact

        if self.artifact is None:
            raise ArtifactError("the tensorrt backend needs an artifact: "
                                "shopstream engine build --backend tensorrt --out DIR")
        manifest = load_artifact(self.artifact, self.name)
        capability = compute_capability(self.device_index)
        if manifest.tensorrt_version != trt.__version__ or manifest.compute_capability != capability:
            raise ArtifactError(
                f"{self.artifact} holds a plan for TensorRT {manifest.tensorrt_version} on compute "
                f"capability {manifest.compute_capability}; this machine has TensorRT {trt.__version__} "
                f"and {capability}: rebuild it with `shopstream engine build --backend tensorrt`")
        runtime = trt.Runtime(_logger(trt))
        self._engine = runtime.deserialize_cuda_engine(manifest.path_of(self.artifact, "plan").read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{self.artifact}: TensorRT could not deserialise the plan")
        self.dim = manifest.dim
        self.model_version = manifest.model_version
        self.precision = manifest.precision
        self.length_buckets = tuple(manifest.length_buckets or DEFAULT_BUCKETS)
        self.max_batch = (manifest.batch_buckets or (256,))[-1]
        self.tokenizer = Tokenizer(self.artifact, self.length_buckets)
        self._stream = torch.cuda.Stream(device=self.device_index)
        torch_dtype = {trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32,
                       trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._dtypes = {n: torch_dtype[self._engine.get_tensor_dtype(n)] for n in names}
        device = torch.device("cuda", self.device_index)
        for profile, length in enumerate(self.length_buckets):
            context = self._engine.create_execution_context()
            context.set_optimization_profile_async(profile, self._stream.cuda_stream)
            self._contexts.append(context)
            bufs = {n: torch.empty((self.max_batch, length) if n != "embeddings" else
                                   (self.max_batch, self.dim), dtype=self._dtypes[n], device=device)
                    for n in names}
            bufs["host_out"] = torch.empty((self.max_batch, self.dim), dtype=torch.float32).pin_memory()
            self._buffers[profile] = bufs
        self._stream.synchronize()
        log.info("TensorRT %s %s plan from %s", trt.__version__, self.precision, self.artifact)
        return self

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        n, length = input_ids.shape
        if n > self.max_batch:
            return np.concatenate([self.encode_tokens(input_ids[i:i + self.max_batch],
                                                      attention_mask[i:i + self.max_batch])
                                   for i in range(0, n, self.max_batch)])
        profile = min(bisect.bisect_left(self.length_buckets, length), len(self.length_buckets) - 1)
        width = self.length_buckets[profile]
        if length != width:
            pad = ((0, 0), (0, width - length))
            input_ids, attention_mask = np.pad(input_ids, pad), np.pad(attention_mask, pad)
        context, bufs = self._contexts[profile], self._buffers[profile]
        with torch.cuda.stream(self._stream):
            for name, host in (("input_ids", input_ids), ("attention_mask", attention_mask)):
                dev = bufs[name][:n]
                dev.copy_(torch.from_numpy(host).to(self._dtypes[name]), non_blocking=False)
                context.set_input_shape(name, (n, width))
                context.set_tensor_address(name, dev.data_ptr())
            out = bufs["embeddings"]
            context.set_tensor_address("embeddings", out.data_ptr())
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError("TensorRT execute_async_v3 failed")
            bufs["host_out"][:n].copy_(out[:n].float(), non_blocking=True)
        self._stream.synchronize()
        return bufs["host_out"][:n].numpy().copy()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._engine is None:
            raise RuntimeError("call load() before encode()")
        return encode_texts(self.tokenizer, texts, self.max_batch, self.dim, self.encode_tokens)

    def close(self) -> None:
        self._contexts.clear()
        self._buffers.clear()
        self._engine = None

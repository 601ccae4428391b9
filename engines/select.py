"""``--backend auto``: the fastest backend this machine can run, with the reason logged.

Order: tensorrt (needs TensorRT 10, a CUDA GPU and a TensorRT artifact), torch-cuda (needs a CUDA
GPU), onnxruntime (needs onnxruntime and an onnxruntime artifact), then torch on the CPU, which
always runs. Serving never builds an engine on the fly: without an artifact the ONNX Runtime and
TensorRT paths are skipped, and the log says which command builds one.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

AUTO_ORDER: tuple[str, ...] = ("tensorrt", "torch-cuda", "onnxruntime", "torch")


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str
    artifact: Path | None = None          # the artifact the chosen backend loads, if any
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def describe(self) -> str:
        parts = [f"text encoder backend {self.backend}: {self.reason}"]
        parts += [f"{name} skipped: {why}" for name, why in self.skipped]
        return "; ".join(parts)


def _artifact_backend(artifact: Path | None) -> str | None:
    if artifact is None:
        return None
    from engines.artifact import read_manifest

    return read_manifest(artifact).backend


def _check(name: str, artifact_backend: str | None) -> tuple[bool, str]:
    if name == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return False, "tensorrt is not installed (pip install 'shopstream[tensorrt]')"
        from engines.backends.tensorrt import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            return False, why
        if artifact_backend != "tensorrt":
            return False, "no TensorRT artifact given (shopstream engine build --backend tensorrt)"
        return True, "TensorRT plan for this GPU"
    if name == "torch-cuda":
        from engines.backends.torch_cuda import cuda_available

        if not cuda_available():
            return False, "no CUDA GPU (torch.cuda.is_available() is False)"
        return True, "a CUDA GPU is present"
    if name == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed (pip install 'shopstream[onnx]')"
        if artifact_backend != "onnxruntime":
            return False, "no onnxruntime artifact given (shopstream engine build --backend onnxruntime)"
        return True, "no GPU; ONNX Runtime artifact given"
    return True, "the reference CPU backend, always available"


def choose_backend(artifact: str | Path | None = None) -> BackendChoice:
    """Walk :data:`AUTO_ORDER` and return the first backend that can run here."""
    artifact = Path(artifact) if artifact else None
    artifact_backend = _artifact_backend(artifact)
    skipped: list[tuple[str, str]] = []
    for name in AUTO_ORDER:
        ok, why = _check(name, artifact_backend)
        if ok:
            use = artifact if artifact_backend == name else None
            if artifact is not None and use is None:
                why += f" (the {artifact_backend} artifact {artifact} is not used)"
            return BackendChoice(name, why, use, tuple(skipped))
        skipped.append((name, why))
    raise AssertionError("unreachable: torch always runs")  # pragma: no cover

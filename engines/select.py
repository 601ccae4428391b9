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


# -- the session encoder -------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionBackendChoice:
    backend: str
    precision: str
    reason: str
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def describe(self) -> str:
        parts = [f"session encoder backend {self.backend} {self.precision}: {self.reason}"]
        parts += [f"{name} skipped: {why}" for name, why in self.skipped]
        return "; ".join(parts)


def _session_check(name: str, folder: Path, manifest: dict) -> tuple[bool, str, str]:
    """``(ok, why, precision)``: lower precisions only where the artifact's ranking check allows."""
    from engines.session_model import ONNX_FILES, precision_allowed

    half, half_why = precision_allowed(manifest, "fp16")
    if name == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return False, "tensorrt is not installed (pip install 'shopstream[tensorrt]')", ""
        from engines.backends.session_tensorrt import find_session_plan

        precision = "fp16" if half else "fp32"
        if find_session_plan(folder, precision) is None:
            return False, f"no {precision} session plan for this TensorRT and GPU in {folder}", ""
        return True, f"TensorRT plan for this GPU; {half_why}", precision
    if name == "torch-cuda":
        from engines.backends.torch_cuda import cuda_available

        if not cuda_available():
            return False, "no CUDA GPU (torch.cuda.is_available() is False)", ""
        return True, f"a CUDA GPU is present; {half_why}", "fp16" if half else "fp32"
    if name == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed (pip install 'shopstream[onnx]')", ""
        if not (folder / ONNX_FILES["fp32"]).is_file():
            return False, f"the artifact has no {ONNX_FILES['fp32']} (shopstream train --export)", ""
        int8, int8_why = precision_allowed(manifest, "int8")
        if int8 and (folder / ONNX_FILES["int8"]).is_file():
            return True, f"no GPU; {int8_why}", "int8"
        return True, f"no GPU; fp32 ({int8_why})", "fp32"
    return True, "the reference CPU backend, always available", "fp32"


def choose_session_backend(folder: str | Path, *, backend: str = "auto",
                           precision: str = "auto") -> SessionBackendChoice:
    """Backend and precision of a trained session encoder: :data:`AUTO_ORDER`, first that runs.

    A lower precision (fp16 on a GPU, int8 on onnxruntime) is chosen only when the artifact's
    ``ranking_check`` says it ranks within ``RANKING_TOLERANCE`` of fp32 on validation data.
    A backend or precision given explicitly is kept (``auto`` fills in the other).
    """
    from engines.session_model import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    skipped: list[tuple[str, str]] = []
    for name in (AUTO_ORDER if backend == "auto" else (backend,)):
        ok, why, auto_precision = _session_check(name, folder, manifest)
        if ok or backend != "auto":
            chosen = (auto_precision or "fp32") if precision == "auto" else precision
            return SessionBackendChoice(name, chosen, why if ok else f"asked for ({why})", tuple(skipped))
        skipped.append((name, why))
    raise AssertionError("unreachable: torch always runs")  # pragma: no cover

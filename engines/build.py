"""Build a versioned engine artifact: export, compile, check parity, write the manifest.

Every artifact records the model hash and version of the weights it came from; the parity check
against the PyTorch reference on real catalogue titles runs at build time and a failure stops the
build (no manifest is written, so nothing can load the half-built folder).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from engines.artifact import EngineManifest, write_manifest
from engines.errors import EngineError
from engines.model import TEXT_DIM, model_hash, model_version, resolve_model_dir
from engines.tokenize import DEFAULT_BUCKETS

log = logging.getLogger(__name__)

#: backend -> precisions it builds
PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "int8"),
    "tensorrt": ("fp16", "fp32", "int8"),
    "torch": ("fp32",),
    "torch-cuda": ("fp16", "fp32"),
}
DEFAULT_PRECISION = {"onnxruntime": "fp32", "tensorrt": "fp16", "torch": "fp32", "torch-cuda": "fp16"}
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def build_engine(backend: str, out: str | Path, *, precision: str | None = None,
                 model_dir: str | Path | None = None, parity_texts: int = 512,
                 texts_file: str | Path | None = None) -> Path:
    """Write an artifact for ``backend`` into ``out`` and return the folder."""
    if backend in ("onnxruntime-cpu",):
        backend = "onnxruntime"
    if backend not in PRECISIONS:
        raise EngineError(f"cannot build {backend!r}; choose one of: {', '.join(PRECISIONS)}")
    precision = precision or DEFAULT_PRECISION[backend]
    if precision not in PRECISIONS[backend]:
        raise EngineError(f"{backend} builds {', '.join(PRECISIONS[backend])}, not {precision}")
    _check_machine(backend)
    src = resolve_model_dir(model_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    shutil.copy2(src / "tokenizer.json", out / "tokenizer.json")
    files = {"tokenizer": "tokenizer.json"}
    extra: dict = {}
    if backend in ("onnxruntime", "tensorrt"):
        from engines.export import DEFAULT_OPSET, export_text_encoder

        onnx_path = export_text_encoder(src, out / "model.onnx")
        files["onnx"] = onnx_path.name
        extra["onnx_opset"] = DEFAULT_OPSET
        if backend == "onnxruntime" and precision == "int8":
            from engines.export import quantize_int8

            fp32 = onnx_path.rename(out / "model.fp32.onnx")
            quantize_int8(fp32, out / "model.onnx")
            fp32.unlink()
        if backend == "tensorrt":
            from engines.backends.tensorrt import build_plan
            from engines.parity import catalogue_texts
            from engines.tokenize import Tokenizer

            calibration = None
            if precision == "int8":
                tok = Tokenizer(src)
                texts = catalogue_texts(1024, texts_file, seed=1)
                calibration = [(b.input_ids, b.attention_mask) for b in
                               (tok(texts[i:i + 64], length=32) for i in range(0, len(texts), 64))]
            plan, trt_version, capability = build_plan(onnx_path, out, precision=precision,
                                                       calibration=calibration)
            files["plan"] = plan.name
            extra.update(tensorrt_version=trt_version, compute_capability=capability)
    manifest = EngineManifest(backend=backend, precision=precision, model_version=model_version(src),
                              model_hash=model_hash(src), dim=TEXT_DIM, files=files,
                              length_buckets=DEFAULT_BUCKETS, batch_buckets=BATCH_BUCKETS, **extra)
    write_manifest(out, manifest)   # provisional: the backends load only folders with a manifest
    try:
        report = check_artifact(out, src, precision, parity_texts, texts_file)
    except BaseException:
        (out / "manifest.json").unlink(missing_ok=True)
        raise
    from dataclasses import replace

    write_manifest(out, replace(manifest, parity=report.as_dict()))
    log.info("built %s %s engine in %s: %s", backend, precision, out, report)
    return out


def _check_machine(backend: str) -> None:
    """Fail before exporting anything when this machine cannot build or run ``backend``."""
    from engines.errors import BackendUnavailableError

    if backend == "tensorrt":
        from engines.backends.tensorrt import import_tensorrt, tensorrt_available

        import_tensorrt()
        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailableError(f"cannot build a TensorRT plan here: {why}")
    elif backend == "torch-cuda":
        from engines.backends.torch_cuda import cuda_available

        if not cuda_available():
            raise BackendUnavailableError("torch-cuda artifacts are checked on the GPU: no CUDA GPU here")


def check_artifact(folder: str | Path, model_dir: str | Path | None, precision: str | None = None,
                   n_texts: int = 512, texts_file: str | Path | None = None, *,
                   texts: list[str] | None = None, strict: bool = True):
    """Load the artifact with its backend and compare it with the PyTorch CPU model on ``texts``
    (default: ``n_texts`` catalogue titles)."""
    from engines.artifact import read_manifest
    from engines.backends.torch_cpu import TorchTextEncoder
    from engines.parity import catalogue_texts, check_parity
    from engines.registry import backend_class

    manifest = read_manifest(folder)
    precision = precision or manifest.precision
    texts = texts if texts is not None else catalogue_texts(n_texts, texts_file)
    reference = TorchTextEncoder(model_dir).load()
    kwargs = {"artifact": folder, "model_dir": model_dir}
    engine = backend_class(manifest.backend)(**kwargs).load()
    try:
        if engine.model_version != reference.model_version:
            raise EngineError(f"{manifest.backend} reports model {engine.model_version}, "
                              f"the reference {reference.model_version}")
        return check_parity(reference.encode, engine.encode, texts, precision, strict=strict)
    finally:
        engine.close()
        reference.close()

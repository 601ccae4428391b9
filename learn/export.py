"""Export a trained session encoder to ONNX (fp32, fp16, int8) and check parity with PyTorch.

The user tower's graph takes right-aligned ``vectors`` (float32 ``[batch, length, dim]``),
``kinds`` and ``gaps`` (int64 ``[batch, length]``) and returns unit ``embeddings`` ``[batch, dim]``;
the item tower's graph maps ``text`` ``[n, dim]`` to product vectors. Both reuse
:func:`engines.export.export_onnx`; int8 is onnxruntime's dynamic quantisation
(:func:`engines.export.quantize_int8`), fp16 converts weights and activations with fp32 inputs
and outputs kept.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.errors import MissingExtraError, ParityError
from engines.session_model import (
    ITEM_TOWER_ONNX,
    ONNX_FILES,
    load_torch_model,
    read_manifest,
)

log = logging.getLogger(__name__)

#: fp32 ONNX against PyTorch: max abs difference of the unit output vectors.
FP32_TOLERANCE = 1e-4


def example_inputs(dim: int, batch: int = 3, length: int = 7, seed: int = 0):
    """Sessions of different lengths (left padding), event types and gaps, for tracing and parity."""
    import torch

    from engines.session_network import GAP_BASE, N_GAPS

    g = torch.Generator().manual_seed(seed)
    vecs = torch.nn.functional.normalize(torch.randn(batch, length, dim, generator=g), dim=-1)
    kinds = torch.randint(1, 6, (batch, length), generator=g)
    gaps = torch.randint(GAP_BASE, N_GAPS, (batch, length), generator=g)
    for b in range(batch):
        pad = (b * length) // (batch + 1)
        vecs[b, :pad] = 0.0
        kinds[b, :pad] = 0
        gaps[b, :pad] = 0
    return vecs, kinds, gaps


def export_session_encoder(folder: str | Path, *, precisions=("fp32", "fp16", "int8")) -> dict:
    """Write the ONNX graphs into the artifact folder; returns the parity figures per precision."""
    import torch

    from engines.export import export_onnx, quantize_int8

    folder = Path(folder)
    model = load_torch_model(folder)
    dim = read_manifest(folder)["dim"]
    fp32 = folder / ONNX_FILES["fp32"]
    export_onnx(model, example_inputs(dim), fp32, input_names=("vectors", "kinds", "gaps"),
                output_names=("embeddings",),
                dynamic_axes={"vectors": {0: "batch", 1: "length"}, "kinds": {0: "batch", 1: "length"},
                              "gaps": {0: "batch", 1: "length"}, "embeddings": {0: "batch"}})
    if model.item_tower is not None:
        export_onnx(model.item_tower, (torch.nn.functional.normalize(torch.randn(4, dim), dim=-1),),
                    folder / ITEM_TOWER_ONNX, input_names=("text",), output_names=("vectors",),
                    dynamic_axes={"text": {0: "n"}, "vectors": {0: "n"}})
    if "fp16" in precisions:
        to_fp16(fp32, folder / ONNX_FILES["fp16"])
    if "int8" in precisions:
        quantize_int8(fp32, folder / ONNX_FILES["int8"], keep_fp32=())
    return parity(folder, precisions=precisions)


def to_fp16(src: Path, dst: Path) -> Path:
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise MissingExtraError("onnx / onnxruntime", "onnx", exc) from exc
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def parity(folder: str | Path, *, precisions=("fp32", "fp16", "int8"), seed: int = 1) -> dict:
    """Max abs difference and worst cosine of each ONNX graph against PyTorch on example sessions.

    Raises :class:`ParityError` when fp32 differs by more than :data:`FP32_TOLERANCE`."""
    import torch

    from engines.session_model import _ort_session

    folder = Path(folder)
    model = load_torch_model(folder)
    dim = read_manifest(folder)["dim"]
    vecs, kinds, gaps = example_inputs(dim, batch=16, length=12, seed=seed)
    with torch.inference_mode():
        ref = model(vecs, kinds, gaps).numpy()
    feeds = {"vectors": vecs.numpy(), "kinds": kinds.numpy(), "gaps": gaps.numpy()}
    out = {}
    for p in precisions:
        got = _ort_session(folder / ONNX_FILES[p], None).run(None, feeds)[0].astype(np.float32)
        out[p] = {"max_abs_diff": float(np.abs(got - ref).max()),
                  "min_cosine": float(np.min(np.sum(got * ref, axis=1)))}
    if "fp32" in out and out["fp32"]["max_abs_diff"] > FP32_TOLERANCE:
        raise ParityError(f"{folder}: ONNX fp32 differs from PyTorch by {out['fp32']['max_abs_diff']:.2e} "
                          f"(tolerance {FP32_TOLERANCE:g})")
    log.info("session encoder parity: %s", out)
    return out


def ranking_check(folder: str | Path, data, text_vecs: np.ndarray, *, threads: int | None = None,
                  write: bool = True) -> dict:
    """NDCG and Recall of each exported precision on the **validation** fold (never the test fold),
    written into the manifest as ``ranking_check``: what ``auto`` reads to decide whether fp16 (on a
    GPU) or int8 (on onnxruntime) may serve (:func:`engines.session_model.precision_allowed`)."""
    import json

    from engines.session_model import MANIFEST, load_session_encoder
    from learn.evaluate import TrainedEncoder, evaluate
    from learn.split import leave_one_out

    folder = Path(folder)
    fold = leave_one_out(data).valid
    out: dict = {"fold": "valid", "users": len(fold)}
    for precision, name in ONNX_FILES.items():
        if not (folder / name).is_file():
            continue
        enc = load_session_encoder(folder, backend="onnxruntime", precision=precision, threads=threads)
        row = evaluate([TrainedEncoder(enc, text_vecs, data.n_items, name=precision, item_ids=data.item_ids)], data, fold,
                       progress=False)[precision]
        out[precision] = {k: round(float(row[k]), 5) for k in ("ndcg@10", "recall@10", "ndcg@20", "recall@20")}
    if write:
        path = folder / MANIFEST
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["ranking_check"] = out
        path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    log.info("session encoder ranking check (validation fold): %s", out)
    return out

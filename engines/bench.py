"""Encoder throughput and latency, per backend x precision x batch x sequence length.

Inputs are real catalogue titles, padded (or cut) to the measured length: the model computes every
position whatever the mask says, so the cost of a 64-token batch is that of 64 real tokens.
"model" rows time ``encode_tokens`` on ready token arrays; "tokenize+model" rows time the fast
tokenizer and the model together, as the worker calls them. Calls run one after another, so
``seq_per_s`` is batch / mean call time, and p50/p99 are per-call latencies.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

BATCHES: tuple[int, ...] = (1, 8, 64, 256)
LENGTHS: tuple[int, ...] = (16, 64)

# all-MiniLM-L6-v2: 6 layers, hidden 384, FFN 1536 (embedding lookups are not FLOPs)
_LAYERS, _HIDDEN, _FFN = 6, 384, 1536


def flops_per_sequence(length: int) -> float:
    """Multiply-adds x 2 of one sequence: projections, FFN and the two attention products."""
    dense = 2 * (_HIDDEN * 3 * _HIDDEN + _HIDDEN * _HIDDEN + 2 * _HIDDEN * _FFN)
    attention = 2 * 2 * length * _HIDDEN
    return float(_LAYERS * length * (dense + attention))


@dataclass(frozen=True)
class BenchRow:
    backend: str
    precision: str
    batch: int
    length: int
    mode: str           # "model" | "tokenize+model"
    seq_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(fn: Callable[[], Any], *, warmup: int = 3, min_calls: int = 5, max_calls: int = 2000,
               min_time_s: float = 1.0) -> np.ndarray:
    """Per-call wall times in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def bench_encoder(encoder, texts: Sequence[str], *, batches: Sequence[int] = BATCHES,
                  lengths: Sequence[int] = LENGTHS, modes: Sequence[str] = ("model", "tokenize+model"),
                  min_time_s: float = 1.0, note: str = "") -> list[BenchRow]:
    """Time a loaded encoder (one with ``tokenizer`` and ``encode_tokens``) on ``texts``."""
    rows = []
    tok = encoder.tokenizer
    precision = getattr(encoder, "precision", "fp32")
    for length in lengths:
        for batch in batches:
            chunk = [texts[i % len(texts)] for i in range(batch)]
            tokens = tok(chunk, length=length)
            for mode in modes:
                if mode == "model":
                    def call():
                        return encoder.encode_tokens(tokens.input_ids, tokens.attention_mask)
                else:
                    def call():
                        t = tok(chunk, length=length)
                        return encoder.encode_tokens(t.input_ids, t.attention_mask)
                times = time_calls(call, min_time_s=min_time_s)
                row = BenchRow(encoder.name, precision, batch, length, mode,
                               seq_per_s=batch / float(times.mean()),
                               p50_ms=float(np.percentile(times, 50) * 1e3),
                               p99_ms=float(np.percentile(times, 99) * 1e3), calls=len(times), note=note)
                log.info("%s", row)
                rows.append(row)
    return rows


def bench_tokenizer(tokenizer, texts: Sequence[str], *, batches: Sequence[int] = BATCHES,
                    lengths: Sequence[int] = LENGTHS, min_time_s: float = 0.5) -> list[BenchRow]:
    """The fast tokenizer alone (tokenise + pad to the bucket)."""
    rows = []
    for length in lengths:
        for batch in batches:
            chunk = [texts[i % len(texts)] for i in range(batch)]
            times = time_calls(lambda: tokenizer(chunk, length=length), min_time_s=min_time_s)
            rows.append(BenchRow("tokenizer", "-", batch, length, "tokenize", batch / float(times.mean()),
                                 float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3),
                                 len(times)))
    return rows


def machine() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(),
                            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else os.cpu_count(), "python": platform.python_version()}
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


def run_encoder_bench(backends: Sequence[str] | None = None, *, model_dir=None, artifacts_dir=None,
                      batches: Sequence[int] = BATCHES, lengths: Sequence[int] = LENGTHS,
                      min_time_s: float = 1.0, texts: Sequence[str] | None = None,
                      threads: int | None = None) -> dict[str, Any]:
    """Every available backend x precision: build missing CPU artifacts into ``artifacts_dir``
    (the bench's own scratch folder), then time each. Returns rows, skipped configs and machine."""
    from pathlib import Path

    from engines.parity import catalogue_texts

    texts = list(texts) if texts is not None else catalogue_texts(512)
    configs = available_configs(backends)
    rows: list[BenchRow] = []
    skipped: list[dict[str, str]] = []
    for backend, precision, why in configs:
        if why:
            skipped.append({"backend": backend, "precision": precision, "reason": why})
            continue
        encoder = _load_for_bench(backend, precision, model_dir, artifacts_dir and Path(artifacts_dir), threads)
        try:
            rows += bench_encoder(encoder, texts, batches=batches, lengths=lengths, min_time_s=min_time_s)
        finally:
            encoder.close()
    from engines.model import resolve_model_dir
    from engines.tokenize import Tokenizer

    rows += bench_tokenizer(Tokenizer(resolve_model_dir(model_dir)), texts, batches=batches, lengths=lengths)
    return {"machine": machine(), "rows": [r.as_dict() for r in rows], "skipped": skipped,
            "flops_per_sequence": {str(n): flops_per_sequence(n) for n in lengths}}


def available_configs(backends: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(backend, precision, reason-not-run or "") for each known configuration."""
    import importlib.util

    from engines.backends.torch_cuda import cuda_available

    gpu = cuda_available()
    trt = importlib.util.find_spec("tensorrt") is not None
    ort = importlib.util.find_spec("onnxruntime") is not None
    table = [
        ("torch", "fp32", ""),
        ("onnxruntime", "fp32", "" if ort else "onnxruntime not installed"),
        ("onnxruntime", "int8", "" if ort else "onnxruntime not installed"),
        ("torch-cuda", "fp16", "" if gpu else "no CUDA GPU"),
        ("torch-cuda", "fp32", "" if gpu else "no CUDA GPU"),
        ("tensorrt", "fp16", "" if trt and gpu else "TensorRT not installed" if not trt else "no CUDA GPU"),
    ]
    if backends:
        table = [c for c in table if c[0] in backends]
    return table


def _load_for_bench(backend: str, precision: str, model_dir, artifacts_dir, threads):
    from engines.registry import backend_class

    options: dict[str, Any] = {"model_dir": model_dir}
    if backend in ("onnxruntime", "tensorrt"):
        from engines.artifact import read_manifest
        from engines.build import build_engine
        from engines.errors import ArtifactError

        if artifacts_dir is None:
            raise ValueError("artifacts_dir is needed to benchmark compiled engines")
        from engines.model import model_version, resolve_model_dir

        folder = artifacts_dir / f"{backend}-{precision}"
        try:
            fresh = read_manifest(folder).model_version == model_version(resolve_model_dir(model_dir))
        except ArtifactError:
            fresh = False
        if not fresh:
            build_engine(backend, folder, precision=precision, model_dir=model_dir, parity_texts=128)
        options["artifact"] = folder
    elif backend == "torch-cuda":
        options["precision"] = precision
    if threads and backend in ("torch", "onnxruntime"):
        options["threads"] = threads
    return backend_class(backend)(**options).load()


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'backend':<12} {'prec':<5} {'batch':>5} {'len':>4} {'mode':<15} {'seq/s':>10} "
             f"{'p50 ms':>8} {'p99 ms':>8} {'calls':>6}"]
    for r in result["rows"]:
        lines.append(f"{r['backend']:<12} {r['precision']:<5} {r['batch']:>5} {r['length']:>4} {r['mode']:<15} "
                     f"{r['seq_per_s']:>10.1f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['calls']:>6}")
    for s in result["skipped"]:
        lines.append(f"skipped {s['backend']} {s['precision']}: {s['reason']}")
    for name, c in result.get("query_cache", {}).items():
        lines.append(f"query cache on {name}: {c['queries']} queries, {c['distinct']} distinct, "
                     f"hit rate {c['hit_rate']:.3f}")
    m = result.get("machine", {})
    lines.append(f"machine: {m.get('cpus')} CPUs, load average {m.get('load_avg')}, torch {m.get('torch')}"
                 + (f", GPU {m['gpu']}" if m.get("gpu") else ""))
    return "\n".join(lines)


def query_cache_hit_rates(streams: dict[str, Sequence[str]], *, encoder=None, capacity: int = 50_000,
                          call_size: int = 64) -> dict[str, dict[str, float]]:
    """Replay each stream of search queries through a fresh :class:`QueryEmbeddingCache`, in calls
    of ``call_size`` queries (one worker micro-batch each), and report the hit rate."""
    from engines.query_cache import QueryEmbeddingCache

    if encoder is None:
        from engines.backends.torch_cpu import TorchTextEncoder

        encoder = TorchTextEncoder().load()
    out = {}
    for name, queries in streams.items():
        cache = QueryEmbeddingCache(encoder, capacity)
        for i in range(0, len(queries), call_size):
            cache.encode(queries[i:i + call_size])
        out[name] = {"queries": len(queries), "distinct": len({cache.normalise(q) for q in queries}),
                     "hits": cache.hits, "misses": cache.misses, "hit_rate": cache.hit_rate}
    return out

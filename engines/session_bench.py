"""Cost per worker batch of the session encoder: one ``embed`` call (packing on the CPU, the
backend's run, the copy back) for each batch size, over real shoppers' sessions.

``shopstream bench session`` prints it; the GPU figures in docs/benchmarks.md come from the same
function run on an NVIDIA H100.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

BATCHES: tuple[int, ...] = (1, 16, 64, 256)


def cost_per_batch(encoder, sessions: Sequence, now: Sequence[float], *, batches: Sequence[int] = BATCHES,
                   min_time_s: float = 1.0, warmup: int = 3) -> list[dict]:
    """Median / p90 milliseconds of one ``encoder.embed`` call per batch size; sessions cycle."""
    rows = []
    n = len(sessions)
    for b in batches:
        picks = [[(i * b + j) % n for j in range(b)] for i in range(max(1, n // b) or 1)]
        for i in range(warmup):
            p = picks[i % len(picks)]
            encoder.embed([sessions[j] for j in p], [now[j] for j in p])
        times, t_end, i = [], time.perf_counter() + min_time_s, 0
        while time.perf_counter() < t_end or len(times) < 5:
            p = picks[i % len(picks)]
            batch, at = [sessions[j] for j in p], [now[j] for j in p]
            t0 = time.perf_counter()
            encoder.embed(batch, at)
            times.append(time.perf_counter() - t0)
            i += 1
        ms = np.array(times) * 1000.0
        lengths = [min(len(sessions[j]), getattr(encoder, "max_len", 50) or 50) for p in picks for j in p]
        rows.append({"batch": b, "p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                     "per_session_us": float(np.median(ms)) * 1000.0 / b, "calls": len(times),
                     "mean_events": float(np.mean(lengths))})
    return rows


def format_rows(name: str, rows: list[dict]) -> str:
    lines = [f"{name}", "| batch | p50 ms | p90 ms | µs per session | mean events |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['per_session_us']:.0f} | "
                     f"{r['mean_events']:.1f} |")
    return "\n".join(lines)

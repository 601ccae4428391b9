"""``shopstream bench session``: cost of one session-encoder call per worker batch, on real
shoppers' sessions (the shipped Online Retail sample's customers, their last 50 purchases)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from stream.settings import Settings

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "online_retail_sample.csv.gz"


def run_session_bench(settings: Settings, *, backends: Sequence[tuple[str, str]] = (), batches: Sequence[int] = (),
                      threads: int | None = None, min_time_s: float = 1.0) -> dict:
    """``backends``: ``(backend, precision)`` pairs, ``auto`` allowed; default what ``auto`` picks
    plus every CPU runner at fp32 (and int8 on onnxruntime)."""
    from engines.session_bench import BATCHES, cost_per_batch
    from engines.session_model import load_session_encoder
    from learn.data import load_online_retail
    from learn.embed import text_vectors
    from learn.evaluate import to_sessions
    from learn.report import machine
    from stream.live.services import load_text_encoder, session_encoder_path

    path = session_encoder_path(settings)
    if path is None:
        raise ValueError("bench session measures a trained session encoder; pooling has no model to time")
    data = load_online_retail(SAMPLE)
    text = load_text_encoder(settings)
    vecs = text_vectors(data.texts, text, cache_dir=Path(settings.data_dir) / "cache" / "text-vectors", progress=False)
    text.close()
    probe = load_session_encoder(path, "torch", precision="fp32", threads=threads)
    space = probe.item_vectors(vecs)
    sessions, now = to_sessions([s.head(len(s)) for s in data.sequences], space, keep_nan=True)
    result = {"model": str(path), "model_version": probe.items_version, "machine": machine(), "threads": threads,
              "sessions": len(sessions), "runs": []}
    for backend, precision in backends or (("auto", "auto"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                           ("torch", "fp32")):
        enc = load_session_encoder(path, backend, precision=precision, threads=threads)
        result["runs"].append({"backend": enc.backend, "precision": enc.precision, "asked": f"{backend}/{precision}",
                               "rows": cost_per_batch(enc, sessions, now, batches=batches or BATCHES,
                                                      min_time_s=min_time_s)})
        enc.close()
    return result


def render(result: dict) -> str:
    from engines.session_bench import format_rows

    head = f"session encoder {result['model_version']} on {result['machine']} ({result['sessions']} sessions)"
    return "\n\n".join([head] + [format_rows(f"{r['backend']} {r['precision']} (asked {r['asked']})", r["rows"])
                                 for r in result["runs"]])

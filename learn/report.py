"""One evaluation run: baselines and trained encoders on one fold, a JSON report and a plot."""
from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from learn.data import Interactions
from learn.evaluate import LastItemKNN, Pooling, Popularity, TrainedEncoder, evaluate
from learn.split import leave_one_out

log = logging.getLogger(__name__)

PROTOCOL = ("leave-one-out: the last product event of each shopper is the test target, the one before "
            "it the validation target; full ranking over every product of the catalogue (no sampled "
            "negatives); products already in the shopper's input are removed from every method's ranking; "
            "ties broken by item order")


def machine() -> str:
    """CPU model and core count, for the record next to every figure."""
    import os

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def model_label(path: str | Path) -> str:
    path = Path(path)
    if path.suffix == ".onnx":
        precision = path.name.split(".")[1] if path.name.count(".") > 1 else "fp32"
        return f"trained:{path.parent.name}:onnx-{precision}"
    return f"trained:{path.name}"


def run_evaluation(data: Interactions, text_vecs: np.ndarray, *, models: Sequence[str | Path] = (),
                   fold: str = "test", baselines: bool = True, threads: int | None = None,
                   progress: bool = True) -> dict:
    from engines.session_model import load_session_encoder

    if fold not in ("test", "valid"):
        raise ValueError(f"fold must be 'test' or 'valid', not {fold!r}")
    split = leave_one_out(data)
    f = split.test if fold == "test" else split.valid
    n = data.n_items
    methods = [Popularity(f, n), LastItemKNN(text_vecs, n), Pooling(text_vecs, n)] if baselines else []
    for path in models:
        # a folder is its fp32 reference (on the backend auto picks); an .onnx file names its precision
        enc = load_session_encoder(path, threads=threads,
                                   **({} if Path(path).suffix == ".onnx" else {"precision": "fp32"}))
        methods.append(TrainedEncoder(enc, text_vecs, n, name=model_label(path), item_ids=data.item_ids))
        if enc.has_id_vectors:      # the same model with every product as if unseen: titles alone
            methods.append(TrainedEncoder(enc, text_vecs, n, name=model_label(path) + ":titles-only"))
    t0 = time.perf_counter()
    results = evaluate(methods, data, f, progress=progress)
    return {"dataset": data.summary(), "fold": fold, "users": len(f), "dropped_users": split.dropped_users,
            "protocol": PROTOCOL, "methods": results, "seconds": round(time.perf_counter() - t0, 1),
            "machine": machine(),
            "pooling": "engines.session.PoolingSessionEncoder defaults; every event of a sequences file is "
                       "a 'purchase'; with no clock all events share one time, so only the 8-event half-life "
                       "weighs them"}


def write_report(report: dict, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
    import orjson

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json"}
    paths["json"].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    if plot:
        from learn.plot import plot_report

        paths["plot"] = plot_report(report, out_dir / "metrics_at_k.png")
    return paths


def table(report: dict) -> str:
    """A Markdown table of the headline metrics."""
    cols = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@20", "coverage@10")
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)

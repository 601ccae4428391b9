"""What differential privacy costs in ranking quality: the same short training run at several epsilons.

``python -m learn.dp_cost --dataset online-retail --epsilons inf,8,3,1 --epochs 4`` trains the
session encoder from scratch once per epsilon (same seed, same configuration, same epochs; ``inf``
is ordinary training, ``clip`` the DP machinery without noise: frozen item tower, per-shopper
clipping, Poisson batches) and prints test-fold NDCG@10 / Recall@10 (leave-one-out, full ranking) with
the epsilon each DP run actually spent. A benchmark: it prints numbers, it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path

log = logging.getLogger(__name__)


def load(dataset: str, shared: Path):
    from learn.data import load_amazon_beauty, load_online_retail

    if dataset == "online-retail":
        return load_online_retail(shared / "online-retail" / "online_retail.csv.gz")
    if dataset == "beauty":
        return load_amazon_beauty(shared / "amazon-beauty")
    raise ValueError(f"unknown dataset {dataset!r}: online-retail or beauty")


def run(dataset: str, epsilons: list[float | None], *, epochs: int, max_minutes: float, shared: Path, cache: Path,
        threads: int = 1, seed: int = 0, delta: float = 1e-5, max_grad_norm: float = 1.0) -> list[dict]:
    import torch

    from engines import create_text_encoder
    from learn.embed import text_vectors
    from learn.evaluate import evaluate
    from learn.split import leave_one_out
    from learn.train import TrainConfig, _torch_method, train

    torch.set_num_threads(threads)
    data = load(dataset, shared)
    enc = create_text_encoder("torch").load()
    vecs = text_vectors(data.texts, enc, cache_dir=cache, progress=False)
    enc.close()
    split = leave_one_out(data)
    rows = []
    for eps in epsilons:
        cfg = TrainConfig(lr=3e-3, epochs=epochs, patience=epochs, max_minutes=max_minutes, threads=threads,
                          seed=seed, dp_epsilon=eps, dp_delta=delta,
                          dp_max_grad_norm=max_grad_norm)
        t0 = time.perf_counter()
        result = train(data, vecs, split, cfg, progress=False)
        method = _torch_method(result.model, torch.from_numpy(vecs), data.n_items, cfg.max_len)
        test = evaluate([method], data, split.test, progress=False)["trained"]
        row = {"dataset": dataset, "target_epsilon": "none (no DP)" if eps is None else ("clip only" if math.isinf(eps) else eps), "epochs_run": len(result.history),
               "best_epoch": result.best_epoch, "ndcg@10": round(test["ndcg@10"], 4),
               "recall@10": round(test["recall@10"], 4), "seconds": round(time.perf_counter() - t0, 1),
               "privacy": result.privacy}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _epsilons(text: str) -> list[float | None]:
    """``inf`` (no DP), ``clip`` (the DP machinery without noise) or a positive number, comma-separated."""
    out: list[float | None] = []
    for x in text.split(","):
        x = x.strip()
        if x in ("inf", "clip"):
            out.append(None if x == "inf" else math.inf)
            continue
        try:
            value = float(x)
        except ValueError:
            value = math.nan
        if not 0 < value < math.inf:           # nan too
            raise argparse.ArgumentTypeError(f"{x!r} is not inf, clip or a positive epsilon")
        out.append(value)
    return out


def _at_least(low: float, kind=int):
    """An argparse type: a number of ``kind`` no smaller than ``low``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range")
        return value
    return parse


def main(argv: list[str] | None = None) -> None:
    from engines.errors import EngineError

    p = argparse.ArgumentParser(prog="python -m learn.dp_cost", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="online-retail", choices=["online-retail", "beauty"])
    p.add_argument("--epsilons", type=_epsilons, default="inf,8,3,1",
                   help="comma-separated: inf (no DP), clip (no noise) or a positive epsilon")
    p.add_argument("--epochs", type=_at_least(1), default=4)
    p.add_argument("--max-minutes", type=_at_least(0.0, float), default=0.0)
    p.add_argument("--threads", type=_at_least(1), default=1)
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--cache", type=Path, default=Path("var/cache/text-vectors"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        rows = run(a.dataset, a.epsilons, epochs=a.epochs, max_minutes=a.max_minutes,
                   shared=a.shared, cache=a.cache, threads=a.threads)
    except (EngineError, OSError) as exc:        # missing data or extra: one line, no traceback
        p.exit(2, f"{p.prog}: error: {exc}\n")
    print(f"# {platform.processor() or platform.machine()}, {a.threads} thread(s)")
    print("| target epsilon | epsilon spent | NDCG@10 | Recall@10 | epochs | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        spent = r["privacy"]["epsilon"] if r["privacy"] else "-"
        print(f"| {r['target_epsilon']} | {spent} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | "
              f"{r['epochs_run']} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()

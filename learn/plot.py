"""A PNG of Recall@K and NDCG@K against K, one line per method (matplotlib, the ``eval`` extra)."""
from __future__ import annotations

from pathlib import Path

from engines.errors import MissingExtraError


def plot_report(report: dict, path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("matplotlib", "eval", exc) from exc
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, row in report["methods"].items():
        c = row["curve"]
        axes[0].plot(c["k"], c["recall"], marker="o", ms=3, label=name)
        axes[1].plot(c["k"], c["ndcg"], marker="o", ms=3, label=name)
    for ax, metric in zip(axes, ("Recall@K", "NDCG@K")):
        ax.set_xlabel("K")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    d = report["dataset"]
    fig.suptitle(f"{d['name']}: {report['fold']} fold, leave-one-out, full ranking over {d['items']} items, "
                 f"{report['users']} users", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

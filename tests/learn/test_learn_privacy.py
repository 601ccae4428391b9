"""DP-SGD training runs, spends no more than its epsilon, and says what it spent.

Synthetic shoppers over synthetic product vectors (no data set, no text model): the point is the
mechanism (opacus wrapping, Poisson batches, the accountant), not the quality.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest


def synthetic(n_items: int = 40, n_users: int = 240, dim: int = 16, seed: int = 0):
    from engines.session import KIND_CODES
    from learn.data import Interactions, UserSequence

    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n_items, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    seqs = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        items = (start + np.arange(6)) % n_items           # shoppers walk the catalogue: next = +1
        seqs.append(UserSequence(f"u{u}", items.astype(np.int64), np.full(6, KIND_CODES["purchase"], np.int64),
                                 1.7e9 + 60.0 * np.arange(6)))
    return Interactions([f"p{i}" for i in range(n_items)], [f"product {i}" for i in range(n_items)], seqs), vecs


def test_dp_training_reports_the_epsilon_it_spent(tmp_path):
    pytest.importorskip("opacus", reason="DP training needs the privacy extra (opacus)")
    import torch

    from engines.session_model import read_manifest, save_artifact
    from learn.split import leave_one_out
    from learn.train import TrainConfig, train

    data, vecs = synthetic()
    split = leave_one_out(data)
    cfg = TrainConfig(d_model=16, layers=1, heads=2, ffn=32, item_hidden=32, max_len=8, batch_size=32, lr=3e-3,
                      epochs=3, patience=3, threads=1, dp_epsilon=3.0, dp_delta=1e-4, dp_max_grad_norm=1.0)
    result = train(data, vecs, split, cfg, progress=False)
    p = result.privacy
    assert p is not None and 0 < p["epsilon"] <= 3.0 + 1e-6, p
    assert p["delta"] == 1e-4 and p["steps"] >= 3 and p["noise_multiplier"] > 0 and p["unit"] == "shopper"
    # the item tower is frozen under DP: it is still the identity it started as
    assert not torch.any(result.model.item_tower.fc2.weight)
    # a clean module comes back: no opacus hooks, exportable, and the manifest keeps the figures
    assert not result.model._forward_hooks and not any(m._forward_hooks for m in result.model.modules())
    art = save_artifact(result.model, tmp_path / "dp", text_model_version="t", record={"privacy": p})
    assert read_manifest(art)["privacy"]["epsilon"] == p["epsilon"]


def test_dp_refuses_in_batch_negatives():
    from learn.train import TrainConfig

    with pytest.raises(ValueError, match="negatives full"):
        TrainConfig(dp_epsilon=1.0, negatives="inbatch").validate()


def test_without_opacus_the_error_names_the_privacy_extra(monkeypatch):
    from engines.errors import MissingExtraError
    from learn.split import leave_one_out
    from learn.train import TrainConfig, train

    monkeypatch.setitem(sys.modules, "opacus", None)         # as if the extra were not installed
    data, vecs = synthetic(n_users=20)
    cfg = TrainConfig(d_model=16, layers=1, heads=2, ffn=32, item_hidden=32, max_len=8, epochs=1, dp_epsilon=1.0)
    with pytest.raises(MissingExtraError, match=r"shopstream\[privacy\]"):
        train(data, vecs, leave_one_out(data), cfg, progress=False)


@pytest.mark.parametrize("args, needle", [
    (["--epsilons", "8,x"], "'x' is not inf, clip or a positive epsilon"),
    (["--epsilons", "-1"], "'-1' is not inf, clip or a positive epsilon"),
    (["--epochs", "0"], "argument --epochs: '0' is out of range"),
    (["--dataset", "movies"], "invalid choice: 'movies'"),
    (["--shared", "/nonexistent", "--epochs", "1"], "/nonexistent/online-retail/online_retail.csv.gz: no such file"),
])
def test_the_dp_cost_benchmark_refuses_bad_arguments_in_one_line(args, needle):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "learn.dp_cost", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("python -m learn.dp_cost: error:")]
    assert len(errors) == 1 and needle in errors[0], r.stderr

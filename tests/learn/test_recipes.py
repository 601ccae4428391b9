"""``shopstream train`` without recipe flags chooses its recipe on the validation fold only.

A small slice of the shipped Online Retail sample, written in the generic format; the same run on a
copy whose test targets are all replaced by other products makes the same choice with the same
validation figures, while its test figures differ: the test fold is read at the end, never before.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "stream" / "data" / "online_retail_sample.csv.gz"
SMALL = ["--d-model", "16", "--layers", "1", "--heads", "1", "--max-len", "20", "--threads", "1",
         "--batch-size", "64", "--no-export", "--budget-minutes", "20"]     # architecture, not recipe, flags


def _slice(tmp_path: Path):
    from learn.data import load_online_retail, most_popular_slice, write_generic

    data = most_popular_slice(load_online_retail(SAMPLE), 40, min_length=4, max_users=200)
    items, seqs = write_generic(data, tmp_path / "clean")
    rng = np.random.default_rng(0)
    lines = []
    for line in seqs.read_text().splitlines():     # each shopper's last product: one they never touched
        user, ids = line.split("\t")
        ids = ids.split()
        ids[-1] = str(rng.choice([p for p in data.item_ids if p not in ids]))
        lines.append(f"{user}\t{' '.join(ids)}\n")
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "items.tsv").write_text(items.read_text())
    (bad / "sequences.tsv").write_text("".join(lines))
    return (items, seqs), (bad / "items.tsv", bad / "sequences.tsv")


def _train(files, out: Path, data_dir: Path) -> tuple[str, dict]:
    """``shopstream train`` as a user runs it (a process), with no recipe flag."""
    env = dict(os.environ, SHOPSTREAM_DATA_DIR=str(data_dir), SHOPSTREAM_ENCODER_BACKEND="torch")
    res = subprocess.run([sys.executable, "-m", "stream", "train", "--items", str(files[0]), "--sequences",
                          str(files[1]), "--out", str(out), *SMALL], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    return res.stdout, json.loads((out / "manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(600)        # two `shopstream train` processes: text model, five small trainings each
def test_train_without_flags_chooses_on_validation_and_never_reads_the_test_fold(tmp_path):
    from learn.recipes import RECIPES

    clean, corrupt = _slice(tmp_path)
    out1, m1 = _train(clean, tmp_path / "a", tmp_path / "var")
    out2, m2 = _train(corrupt, tmp_path / "b", tmp_path / "var")

    chosen = re.search(r"^recipe: (\S+) \(.*\): highest validation NDCG@10 ([0-9.]+)", out1, re.M)
    assert chosen, out1
    assert chosen.group(1) in {r.name for r in RECIPES}
    for r in RECIPES:                                   # every candidate tried and shown with its figure
        assert re.search(rf"^  {re.escape(r.name)}\s+valid NDCG@10 [0-9.]+", out1, re.M), out1
    rec1, rec2 = m1["recipe"], m2["recipe"]
    assert rec1["fold"] == "valid" and rec1["chosen"] == chosen.group(1)
    assert m1["train_config"]["id_embeddings"] == rec1["fields"]["id_embeddings"]

    # the corrupted test fold changes nothing before the end ...
    assert rec2["chosen"] == rec1["chosen"]
    assert [(t["recipe"], t["ndcg@10"], t["recall@10"], t["best_epoch"]) for t in rec2["trials"]] == \
           [(t["recipe"], t["ndcg@10"], t["recall@10"], t["best_epoch"]) for t in rec1["trials"]]
    assert m2["valid"] == m1["valid"]
    # ... and the test figures read at the end do change
    t1 = re.search(r"^\| trained:a \|.*$", out1, re.M).group(0).split("|")[2:]
    t2 = re.search(r"^\| trained:b \|.*$", out2, re.M).group(0).split("|")[2:]
    assert t1 != t2, (out1, out2)


def test_learn_continues_an_id_model_with_its_rows_renumbered(tmp_path):
    """``shopstream learn`` keeps a serving id model's id vectors for the products it knew, whatever
    their number in the new window's catalogue, and starts new products at zero (title alone)."""
    import torch

    from engines.session_model import save_artifact
    from learn.data import load_online_retail, most_popular_slice
    from learn.recipes import continue_from
    from learn.split import leave_one_out
    from learn.train import TrainConfig, train

    full = load_online_retail(SAMPLE)
    old_data = most_popular_slice(full, 30, min_length=3, max_users=150)
    new_data = most_popular_slice(full, 45, min_length=3, max_users=150)
    rng = np.random.default_rng(0)
    vecs = {pid: v / np.linalg.norm(v) for pid, v in zip(full.item_ids, rng.normal(size=(full.n_items, 16)))}
    text = lambda d: np.stack([vecs[p] for p in d.item_ids]).astype(np.float32)  # noqa: E731
    small = dict(d_model=16, layers=1, heads=1, ffn=32, item_hidden=32, batch_size=64, threads=1, seed=0)
    first = train(old_data, text(old_data), leave_one_out(old_data),
                  TrainConfig(**small, item_tower=False, id_embeddings=True, epochs=1, patience=1), progress=False)
    art = save_artifact(first.model, tmp_path / "serving", text_model_version="t", record={},
                        item_ids=old_data.item_ids)
    cfg, init = continue_from(art, new_data, TrainConfig(**small, epochs=1, patience=1))
    assert cfg.id_embeddings and not cfg.item_tower and init.cfg.item_ids == new_data.n_items
    old_rows = first.model.id_emb.weight.detach()
    for j, pid in enumerate(new_data.item_ids):
        want = old_rows[old_data.item_ids.index(pid)] if pid in old_data.item_ids else torch.zeros(16)
        assert torch.equal(init.id_emb.weight[j].detach(), want), pid
    assert any(p not in old_data.item_ids for p in new_data.item_ids)
    again = train(new_data, text(new_data), leave_one_out(new_data), cfg, init=init, progress=False)
    assert again.best_valid["ndcg@10"] > 0

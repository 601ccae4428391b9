"""A short training run on a small slice of real data learns, and its engines agree with PyTorch.

Real titles embedded with the real text model, real shoppers' sequences (Amazon Beauty's 200 most
frequent products); skipped when ../shared/data is absent.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

BEAUTY = SHARED_DATA / "amazon-beauty"


@pytest.fixture(scope="module")
def slice_data(text_encoder):
    from learn.data import load_amazon_beauty, most_popular_slice

    if not (BEAUTY / "sequences.tsv").is_file():
        pytest.skip(f"Amazon Beauty is not at {BEAUTY} (../shared/data is absent)")
    data = most_popular_slice(load_amazon_beauty(BEAUTY), 200, min_length=3, max_users=1500)
    return data, text_encoder.encode(data.texts)


@pytest.fixture(scope="module")
def trained(slice_data):
    import torch

    from learn.split import leave_one_out
    from learn.train import TrainConfig, train

    torch.set_num_threads(2)
    data, vecs = slice_data
    split = leave_one_out(data)
    cfg = TrainConfig(d_model=32, layers=1, heads=2, ffn=64, item_hidden=64, batch_size=128, lr=3e-3,
                      epochs=6, patience=6, seed=0, threads=2)
    return split, train(data, vecs, split, cfg, progress=False)


def test_training_lowers_the_loss_and_beats_popularity(slice_data, trained):
    import torch

    from learn.evaluate import Popularity, evaluate
    from learn.train import _torch_method

    data, vecs = slice_data
    split, result = trained
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0] - 0.1, losses
    method = _torch_method(result.model, torch.from_numpy(vecs), data.n_items, result.config.max_len)
    report = evaluate([Popularity(split.test, data.n_items), method], data, split.test, progress=False)
    assert report["trained"]["ndcg@10"] > report["popularity"]["ndcg@10"] * 1.1, report


def test_training_is_deterministic_with_a_seed(slice_data, trained):
    from learn.train import TrainConfig, train

    data, vecs = slice_data
    split, result = trained
    again = train(data, vecs, split, TrainConfig(**{**result.config.__dict__, "epochs": 1}), progress=False)
    assert again.history[0]["loss"] == pytest.approx(result.history[0]["loss"], rel=1e-6)


def test_export_parity_and_every_backend(tmp_path, slice_data, trained):
    pytest.importorskip("onnxruntime")
    from engines.session import SessionEncoder
    from engines.session_model import load_session_encoder, save_artifact
    from learn.evaluate import TrainedEncoder
    from learn.export import FP32_TOLERANCE, export_session_encoder

    data, vecs = slice_data
    split, result = trained
    art = save_artifact(result.model, tmp_path / "art", text_model_version="test", record={})
    parity = export_session_encoder(art)
    assert parity["fp32"]["max_abs_diff"] <= FP32_TOLERANCE
    assert parity["fp16"]["min_cosine"] > 0.99 and parity["int8"]["min_cosine"] > 0.95

    scores = {}
    for path in (art, art / "session_encoder.onnx", art / "session_encoder.int8.onnx"):
        enc = load_session_encoder(path, backend="torch") if path == art else load_session_encoder(path)
        assert isinstance(enc, SessionEncoder)
        m = TrainedEncoder(enc, vecs, data.n_items, name=str(path.name))
        scores[path.name] = m.scores(split.test.inputs[:64])
    ref = scores["art"]
    assert np.abs(scores["session_encoder.onnx"] - ref).max() < 1e-4
    assert np.corrcoef(scores["session_encoder.int8.onnx"].ravel(), ref.ravel())[0, 1] > 0.95


def test_live_sessions_and_empty_ones(tmp_path, trained, slice_data):
    from engines.session import SessionSequence
    from engines.session_model import load_session_encoder, save_artifact

    data, vecs = slice_data
    _, result = trained
    enc = load_session_encoder(save_artifact(result.model, tmp_path / "a", text_model_version="t", record={}),
                               backend="torch")
    space = enc.item_vectors(vecs)
    now = 1.7e9
    s = SessionSequence(np.stack([space[0], vecs[1], space[2]]), ["view", "search", "add_to_cart"],
                        np.array([now - 600, now - 60, now]))
    out = enc.embed([s, SessionSequence(np.zeros((0, enc.dim), np.float32), [], np.zeros(0))], [now, now])
    assert out.shape == (2, enc.dim)
    assert np.linalg.norm(out[0]) == pytest.approx(1.0, abs=1e-5) and not np.any(out[1])


ONLINE_RETAIL = SHARED_DATA / "online-retail" / "online_retail.csv.gz"


def test_short_training_beats_last_item_knn_on_a_small_slice(text_encoder):
    """Online Retail's 300 most bought products, 1,200 customers: a few CPU epochs of the default
    architecture (made small) rank the next purchase better than the newest item's neighbours."""
    import torch

    from learn.data import load_online_retail, most_popular_slice
    from learn.evaluate import LastItemKNN, evaluate
    from learn.split import leave_one_out
    from learn.train import TrainConfig, _torch_method, train

    if not ONLINE_RETAIL.is_file():
        pytest.skip(f"Online Retail is not at {ONLINE_RETAIL} (../shared/data is absent)")
    torch.set_num_threads(1)
    data = most_popular_slice(load_online_retail(ONLINE_RETAIL), 300, min_length=4, max_users=1200)
    vecs = text_encoder.encode(data.texts)
    split = leave_one_out(data)
    cfg = TrainConfig(d_model=32, layers=1, heads=2, ffn=64, item_hidden=128, max_len=30, batch_size=64, lr=3e-3,
                      epochs=8, patience=8, seed=0, threads=1)
    result = train(data, vecs, split, cfg, progress=False)
    method = _torch_method(result.model, torch.from_numpy(vecs), data.n_items, cfg.max_len)
    report = evaluate([LastItemKNN(vecs, data.n_items), method], data, split.test, progress=False)
    assert report["trained"]["ndcg@10"] > report["last-item-knn"]["ndcg@10"] * 1.05, report


def test_id_plus_text_model_serves_a_product_added_after_training(tmp_path, slice_data):
    """With id vectors, a product seen in training gets title + id; one added later, its title alone."""
    pytest.importorskip("onnxruntime")
    from engines.session import SessionSequence
    from engines.session_model import load_session_encoder, save_artifact
    from learn.export import export_session_encoder
    from learn.split import leave_one_out
    from learn.train import TrainConfig, train

    data, vecs = slice_data
    split = leave_one_out(data)
    cfg = TrainConfig(d_model=32, layers=1, heads=2, ffn=64, item_hidden=64, batch_size=128, lr=3e-3,
                      epochs=2, patience=2, seed=0, threads=2, id_embeddings=True)
    result = train(data, vecs, split, cfg, progress=False)
    art = save_artifact(result.model, tmp_path / "ids", text_model_version="t", record={}, item_ids=data.item_ids)
    export_session_encoder(art, precisions=("fp32",))
    enc = load_session_encoder(art)
    known = enc.item_vectors(vecs[:5], item_ids=data.item_ids[:5])
    titles = enc.item_vectors(vecs[:5])
    assert np.abs(known - titles).max() > 1e-3, "trained id vectors move known products"
    new = enc.item_vectors(vecs[:2], item_ids=["B-NEW-PRODUCT", data.item_ids[1]])
    assert np.allclose(new[0], titles[0], atol=1e-5) and np.allclose(new[1], known[1], atol=1e-5)
    now = 1.7e9
    out = enc.embed([SessionSequence(np.stack([known[3], new[0]]), ["purchase", "view"], np.array([now - 60, now]))],
                    [now])
    assert np.linalg.norm(out[0]) == pytest.approx(1.0, abs=1e-5)

    # shipped with its id vectors in fp16, out of weights.pt: a new version, the same product space
    import torch

    from engines.session_model import ID_TABLE, ID_VECTORS, WEIGHTS, read_manifest, store_id_vectors_fp16

    before = read_manifest(art)["model_version"]
    version = store_id_vectors_fp16(art)
    assert version != before and read_manifest(art)["id_vectors_fp16"]["from"] == before
    assert ID_TABLE not in torch.load(art / WEIGHTS, weights_only=True)
    assert np.load(art / ID_VECTORS).dtype == np.float16
    small = load_session_encoder(art)
    assert small.items_version == version
    assert np.abs(small.item_vectors(vecs[:5], item_ids=data.item_ids[:5]) - known).max() < 2e-3
    assert np.allclose(small.item_vectors(vecs[:5]), titles, atol=1e-6)


def test_validation_every_n_epochs_keeps_the_best_validated_epoch(slice_data):
    """--eval-every 2 over 3 epochs: full-ranking validation after epochs 2 and 3 only (the last
    always), patience counted in validations; an id + title model with no item tower."""
    from learn.split import leave_one_out
    from learn.train import TrainConfig, train

    data, vecs = slice_data
    split = leave_one_out(data)
    cfg = TrainConfig(d_model=32, layers=1, heads=2, ffn=64, item_tower=False, id_embeddings=True, batch_size=128,
                      lr=3e-3, epochs=3, eval_every=2, patience=2, seed=0, threads=2)
    result = train(data, vecs, split, cfg, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert ["ndcg@10" in r for r in result.history] == [False, True, True]
    assert result.best_epoch in (2, 3)
    assert result.best_valid["ndcg@10"] == max(r["ndcg@10"] for r in result.history[1:])
    assert all(r["cpu_seconds"] > 0 for r in result.history)
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(eval_every=0).validate()



def test_history_is_no_negative_but_the_target_stays():
    """--exclude-history: each position's softmax leaves out the products at or before it (serving
    never recommends them), except the target itself; pads and search queries mask nothing."""
    import torch

    from learn.train import _without_history

    n_items = 6
    tok = torch.tensor([[-1, 2, 7, 4], [1, 3, 1, 5]])            # -1 a pad, 7 a search query
    labels = torch.tensor([[-1, 4, 5, 2], [3, 1, 0, -1]])        # row 0's last target is in its history
    keep = labels >= 0
    y = labels[keep]
    out = _without_history(torch.zeros(int(keep.sum()), n_items), tok, keep, y, n_items)
    hidden = [set(torch.nonzero(torch.isinf(row)).flatten().tolist()) for row in out]
    assert hidden == [{2}, {2}, {4}, {1}, {3}, {1, 3}]
    assert all(not torch.isinf(out[i, t]) for i, t in enumerate(y.tolist()))


def test_refit_trains_on_the_validation_targets_for_the_chosen_epochs(slice_data, monkeypatch):
    """The refit reads every event before the test targets (the validation targets included),
    runs the epochs validation chose and never validates; the test targets are never read."""
    import learn.train as lt
    from learn.split import leave_one_out

    data, vecs = slice_data
    split = leave_one_out(data)
    cfg = lt.TrainConfig(d_model=32, layers=1, heads=2, ffn=64, item_tower=False, id_embeddings=True,
                         exclude_history=True, batch_size=128, lr=3e-3, lr_schedule="cosine", epochs=3, patience=3,
                         seed=0, threads=2)
    chosen = lt.train(data, vecs, split, cfg, progress=False)
    seen = []
    real = lt.training_examples
    monkeypatch.setattr(lt, "training_examples", lambda seqs, n: seen.append(seqs) or real(seqs, n))
    split.test.targets = None            # a read of the test targets would raise
    again = lt.refit(data, vecs, split, chosen, progress=False)
    assert [r["epoch"] for r in again.history] == list(range(1, chosen.best_epoch + 1))
    assert all("ndcg@10" not in r for r in again.history)
    assert seen[0] == split.test.inputs
    assert sum(map(len, seen[0])) == sum(map(len, split.train)) + len(split.valid)
    assert again.best_valid == chosen.best_valid

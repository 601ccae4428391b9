"""The trained session encoder on every backend: parity with PyTorch, one call per worker batch,
``auto`` choosing backend and precision by the artifact's ranking check.

torch and onnxruntime run here; torch-cuda runs where there is a GPU (``gpu`` marker); TensorRT 10
cannot be installed in this project's environments, so its test is skipped with that reason.
"""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

from engines.errors import MissingExtraError, UnknownBackendError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A small artifact whose every layer does something (seeded, not trained), exported to ONNX."""
    pytest.importorskip("onnxruntime")
    import torch

    from engines.session_model import save_artifact
    from engines.session_network import ModelConfig, SessionTransformer
    from learn.export import export_session_encoder

    torch.manual_seed(0)
    model = SessionTransformer(ModelConfig(d_model=32, layers=2, heads=2, ffn=64, max_len=20, item_hidden=64))
    for name, p in model.named_parameters():
        if name.startswith(("out.", "item_tower.fc2")):
            torch.nn.init.normal_(p, std=0.05)
    folder = save_artifact(model.eval(), tmp_path_factory.mktemp("session") / "art", text_model_version="t",
                           record={}, kinds_seen=["view", "purchase"], uses_time=True)
    export_session_encoder(folder)
    return folder


def sessions(n: int, dim: int = 384, seed: int = 0):
    """Live sessions of 0..30 events (longer than max_len too), with searches and real gaps."""
    from engines.session import EVENT_TYPES, SessionSequence

    rng = np.random.default_rng(seed)
    out, now = [], []
    for i in range(n):
        length = int(rng.integers(1, 31)) if i else 0
        v = rng.normal(size=(length, dim)).astype(np.float32)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
        t = 1.7e9 + np.cumsum(rng.exponential(300.0, size=length))
        out.append(SessionSequence(v, [EVENT_TYPES[j] for j in rng.integers(0, 5, size=length)], t))
        now.append(float(t[-1]) if length else 1.7e9)
    return out, now


def embed_with(artifact, backend: str, precision: str = "fp32", **options):
    from engines.session_model import load_session_encoder

    enc = load_session_encoder(artifact, backend, precision=precision, **options)
    s, now = sessions(40)
    return enc, enc.embed(s, now)


def test_onnxruntime_matches_torch(artifact):
    _, ref = embed_with(artifact, "torch")
    assert not np.any(ref[0]) and np.allclose(np.linalg.norm(ref[1:], axis=1), 1.0, atol=1e-5)
    _, fp32 = embed_with(artifact, "onnxruntime")
    assert np.abs(fp32 - ref).max() < 1e-4
    for precision, floor in (("fp16", 0.999), ("int8", 0.98)):
        _, got = embed_with(artifact, "onnxruntime", precision)
        assert np.min(np.sum(got[1:] * ref[1:], axis=1)) > floor, precision


def test_one_runner_call_per_worker_batch(artifact):
    from engines.session_model import load_session_encoder

    enc = load_session_encoder(artifact, "onnxruntime", precision="fp32")
    calls = []
    run = enc.runner.run
    enc.runner.run = lambda *a: calls.append(a[0].shape) or run(*a)
    s, now = sessions(64, seed=3)
    enc.embed(s, now)
    assert len(calls) == 1 and calls[0][0] == sum(1 for x in s if len(x))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_an_encoder_closes_on_every_cpu_backend(artifact, backend):
    """``shopstream bench session`` closes each encoder it timed; the ONNX Runtime runner once had
    no ``close`` and the command ended in a traceback."""
    enc, _ = embed_with(artifact, backend)
    enc.close()
    assert enc.runner is None
    enc.close()                      # twice is harmless


def _with_ranking_check(artifact, tmp_path, int8_ndcg: float):
    import shutil

    folder = tmp_path / "checked"
    shutil.copytree(artifact, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["ranking_check"] = {"fold": "valid", "fp32": {"ndcg@10": 0.1, "recall@10": 0.2},
                          "fp16": {"ndcg@10": 0.1, "recall@10": 0.2},
                          "int8": {"ndcg@10": int8_ndcg, "recall@10": 0.2}}
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the choice on a machine without a GPU")
def test_auto_picks_int8_only_when_it_ranks_as_well(artifact, tmp_path, caplog):
    from engines.select import choose_session_backend
    from engines.session_model import load_session_encoder

    unchecked = choose_session_backend(artifact)
    assert (unchecked.backend, unchecked.precision) == ("onnxruntime", "fp32")
    assert "no ranking check" in unchecked.reason
    assert dict(unchecked.skipped)["torch-cuda"].startswith("no CUDA GPU")

    good = choose_session_backend(_with_ranking_check(artifact, tmp_path / "a", 0.0995))
    assert (good.backend, good.precision) == ("onnxruntime", "int8")
    bad = choose_session_backend(_with_ranking_check(artifact, tmp_path / "b", 0.095))
    assert bad.precision == "fp32" and "more than 1% lower" in bad.reason
    with caplog.at_level(logging.INFO, logger="engines.session_model"):
        enc = load_session_encoder(tmp_path / "a" / "checked")
    assert enc.name == "session-transformer-onnxruntime-int8" and enc.model_version.endswith("-int8")
    assert "session encoder backend onnxruntime int8" in caplog.text


def test_unknown_backend_lists_the_valid_ones(artifact):
    from engines.session_model import load_session_encoder

    with pytest.raises(UnknownBackendError, match="choose one of: auto, onnxruntime, .*tensorrt, torch, .*torch-cuda"):
        load_session_encoder(artifact, "openvino")


def test_tensorrt_without_the_extra_gives_the_install_hint(artifact, monkeypatch):
    from engines.session_model import load_session_encoder

    monkeypatch.setitem(sys.modules, "tensorrt", None)      # as if the extra were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'shopstream\[tensorrt\]'"):
        load_session_encoder(artifact, "tensorrt", precision="fp16")


@pytest.mark.tensorrt
def test_tensorrt_matches_torch(artifact, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT 10 cannot be installed here (NVIDIA's index is unreachable)")
    from engines.backends.session_tensorrt import build_session_plan

    build_session_plan(artifact, tmp_path, precision="fp16")
    _, ref = embed_with(artifact, "torch")
    _, got = embed_with(artifact, "tensorrt", "fp16", plan_dir=tmp_path)
    assert np.min(np.sum(got[1:] * ref[1:], axis=1)) > 0.999


@pytest.mark.gpu
def test_torch_cuda_fp16_graphs_match_torch(artifact):
    _, ref = embed_with(artifact, "torch")
    enc, got = embed_with(artifact, "torch-cuda", "fp16")
    assert enc.runner._buckets and all(b.graph is not None for b in enc.runner._buckets.values())
    assert not np.any(got[0])
    assert np.min(np.sum(got[1:] * ref[1:], axis=1)) > 0.999
    _, fp32 = embed_with(artifact, "torch-cuda", "fp32")
    assert np.abs(fp32 - ref).max() < 1e-3        # TF32 matmuls may be on
    s, now = sessions(300, seed=5)                 # more than the largest batch bucket: split
    assert np.abs(enc.embed(s, now) - embed_with(artifact, "torch")[0].embed(s, now)).max() < 2e-2


def test_serving_forward_equals_the_training_encoder_at_the_newest_event(artifact):
    import torch

    from engines.session_model import load_torch_model
    from learn.export import example_inputs

    model = load_torch_model(artifact)
    vecs, kinds, gaps = example_inputs(384, batch=6, length=9, seed=3)
    with torch.no_grad():
        assert torch.allclose(model(vecs, kinds, gaps), model.encode(vecs, kinds, gaps)[:, -1], atol=1e-6)


def test_length_groups_give_the_same_embeddings_as_one_padded_run(artifact):
    from engines.backends.session_onnxruntime import run_by_length
    from engines.session_model import load_session_encoder

    enc = load_session_encoder(artifact, "onnxruntime", precision="fp32")
    s, _ = sessions(120, seed=7)
    live, vecs, kinds, gaps = enc.pack(s)
    one = enc.runner._run(vecs, kinds, gaps)
    calls = []
    grouped = run_by_length(lambda *a: calls.append(a[1].shape) or enc.runner._run(*a), vecs, kinds, gaps)
    assert len(calls) > 1 and all(c[1] <= kinds.shape[1] for c in calls)
    assert np.abs(grouped - one).max() < 1e-5


def _pack_reference(enc, sessions):
    """The packing as first written: per-session arrays, then engines.session_network.pack."""
    from engines.session import KIND_CODES
    from engines.session_network import pack

    live = [i for i, s in enumerate(sessions) if len(s)]
    fallback = enc.kinds_seen[0] if enc.kinds_seen else "view"
    known = set(enc.kinds_seen) if enc.kinds_seen else set(KIND_CODES)
    rows, kinds, times, searches = [], [], [], []
    for i in live:
        s = sessions[i]
        searches.append(np.array([x == "search" for x in s.kinds], dtype=bool)[-enc.max_len:])
        k = np.array([KIND_CODES[x if x in known else fallback] for x in s.kinds], dtype=np.int64)[-enc.max_len:]
        t = np.asarray(s.timestamps, dtype=np.float64)[-enc.max_len - 1:]
        rows.append(np.asarray(s.vectors, dtype=np.float32)[-enc.max_len:])
        kinds.append(k)
        times.append(t if enc.uses_time else np.full(len(t), np.nan))
    flat = np.concatenate(rows)
    is_search = np.concatenate(searches)
    if is_search.any():
        flat[is_search] = enc.item_vectors(flat[is_search])
    offsets = np.cumsum([0] + [len(v) for v in rows])
    tok, kin, gap = pack([np.arange(offsets[j], offsets[j + 1]) for j in range(len(rows))], kinds, times, enc.max_len)
    return live, np.where((tok >= 0)[..., None], flat[np.maximum(tok, 0)], 0.0).astype(np.float32), kin, gap


@pytest.mark.parametrize("uses_time", [True, False])
def test_packing_a_batch_matches_the_reference(artifact, tmp_path, uses_time):
    import shutil

    from engines.session_model import load_session_encoder

    folder = tmp_path / "a"
    shutil.copytree(artifact, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["uses_time"] = uses_time
    (folder / "manifest.json").write_text(json.dumps(m))
    enc = load_session_encoder(folder, "torch", precision="fp32")
    s, _ = sessions(50, seed=11)          # 0..30 events, max_len 20: some are cut, one is empty
    s[3].timestamps[-2] = np.nan          # events without a clock: one, the oldest kept, every one
    s[4].timestamps[-min(len(s[4]), enc.max_len)] = np.nan
    s[7].timestamps[:] = np.nan
    got, ref = enc.pack(s), _pack_reference(enc, s)
    assert got[0] == ref[0]
    for a, b in zip(got[1:], ref[1:]):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-7)


def test_onnxruntime_sessions_do_not_spin_unless_asked(artifact):
    """ONNX Runtime's intra-op threads busy-wait after each run by default; in a worker they take
    the cores from the event loop (1,905 -> 3,358 events/s on the 2-core machine with it off)."""
    from engines.backends.onnxruntime_cpu import make_session

    onnx = artifact / "session_encoder.onnx"
    quiet = make_session(onnx, threads=1).get_session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = make_session(onnx, threads=1, spin=True).get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):     # ORT's default: spin
        spinning.get_session_config_entry("session.intra_op.allow_spinning")

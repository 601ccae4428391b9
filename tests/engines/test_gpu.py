"""GPU backends: run only where CUDA is (conftest skips `gpu` tests elsewhere)."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from engines import create_text_encoder
from engines.parity import compare_embeddings

pytestmark = pytest.mark.gpu

needs_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None,
    reason="TensorRT cannot be installed in this environment (NVIDIA's index is unreachable)")


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_torch_cuda_matches_torch_cpu(reference_encoder, titles, precision):
    text_encoder = reference_encoder
    engine = create_text_encoder("torch-cuda", precision=precision,
                                 model_dir=os.environ.get("SHOPSTREAM_TEST_MODEL_DIR")).load()
    assert engine.model_version == text_encoder.model_version
    report = compare_embeddings(text_encoder.encode(titles), engine.encode(titles), precision)
    assert report.passed, report
    single = np.stack([engine.encode([t])[0] for t in titles[:8]])   # bucket of 1 vs bucket of 8..
    np.testing.assert_allclose(single, engine.encode(titles[:8]), atol=2e-3)
    engine.close()


def test_torch_cuda_replays_graphs_without_allocating(reference_encoder, titles):
    """The hot path allocates no device memory: same allocator counters before and after."""
    import torch

    engine = create_text_encoder("torch-cuda", model_dir=os.environ.get("SHOPSTREAM_TEST_MODEL_DIR")).load()
    tok = engine.tokenizer(titles[:64], length=16)
    engine.encode_tokens(tok.input_ids, tok.attention_mask)
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for n in (1, 8, 64, 5):
        engine.encode_tokens(tok.input_ids[:n], tok.attention_mask[:n])
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
    engine.close()


def test_auto_picks_torch_cuda_on_a_gpu_without_tensorrt():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: auto may choose it")
    assert create_text_encoder("auto").name == "torch-cuda"
    from engines import choose_backend

    assert "tensorrt is not installed" in dict(choose_backend().skipped)["tensorrt"]


@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_fp16_artifact_round_trip(tmp_path, reference_encoder, titles):
    text_encoder = reference_encoder
    from engines.artifact import read_manifest
    from engines.build import build_engine

    folder = build_engine("tensorrt", tmp_path / "trt", precision="fp16", parity_texts=64)
    m = read_manifest(folder)
    assert m.tensorrt_version and m.compute_capability
    engine = create_text_encoder("auto", artifact=folder).load()
    assert engine.name == "tensorrt"
    report = compare_embeddings(text_encoder.encode(titles), engine.encode(titles), "fp16")
    assert report.passed, report

"""GPU backends: run only where CUDA is (conftest skips `gpu` tests elsewhere)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from engines import create_text_encoder
from engines.parity import compare_embeddings

pytestmark = pytest.mark.gpu

needs_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None,
    reason="TensorRT cannot be installed in this environment (NVIDIA's index is unreachable)")


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_torch_cuda_matches_torch_cpu(text_encoder, titles, precision):
    engine = create_text_encoder("torch-cuda", precision=precision).load()
    assert engine.model_version == text_encoder.model_version
    report = compare_embeddings(text_encoder.encode(titles), engine.encode(titles), precision)
    assert report.passed, report
    single = np.stack([engine.encode([t])[0] for t in titles[:8]])   # bucket of 1 vs bucket of 8..
    np.testing.assert_allclose(single, engine.encode(titles[:8]), atol=2e-3)


def test_auto_picks_torch_cuda_on_a_gpu_without_tensorrt():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: auto may choose it")
    assert create_text_encoder("auto").name == "torch-cuda"


@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_fp16_artifact_round_trip(tmp_path, text_encoder, titles):
    from engines.artifact import read_manifest
    from engines.build import build_engine

    folder = build_engine("tensorrt", tmp_path / "trt", precision="fp16", parity_texts=64)
    m = read_manifest(folder)
    assert m.tensorrt_version and m.compute_capability
    engine = create_text_encoder("auto", artifact=folder).load()
    assert engine.name == "tensorrt"
    report = compare_embeddings(text_encoder.encode(titles), engine.encode(titles), "fp16")
    assert report.passed, report

"""Every backend that runs on a CPU computes the PyTorch model's embeddings on real titles."""
from __future__ import annotations

import numpy as np
import pytest

from engines import create_text_encoder
from engines.parity import compare_embeddings, top_k_overlap


def test_onnxruntime_fp32_matches_torch(text_encoder, ort_fp32_artifact, titles):
    engine = create_text_encoder("onnxruntime", artifact=ort_fp32_artifact).load()
    report = compare_embeddings(text_encoder.encode(titles), engine.encode(titles), "fp32")
    assert report.passed, report
    assert report.max_abs_diff <= 1e-4


def test_onnxruntime_pads_short_queries_only_to_their_length(text_encoder, ort_fp32_artifact, titles):
    """A shopper's query (a few tokens) is not padded to a 16-token bucket on ONNX Runtime -- its
    work grows with the padded length -- and its rows are the reference model's all the same."""
    engine = create_text_encoder("onnxruntime", artifact=ort_fp32_artifact).load()
    queries = [" ".join(t.split()[:2]) for t in titles[:24]]
    widths = []
    run = engine.encode_tokens
    engine.encode_tokens = lambda ids, mask: (widths.append(ids.shape[1]), run(ids, mask))[1]
    got = engine.encode(queries)
    longest = max(len(x) for x in engine.tokenizer.token_ids(queries))
    assert widths == [longest] and longest < engine.tokenizer.buckets[0], (widths, longest)
    assert np.abs(got - text_encoder.encode(queries)).max() <= 1e-4


def test_onnxruntime_int8_cosine_and_retrieval(text_encoder, ort_int8_artifact, titles):
    engine = create_text_encoder("onnxruntime", artifact=ort_int8_artifact).load()
    assert engine.precision == "int8"
    ref, got = text_encoder.encode(titles), engine.encode(titles)
    report = compare_embeddings(ref, got, "int8")
    assert report.min_cosine >= 0.99, report
    assert report.top10_overlap >= 0.8, report
    assert report.max_abs_diff > 1e-4          # it really is quantised, not the fp32 graph
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


def test_fused_gpu_model_matches_reference_on_cpu(text_encoder, titles):
    """The module torch-cuda captures into CUDA graphs, run here in fp32 on the CPU."""
    import torch

    from engines.fused_text_model import load_fused_encoder
    from engines.model import default_model_dir

    tok = text_encoder.tokenizer(titles[:32] + [t * 6 for t in titles[32:40]])   # two widths of mask
    fused = load_fused_encoder(default_model_dir())
    with torch.inference_mode():
        got = fused(torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask)).numpy()
    ref = text_encoder.encode_tokens(tok.input_ids, tok.attention_mask)
    assert np.abs(got - ref).max() <= 1e-4


def test_bucketed_batches_give_the_same_rows_as_one_by_one(text_encoder, titles):
    """encode() sorts by length and pads per bucket; each row must not depend on its neighbours."""
    texts = [titles[0], titles[1] * 5, titles[2], titles[3] * 9]
    batched = text_encoder.encode(texts)
    single = np.stack([text_encoder.encode([t])[0] for t in texts])
    assert np.abs(batched - single).max() <= 1e-5


def test_parity_detects_a_wrong_engine(text_encoder, titles):
    ref = text_encoder.encode(titles[:40])
    shuffled = ref[::-1].copy()
    report = compare_embeddings(ref, shuffled, "fp16")
    assert not report.passed
    assert report.top10_overlap < 0.5
    assert top_k_overlap(ref, ref) == pytest.approx(1.0)

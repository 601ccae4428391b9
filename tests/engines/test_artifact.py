"""Build an artifact, load it by path, get the same outputs; bad artifacts fail with ArtifactError."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engines import ArtifactError, create_text_encoder
from engines.artifact import read_manifest
from engines.model import default_model_dir, model_hash, model_version


def test_manifest_names_model_backend_precision_and_parity(ort_fp32_artifact):
    m = read_manifest(ort_fp32_artifact)
    assert (m.backend, m.precision, m.dim) == ("onnxruntime", "fp32", 384)
    assert m.model_version == model_version(default_model_dir())
    assert m.model_hash == model_hash(default_model_dir())
    assert m.parity["passed"] and m.parity["texts"] == 64
    assert m.tensorrt_version is None and m.compute_capability is None
    assert (ort_fp32_artifact / m.files["onnx"]).is_file()


def test_round_trip_by_path_gives_the_checked_outputs(ort_fp32_artifact, titles, text_encoder):
    first = create_text_encoder("onnxruntime", artifact=ort_fp32_artifact).load()
    again = create_text_encoder("auto", artifact=str(ort_fp32_artifact)).load()
    assert again.name == "onnxruntime"
    assert first.model_version == again.model_version == text_encoder.model_version
    a, b = first.encode(titles), again.encode(titles)
    assert a.shape == (len(titles), 384) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_torch_artifact_round_trip(tmp_path, titles, text_encoder):
    from engines.build import build_engine

    folder = build_engine("torch", tmp_path / "torch", parity_texts=16)
    engine = create_text_encoder("torch", artifact=folder).load()
    np.testing.assert_array_equal(engine.encode(titles[:8]), text_encoder.encode(titles[:8]))


def test_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="engine build"):
        create_text_encoder("onnxruntime", artifact=tmp_path).load()


def test_artifact_of_another_backend_is_refused(ort_fp32_artifact):
    with pytest.raises(ArtifactError, match="onnxruntime artifact, not torch"):
        create_text_encoder("torch", artifact=ort_fp32_artifact).load()


def test_manifest_of_another_format_or_missing_file_is_refused(ort_fp32_artifact, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(ort_fp32_artifact / "manifest.json", copy / "manifest.json")
    with pytest.raises(ArtifactError, match="model.onnx is missing"):
        create_text_encoder("onnxruntime", artifact=copy).load()
    data = json.loads((copy / "manifest.json").read_text())
    data["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format_version"):
        read_manifest(copy)


def test_onnxruntime_without_artifact_says_how_to_build_one():
    with pytest.raises(ArtifactError, match="engine build --backend onnxruntime"):
        create_text_encoder("onnxruntime").load()

"""Engine artifacts built once per test session, by the real CLI, from the real weights."""
from __future__ import annotations

import pytest

PARITY_TEXTS = 64


@pytest.fixture(scope="session")
def titles():
    """Real catalogue titles, a different draw from the build-time parity check."""
    from engines.parity import catalogue_texts

    return catalogue_texts(96, seed=3)


@pytest.fixture(scope="session")
def ort_fp32_artifact(tmp_path_factory):
    from stream.cli import main

    out = tmp_path_factory.mktemp("engines") / "onnxruntime-fp32"
    main(["engine", "build", "--backend", "onnxruntime", "--out", str(out),
          "--parity-texts", str(PARITY_TEXTS)])
    return out


@pytest.fixture(scope="session")
def ort_int8_artifact(tmp_path_factory):
    from engines.build import build_engine

    return build_engine("onnxruntime", tmp_path_factory.mktemp("engines") / "onnxruntime-int8",
                        precision="int8", parity_texts=PARITY_TEXTS)

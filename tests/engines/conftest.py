"""Engine artifacts built once per test session, by the real CLI, from the real weights.

On a GPU machine without the catalogue's dependencies, SHOPSTREAM_TEST_TEXTS (titles, one a
line) and SHOPSTREAM_TEST_MODEL_DIR (a weights folder) let the `gpu` tests run from a copy made by
``python -m engines.gpu_check prepare``.
"""
from __future__ import annotations

import os

import pytest

PARITY_TEXTS = 64


@pytest.fixture(scope="session")
def titles():
    """Real catalogue titles, a different draw from the build-time parity check."""
    from engines.parity import catalogue_texts

    return catalogue_texts(96, os.environ.get("SHOPSTREAM_TEST_TEXTS"), seed=3)


@pytest.fixture(scope="session")
def reference_encoder():
    """The PyTorch CPU model the GPU engines are checked against."""
    from engines.backends.torch_cpu import TorchTextEncoder

    enc = TorchTextEncoder(os.environ.get("SHOPSTREAM_TEST_MODEL_DIR")).load()
    yield enc
    enc.close()


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

"""`--backend auto` on this CPU machine, and the errors for unknown or missing backends."""
from __future__ import annotations

import logging
import sys

import pytest

from engines import (
    MissingExtraError,
    UnknownBackendError,
    choose_backend,
    create_text_encoder,
)
from engines.backends.torch_cuda import cuda_available

cpu_only = pytest.mark.skipif(cuda_available(), reason="checks the choice on a machine without a GPU")


@cpu_only
def test_auto_without_artifact_picks_torch_and_says_why(caplog):
    choice = choose_backend()
    assert choice.backend == "torch"
    skipped = dict(choice.skipped)
    assert set(skipped) == {"tensorrt", "torch-cuda", "onnxruntime"}
    assert "no CUDA GPU" in skipped["torch-cuda"]
    assert "engine build --backend onnxruntime" in skipped["onnxruntime"]
    with caplog.at_level(logging.INFO, logger="engines.registry"):
        encoder = create_text_encoder("auto")
    assert encoder.name == "torch"
    assert "text encoder backend torch" in caplog.text and "torch-cuda skipped" in caplog.text


@cpu_only
def test_auto_with_onnxruntime_artifact_picks_onnxruntime(ort_fp32_artifact):
    choice = choose_backend(ort_fp32_artifact)
    assert (choice.backend, choice.artifact) == ("onnxruntime", ort_fp32_artifact)
    assert create_text_encoder("auto", artifact=ort_fp32_artifact).name == "onnxruntime"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(UnknownBackendError, match="choose one of: auto, onnxruntime, .*tensorrt, torch, .*torch-cuda"):
        create_text_encoder("openvino")


def test_tensorrt_without_the_extra_gives_the_install_hint(monkeypatch, ort_fp32_artifact):
    monkeypatch.setitem(sys.modules, "tensorrt", None)      # as if the extra were not installed
    encoder = create_text_encoder("tensorrt", artifact=ort_fp32_artifact)   # constructing needs nothing
    with pytest.raises(MissingExtraError, match=r"pip install 'shopstream\[tensorrt\]'") as err:
        encoder.load()
    assert err.value.extra == "tensorrt"
    assert isinstance(err.value, ImportError)


def test_importing_engines_needs_no_optional_dependency():
    import subprocess

    code = ("import sys; sys.modules['tensorrt'] = None; sys.modules['onnxruntime'] = None; "
            "import engines, engines.backends.tensorrt, engines.backends.onnxruntime_cpu, "
            "engines.backends.torch_cuda; "
            "assert 'torch' not in sys.modules and 'stream' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_tensorrt_without_the_extra_fails_before_exporting(monkeypatch, tmp_path):
    from engines.build import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'shopstream\[tensorrt\]'"):
        build_engine("tensorrt", tmp_path / "trt")
    assert not (tmp_path / "trt").exists()


@cpu_only
def test_engine_choose_names_the_engine_the_worker_loads(ort_fp32_artifact, tmp_path, monkeypatch, capsys):
    """`shopstream engine choose` without --artifact answers for the artifact the worker finds
    (SHOPSTREAM_ENCODER_ARTIFACT, else the engine built into the data folder), not for none."""
    import shutil

    from stream.cli import main
    from stream.encoders import load_text_encoder
    from stream.settings import Settings

    monkeypatch.setenv("SHOPSTREAM_DATA_DIR", str(tmp_path))
    main(["engine", "choose"])
    assert capsys.readouterr().out.startswith("text encoder backend torch")        # nothing built yet
    shutil.copytree(ort_fp32_artifact, Settings.from_env().cpu_engine_dir)          # as the demo builds it
    main(["engine", "choose"])
    out = capsys.readouterr().out
    assert out.startswith("text encoder backend onnxruntime"), out
    encoder = load_text_encoder(Settings.from_env())
    assert encoder.name == "onnxruntime"                                             # what the worker runs
    encoder.close()
    monkeypatch.setenv("SHOPSTREAM_ENCODER_ARTIFACT", str(ort_fp32_artifact))
    main(["engine", "choose"])
    assert capsys.readouterr().out.startswith("text encoder backend onnxruntime")


def test_the_gpu_check_says_what_is_missing_in_one_line(tmp_path):
    """No prepared folder, or (on a machine without a GPU) no GPU: an error line, exit status 2."""
    import subprocess

    import torch

    cmd = [sys.executable, "-m", "engines.gpu_check", "run", "--folder", str(tmp_path / "none")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("python -m engines.gpu_check: error:")]
    assert len(lines) == 1, r.stderr
    if not torch.cuda.is_available():
        assert "no usable CUDA GPU" in lines[0]
    else:
        assert "texts.txt" in lines[0]

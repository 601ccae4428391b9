"""Backends by name. Modules are imported lazily; an unknown name lists the valid ones."""
from __future__ import annotations

import importlib
import logging
from typing import Any

from engines.base import TextEncoder
from engines.errors import UnknownBackendError

log = logging.getLogger(__name__)

BACKENDS: dict[str, str] = {
    "torch": "engines.backends.torch_cpu:TorchTextEncoder",
    "torch-cuda": "engines.backends.torch_cuda:TorchCudaTextEncoder",
    "onnxruntime": "engines.backends.onnxruntime_cpu:OnnxRuntimeTextEncoder",
    "tensorrt": "engines.backends.tensorrt:TensorRTTextEncoder",
}
ALIASES: dict[str, str] = {"onnxruntime-cpu": "onnxruntime", "torch-cpu": "torch"}

#: The trained session encoder's runners (``engines.session_model.TrainedSessionEncoder`` packs a
#: worker batch and hands it to one of these), with the same names as the text encoder's.
SESSION_BACKENDS: dict[str, str] = {
    "torch": "engines.backends.session_torch:TorchSessionRunner",
    "torch-cuda": "engines.backends.session_torch_cuda:TorchCudaSessionRunner",
    "onnxruntime": "engines.backends.session_onnxruntime:OnnxRuntimeSessionRunner",
    "tensorrt": "engines.backends.session_tensorrt:TensorRTSessionRunner",
}


def backend_class(name: str, table: dict[str, str] = BACKENDS) -> type:
    try:
        target = table[ALIASES.get(name, name)]
    except KeyError:
        valid = ", ".join(sorted([*table, *ALIASES, "auto"]))
        raise UnknownBackendError(f"unknown backend {name!r}; choose one of: {valid}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def session_backend_class(name: str) -> type:
    """The session encoder runner called ``name`` (an unknown name lists the valid ones)."""
    return backend_class(name, SESSION_BACKENDS)


def create_text_encoder(backend: str = "auto", **options: Any) -> TextEncoder:
    """Make (but do not load) a text encoder. ``auto`` picks the fastest this machine can run.

    ``options`` go to the backend: ``model_dir`` (weights folder), ``artifact`` (a folder written
    by ``shopstream engine build``), and backend-specific ones (``threads``, ``precision``, ...).
    """
    if backend == "auto":
        from engines.select import choose_backend

        choice = choose_backend(options.get("artifact"))
        log.info("%s", choice.describe())
        backend = choice.backend
        options = {**options, "artifact": choice.artifact}
        if backend in ("onnxruntime", "tensorrt"):
            options.pop("model_dir", None)
    if backend not in ("torch", "onnxruntime"):
        options.pop("threads", None)           # CPU thread counts mean nothing to a GPU engine
    return backend_class(backend)(**options)

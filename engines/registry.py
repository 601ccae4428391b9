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
}


def backend_class(name: str) -> type:
    try:
        target = BACKENDS[name]
    except KeyError:
        valid = ", ".join(sorted([*BACKENDS, "auto"]))
        raise UnknownBackendError(f"unknown backend {name!r}; choose one of: {valid}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def create_text_encoder(backend: str = "auto", **options: Any) -> TextEncoder:
    """Make (but do not load) a text encoder. ``auto`` picks the fastest this machine can run."""
    if backend == "auto":
        backend = "torch"
        log.info("text encoder backend: %s", backend)
    return backend_class(backend)(**options)

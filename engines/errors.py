"""Errors raised by :mod:`engines`."""
from __future__ import annotations


class EngineError(Exception):
    """Root of every error raised by ``engines``."""

    retriable = False


class MissingExtraError(EngineError, ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""

    def __init__(self, what: str, extra: str, exc: BaseException | None = None) -> None:
        msg = f"{what} is not installed: pip install 'shopstream[{extra}]'"
        if exc is not None:
            msg += f" ({exc})"
        super().__init__(msg)
        self.extra = extra


class UnknownBackendError(EngineError, ValueError):
    """A backend name that is not in the registry."""


class BackendUnavailableError(EngineError):
    """The backend exists but cannot run on this machine (no GPU, no TensorRT, ...)."""


class ArtifactError(EngineError):
    """An engine artifact is missing, corrupt, or made for another model or machine."""


class ParityError(EngineError):
    """A compiled engine disagrees with the reference PyTorch model beyond tolerance."""

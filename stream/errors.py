"""Errors raised by :mod:`stream`. Each says whether retrying can help."""
from __future__ import annotations


class ShopstreamError(Exception):
    """Root of every error shopstream raises on purpose."""

    retriable = False


class ConfigError(ShopstreamError, ValueError):
    """A setting or command-line argument that cannot be used. Shown as one line."""


class BrokerError(ShopstreamError):
    """The Kafka broker cannot be reached or refused a request."""

    retriable = True


class InvalidEvent(ShopstreamError, ValueError):
    """A behaviour event that fails validation; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StateStoreError(ShopstreamError):
    """A write to the worker's local state store failed (disk full, file too large, any RocksDB I/O
    error). The worker stalls and retries; nothing is acked meanwhile."""

    retriable = True

    def __init__(self, store: str, partition: int, cause: BaseException) -> None:
        super().__init__(f"{store} store, partition {partition}: {type(cause).__name__}: {cause}")
        self.store = store
        self.partition = partition
class RegistryError(ShopstreamError):
    """An artifact registry that cannot be reached, or an artifact that cannot be fetched or fails
    its sha256 check (refused: nothing of it is loaded). ``reason``: a short code
    (``unreachable``, ``address``, ``sha256``, ``archive``, ``write``)."""

    retriable = True

    def __init__(self, message: str, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.reason = reason

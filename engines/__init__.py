"""Turn text and session models into something fast, and run them.

Importing this package loads no model and needs no optional dependency.
"""
from engines.base import TextEncoder
from engines.batcher import MicroBatcher
from engines.errors import (
                            ArtifactError,
                            BackendUnavailableError,
                            EngineError,
                            MissingExtraError,
                            ParityError,
                            UnknownBackendError,
)
from engines.query_cache import QueryEmbeddingCache
from engines.registry import create_text_encoder
from engines.select import choose_backend
from engines.session import PoolingSessionEncoder, SessionEncoder, SessionSequence

__all__ = [
    "TextEncoder", "create_text_encoder", "choose_backend", "QueryEmbeddingCache", "MicroBatcher",
    "SessionEncoder", "SessionSequence", "PoolingSessionEncoder",
    "EngineError", "MissingExtraError", "UnknownBackendError", "BackendUnavailableError",
    "ArtifactError", "ParityError",
]

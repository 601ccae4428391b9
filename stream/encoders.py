"""The encoders a worker, ``learn`` and ``eval`` all start from: the configured text encoder, the
session-encoder artifact the settings name, and title vectors cached in the data folder. Below
``stream.live`` and ``stream.cli`` so that ``stream.ops`` needs neither."""
from __future__ import annotations

import logging
from pathlib import Path

from engines import TextEncoder, create_text_encoder
from stream.errors import ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)

#: The session encoder that ships in the package: trained on UCI Online Retail (CC BY 4.0, see
#: ``stream/data/NOTICE.md``), ONNX fp32 user and item towers plus the PyTorch weights.
SHIPPED_SESSION_ENCODER = Path(__file__).resolve().parent / "data" / "session_encoder"


def session_encoder_path(settings: Settings) -> Path | None:
    """The artifact ``settings.session_encoder`` names: ``default`` is the shipped one,
    ``pooling`` none (the weighted average of product vectors), anything else a folder."""
    choice = str(settings.session_encoder).strip()
    if choice == "pooling":
        return None
    path = SHIPPED_SESSION_ENCODER if choice == "default" else Path(choice)
    if not (path / "manifest.json").is_file():
        raise ConfigError(f"session_encoder {choice!r}: no session encoder artifact at {path} "
                          "(give 'default', 'pooling' or a folder written by `shopstream train`)")
    return path


def encoder_artifact(settings: Settings, *, say: bool = False) -> Path | None:
    """The engine artifact the text encoder loads: ``encoder_artifact``, else (backend ``auto``) an
    engine built earlier into the data folder (`shopstream engine build`, the demo), else none."""
    artifact = settings.encoder_artifact
    if artifact is None and settings.encoder_backend == "auto":
        built = settings.cpu_engine_dir
        if (built / "manifest.json").exists():
            if say:
                log.info("using the engine artifact built in %s", built)
            return Path(built)
    return Path(artifact) if artifact else None


def load_text_encoder(settings: Settings) -> TextEncoder:
    options = {}
    if settings.model_dir:
        options["model_dir"] = settings.model_dir
    artifact = encoder_artifact(settings, say=True)
    if artifact:
        options["artifact"] = artifact
    if settings.model_threads:
        options["threads"] = settings.model_threads
    return create_text_encoder(settings.encoder_backend, **options).load()


def text_vectors_for(data, settings, *, progress: bool = True):
    """Title (and query) vectors with the configured text encoder, cached under ``<data_dir>/cache``."""
    from learn.embed import text_vectors

    encoder = load_text_encoder(settings)
    try:
        return text_vectors(data.texts, encoder, cache_dir=Path(settings.data_dir) / "cache" / "text-vectors",
                            progress=progress), encoder.model_version
    finally:
        encoder.close()


def product_path(session_encoder):
    """The session encoder when its item tower or id vectors make the product vectors, else None
    (the text encoder's vectors serve as they are)."""
    towered = getattr(session_encoder, "item_space", "text") == "item-tower"
    return session_encoder if towered or getattr(session_encoder, "has_id_vectors", False) else None


def product_space_version(text_version: str, session_encoder=None) -> str:
    """The name of a product space: the text model's, plus the session model's whose item tower or
    id vectors make the product vectors (what a snapshot's ``model_version`` must be)."""
    tower = product_path(session_encoder)
    return text_version if tower is None else f"{text_version}+items:{tower.items_version}"

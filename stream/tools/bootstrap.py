"""Local set-up for the demo and benchmarks: build what is missing, explicitly and once.

Serving never builds anything; these helpers run the same build steps as
``shopstream engine build`` and ``shopstream index build`` before a worker starts.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from stream.settings import Settings

log = logging.getLogger(__name__)


def ensure_cpu_engine(settings: Settings, echo=log.info) -> Settings:
    """On a machine without a GPU, use (building once) the ONNX Runtime engine: ~2x torch on CPU."""
    if settings.encoder_artifact or settings.encoder_backend not in ("auto", "onnxruntime"):
        return settings
    if importlib.util.find_spec("onnxruntime") is None:
        return settings
    from engines.backends.torch_cuda import cuda_available

    if cuda_available():
        return settings
    out = settings.cpu_engine_dir
    if not (out / "manifest.json").exists():
        from engines.build import build_engine

        echo(f"building the ONNX Runtime text encoder into {out} (once) ...")
        build_engine("onnxruntime", out, precision="fp32", model_dir=settings.model_dir)
    return settings.replace(encoder_artifact=out)


def build_default_index(settings, catalog: Path | None = None, out: Path | None = None,
                        progress: bool = True, catalog_offset: int | None = None) -> Path:
    from index import build_index, default_catalog_path, load_catalog, save_snapshot
    from stream.live.services import load_product_encoder

    catalog = catalog or default_catalog_path()
    out = out or settings.resolved_index_path
    products = load_catalog(catalog)          # a bad catalogue fails before the model loads
    encoder = load_product_encoder(settings)  # with a trained item tower when a session encoder is set
    index = build_index(products, encoder.encode, dim=encoder.dim, model_version=encoder.model_version,
                        progress=progress, kind=settings.index_kind)
    offsets = {"0": catalog_offset} if catalog_offset is not None else None
    return save_snapshot(index, out, source=str(catalog), catalog_offsets=offsets)


def ensure_index(settings: Settings, echo=log.info) -> Settings:
    """Build the default index once, in the product space of the session encoder the worker runs
    (the shipped trained model's item tower by default); rebuild one made for another model."""
    manifest = settings.resolved_index_path / "manifest.json"
    if not manifest.exists():
        echo("building the product index from the shipped Online Retail catalogue (once) ...")
        build_default_index(settings)
        return settings
    from index import read_manifest
    from stream.live.services import load_product_encoder

    built_for = read_manifest(settings.resolved_index_path).get("model_version")
    products = load_product_encoder(settings)
    wanted = products.model_version
    products.text.close()
    if built_for != wanted and settings.index_path is not None:
        from stream.errors import ConfigError

        raise ConfigError(f"the index at {settings.index_path} was built for {built_for}; the worker runs "
                          f"{wanted}: rebuild it (shopstream index build) or set SHOPSTREAM_SESSION_ENCODER "
                          "to the model it was built for")
    if built_for != wanted:
        echo(f"the index at {settings.resolved_index_path} was built for {built_for}; the worker runs "
             f"{wanted}: rebuilding it from the shipped catalogue ...")
        build_default_index(settings)
    return settings


def prepare_local(settings: Settings, echo=log.info) -> Settings:
    settings = ensure_cpu_engine(settings, echo)
    return ensure_index(settings, echo)

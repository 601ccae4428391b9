"""Load what a worker needs -- encoder, index snapshot, session encoder -- from one settings object."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from engines import (
    PoolingSessionEncoder,
    QueryEmbeddingCache,
    TextEncoder,
)
from index import ItemIndex, SnapshotError, load_snapshot
from stream.core.metrics import Metrics
from stream.core.recommender import IndexHolder, OneEventResults, Recommender
from stream.core.schema import EventValidator
from stream.core.session_state import SessionLimits
from stream.core.variants import DEFAULT_VARIANT, Arm, VariantRecommender
from stream.encoders import (SHIPPED_SESSION_ENCODER, load_text_encoder, product_path, product_space_version,
                             session_encoder_path)
from stream.errors import ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)

class ProductEncoder:
    """Product text (and id) -> the vector the index holds for it.

    The text encoder's vector, passed through the trained session encoder's product path when the
    worker runs one that changes it: its item tower (``item_space: item-tower``) and, for a model
    with id vectors, each product's learned id vector where training saw the product; a product
    the model has never seen gets its vector from its title alone until a model that saw it serves.
    Index builds, catalogue updates, hot swaps and snapshot checks all go through this, so an
    index made for another product space is refused.
    """

    def __init__(self, text: TextEncoder, session_encoder=None) -> None:
        self.text = text
        self.tower = product_path(session_encoder)
        self.dim = text.dim
        self.name = text.name
        self.model_version = product_space_version(text.model_version, self.tower)

    def encode(self, texts, ids=None):
        """Vectors of products' ``texts``; ``ids`` (one per text, None for none) picks each known
        product's id vector when the model has them."""
        vectors = self.text.encode(texts)
        return vectors if self.tower is None else self.tower.item_vectors(vectors, item_ids=ids)

    encode.takes_ids = True     # index.build.encode_products passes the products' ids


@dataclass
class Services:
    settings: Settings
    encoder: TextEncoder
    index: IndexHolder
    recommender: Recommender
    validator: EventValidator
    limits: SessionLimits
    metrics: Metrics
    products: ProductEncoder | None = None
    variants: VariantRecommender | None = None      # what the pipeline recommends with (A/B variants)
    catalog_lock: threading.Lock = field(default_factory=threading.Lock)   # catalogue writes vs new variants

    def product_spaces(self) -> list[tuple[IndexHolder, ProductEncoder]]:
        """Every live index with the encoder of its product space (each once): a catalogue update
        goes to all of them."""
        spaces = {id(self.index): (self.index, self.products)}
        for arm in (self.variants.arms if self.variants else ()):
            if arm.products is not None:
                spaces.setdefault(id(arm.recommender.index), (arm.recommender.index, arm.products))
        return list(spaces.values())


def session_limits(settings: Settings) -> SessionLimits:
    return SessionLimits(max_items=settings.session_max_items, max_queries=settings.session_max_queries,
                         max_purchased=settings.session_max_purchased, ttl_s=settings.session_ttl_s,
                         recently_viewed_excluded=settings.recently_viewed_excluded)


def load_product_encoder(settings: Settings, text: TextEncoder | None = None) -> ProductEncoder:
    text = text or load_text_encoder(settings)
    session = load_session_encoder(settings, text.dim) if session_encoder_path(settings) else None
    return ProductEncoder(text, session)


def load_index(settings: Settings, products: ProductEncoder | TextEncoder) -> ItemIndex:
    path = settings.resolved_index_path
    if not path.exists():
        raise ConfigError(f"no index snapshot at {path}: build one with `shopstream index build`")
    if settings.model_threads:
        import faiss

        faiss.omp_set_num_threads(settings.model_threads)
    return load_snapshot(path, dim=products.dim, model_version=products.model_version,
                         device=settings.index_device)


def load_session_encoder(settings: Settings, dim: int):
    """The shipped trained encoder by default, on the backend ``auto`` picks (logged); pooling
    when asked for. The index snapshot names both models (``ProductEncoder.model_version``), so a
    worker refuses an index built for another session encoder."""
    path = session_encoder_path(settings)
    if path is None:
        return PoolingSessionEncoder(dim=dim)
    from engines.session_model import load_session_encoder as load_trained

    encoder = load_trained(path, settings.session_backend, threads=settings.model_threads or None)
    if encoder.has_id_vectors:
        log.info("%s has id vectors for %d products: the index must hold them (shopstream index build with "
                 "this session encoder); products it never saw serve from their titles", path,
                 encoder.manifest["config"]["item_ids"])
    if encoder.dim != dim:
        raise ConfigError(f"session encoder {path} makes {encoder.dim}-d vectors; the text encoder makes {dim}-d")
    return encoder


def load_session_model(model: str, dim: int):
    """A variant's session model: ``pooling``, ``default`` (the trained encoder shipped with
    shopstream) or an artifact folder."""
    if model in ("", "pooling"):
        return PoolingSessionEncoder(dim=dim)
    path = SHIPPED_SESSION_ENCODER if model == "default" else Path(model)
    if not (path / "manifest.json").exists() and path.suffix != ".onnx":
        raise ConfigError(f"no session encoder artifact at {path}" + (
            " (this install ships no trained default; name an artifact folder)" if model == "default" else ""))
    from engines.session_model import load_session_encoder as load_trained

    return load_trained(path)


def variant_index_path(settings: Settings, products: ProductEncoder) -> Path:
    """Where the index of a trained item tower's product space is looked for by default."""
    tower = products.tower.model_version if products.tower is not None else "text"
    return Path(settings.data_dir) / "index" / f"items-{tower}"


def load_arm(settings: Settings, services: "Services", name: str, weight: float, model: str,
             index_path: str = "") -> Arm:
    """One variant: its session model and the index of its product space (shared with the
    worker's own index when the spaces are the same). A model whose index is missing or was built
    for another product space is refused (ConfigError)."""
    session = load_session_model(model, services.encoder.dim)
    products = ProductEncoder(services.encoder, session)
    if products.model_version == services.products.model_version and not index_path:
        holder = services.index
    else:
        path = Path(index_path) if index_path else variant_index_path(settings, products)
        if not (path / "manifest.json").exists():
            raise ConfigError(f"variant {name}: no index for {products.model_version} at {path}: build it with "
                              f"`shopstream index build --session-encoder {model} --out {path}`")
        try:
            holder = IndexHolder(load_snapshot(path, dim=products.dim, model_version=products.model_version,
                                               device=settings.index_device))
        except SnapshotError as exc:
            raise ConfigError(f"variant {name}: {exc}") from None
    base = services.recommender
    recommender = Recommender(index=holder, queries=base.queries, session_encoder=session, limits=base.limits,
                              top_k=base.top_k, search_blend=base.search_blend, metrics=base.metrics,
                              variant=name, one_event=OneEventResults(settings.one_event_results))
    log.info("variant %s (weight %g): session model %s, index %s", name, weight, session.model_version,
             holder.current.version)
    return Arm(name, weight, recommender, products)


def load_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    metrics = metrics or Metrics()
    encoder = load_text_encoder(settings)
    session_encoder = load_session_encoder(settings, encoder.dim)
    products = ProductEncoder(encoder, session_encoder)
    try:
        index = load_index(settings, products)
    except SnapshotError as exc:
        raise ConfigError(str(exc)) from None
    holder = IndexHolder(index)
    limits = session_limits(settings)
    recommender = Recommender(
        index=holder, queries=QueryEmbeddingCache(encoder, settings.query_cache_size),
        session_encoder=session_encoder, limits=limits,
        top_k=settings.top_k, search_blend=settings.search_blend, metrics=metrics,
        one_event=OneEventResults(settings.one_event_results))
    min_ts = datetime.fromisoformat(settings.min_event_time).timestamp()
    validator = EventValidator(max_bytes=settings.max_event_bytes, min_ts=min_ts,
                               max_future_skew_s=settings.max_future_skew_s,
                               known_product=lambda pid: pid in holder.current)
    metrics.set_index(index.version, len(index))
    metrics.set_model(encoder.model_version)
    log.info("loaded encoder %s (%s), index %s with %d products", encoder.name, encoder.model_version,
             index.version, len(index))
    services = Services(settings, encoder, holder, recommender, validator, limits, metrics, products)
    arms = [Arm(DEFAULT_VARIANT, 1.0, recommender, products)]
    if settings.variant_specs:                 # every worker loads every variant
        arms = [load_arm(settings, services, v.name, v.weight, v.model, v.index) for v in settings.variant_specs]
    services.variants = VariantRecommender(arms, settings.resolved_variant_key)
    return services

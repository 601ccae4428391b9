"""Load what a worker needs -- encoder, index snapshot, session encoder -- from one settings object."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from engines import PoolingSessionEncoder, QueryEmbeddingCache, TextEncoder, create_text_encoder
from index import ItemIndex, SnapshotError, load_snapshot
from stream.errors import ConfigError
from stream.metrics import Metrics
from stream.recommender import IndexHolder, Recommender
from stream.schema import EventValidator
from stream.session_state import SessionLimits
from stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    encoder: TextEncoder
    index: IndexHolder
    recommender: Recommender
    validator: EventValidator
    limits: SessionLimits
    metrics: Metrics


def session_limits(settings: Settings) -> SessionLimits:
    return SessionLimits(max_items=settings.session_max_items, max_queries=settings.session_max_queries,
                         max_purchased=settings.session_max_purchased, ttl_s=settings.session_ttl_s,
                         recently_viewed_excluded=settings.recently_viewed_excluded)


def load_text_encoder(settings: Settings) -> TextEncoder:
    options = {}
    if settings.model_dir:
        options["model_dir"] = settings.model_dir
    if settings.encoder_artifact:
        options["artifact"] = settings.encoder_artifact
    return create_text_encoder(settings.encoder_backend, **options).load()


def load_index(settings: Settings, encoder: TextEncoder) -> ItemIndex:
    path = settings.resolved_index_path
    if not path.exists():
        raise ConfigError(f"no index snapshot at {path}: build one with `shopstream index build`")
    return load_snapshot(path, dim=encoder.dim, model_version=encoder.model_version,
                         device=settings.index_device)


def load_session_encoder(settings: Settings, dim: int):
    if settings.session_encoder:
        from engines.session_model import load_session_encoder as load_trained

        return load_trained(settings.session_encoder)
    return PoolingSessionEncoder(dim=dim)


def load_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    metrics = metrics or Metrics()
    encoder = load_text_encoder(settings)
    try:
        index = load_index(settings, encoder)
    except SnapshotError as exc:
        raise ConfigError(str(exc)) from None
    holder = IndexHolder(index)
    limits = session_limits(settings)
    recommender = Recommender(
        index=holder, queries=QueryEmbeddingCache(encoder, settings.query_cache_size),
        session_encoder=load_session_encoder(settings, encoder.dim), limits=limits,
        top_k=settings.top_k, search_blend=settings.search_blend, metrics=metrics)
    min_ts = datetime.fromisoformat(settings.min_event_time).timestamp()
    validator = EventValidator(max_bytes=settings.max_event_bytes, min_ts=min_ts,
                               max_future_skew_s=settings.max_future_skew_s,
                               known_product=lambda pid: pid in holder.current)
    metrics.set_index(index.version, len(index))
    metrics.set_model(encoder.model_version)
    log.info("loaded encoder %s (%s), index %s with %d products", encoder.name, encoder.model_version,
             index.version, len(index))
    return Services(settings, encoder, holder, recommender, validator, limits, metrics)

"""A host joins the fleet with two settings, the broker and the registry URL.

:func:`join` runs before a worker loads anything: when the host has no index snapshot of its own,
it fetches (and verifies) the models topic's ``default`` model and its index from the registry, or,
before any model was promoted, the index ``shopstream index publish`` named current. The worker
then follows the catalogue topic from the snapshot's offset and the models topic as every host does.
:func:`publish_index` and :func:`publish_model` are the writing side (``shopstream index publish``,
``shopstream learn``); :func:`verify` is learn's check of what every worker will check.
"""
from __future__ import annotations

import logging
from pathlib import Path

from stream.errors import ConfigError, RegistryError
from stream.ops.models import ModelRecord
from stream.ops.registry import CURRENT_INDEX, Published, Registry
from stream.settings import Settings

log = logging.getLogger(__name__)


def registry_of(settings: Settings, metrics=None) -> Registry:
    if not settings.registry:
        raise ConfigError("no registry: set SHOPSTREAM_REGISTRY (file:///folder, http(s)://host/path, s3://bucket/path)")
    return Registry(settings.registry, settings.resolved_registry_cache, metrics=metrics)


async def join(settings: Settings, metrics=None) -> Settings:
    """``settings`` with the index (and the default session model) fetched from the registry, when
    a registry is set and this host has no index snapshot at its index path."""
    if not settings.registry or settings.variants or settings.resolved_index_path.exists():
        return settings
    from stream.ops.model_log import read_models
    from stream.ops.models import serving

    registry = registry_of(settings, metrics)
    default, _ = serving(await read_models(settings)) if settings.follow_models else (None, None)
    changes: dict = {}
    if default is not None and (default.artifact_sha256 or default.index_sha256):
        if default.artifact:
            changes["session_encoder"] = str(registry.fetch(default.artifact, default.artifact_sha256))
        if default.index:
            changes["index_path"] = registry.fetch(default.index, default.index_sha256)
        log.info("joining the fleet with the default model %s from %s", default.version, registry.url)
    if "index_path" not in changes:
        pointer = registry.read_pointer(CURRENT_INDEX)
        if pointer is None:
            raise ConfigError(f"no index snapshot at {settings.resolved_index_path} and none in the registry "
                              f"{registry.url}: publish one with `shopstream index publish`")
        try:
            changes["index_path"] = registry.fetch(str(pointer["key"]), str(pointer["sha256"]))
        except KeyError as exc:
            raise RegistryError(f"{CURRENT_INDEX} in {registry.url} names no {exc}", "address") from None
        log.info("joining the fleet with the published index %s from %s", pointer.get("version"), registry.url)
    log.info("fetched %d bytes from the registry", registry.fetched_bytes)
    return settings.replace(**changes)


def publish_index(settings: Settings, snapshot: Path, *, current: bool = True) -> Published:
    """Upload an index snapshot; ``current``: new hosts start from it until a model names its own."""
    from index import read_manifest

    manifest = read_manifest(snapshot)
    registry = registry_of(settings)
    out = registry.publish(snapshot, "index", manifest.get("version", ""))
    if current:
        registry.write_pointer(CURRENT_INDEX, {"key": out.key, "sha256": out.sha256, "bytes": out.size,
                                               "version": manifest.get("version"),
                                               "model_version": manifest.get("model_version")})
    return out


def publish_model(settings: Settings, model: Path, index: Path | None, version: str) -> dict:
    """Upload a model artifact and its index; the record fields that name them."""
    registry = registry_of(settings)
    m = registry.publish(model, "model", version)
    fields = {"artifact": m.key, "artifact_sha256": m.sha256}
    if index is not None:
        i = registry.publish(index, "index", version)
        fields.update(index=i.key, index_sha256=i.sha256)
    return fields


def local_artifact(settings: Settings, record: ModelRecord) -> Path:
    """The record's model folder on this host (fetched and verified when it is in the registry)."""
    if record.artifact_sha256:
        return registry_of(settings).fetch(record.artifact, record.artifact_sha256)
    return Path(record.artifact)


def verify(settings: Settings, record: ModelRecord) -> str | None:
    """Why the record's artifacts would be refused by a worker (None: they fetch and verify). A
    registry that cannot be reached at all raises :class:`RegistryError` (nothing is decided)."""
    if not (record.artifact_sha256 or record.index_sha256):
        if settings.registry and (record.artifact or record.index):
            return (f"model {record.version} names {record.artifact or record.index!r}, not an address in the "
                    "registry with its sha256")
        return None
    registry = registry_of(settings)
    for key, sha in ((record.artifact, record.artifact_sha256), (record.index, record.index_sha256)):
        if not key:
            continue
        try:
            registry.fetch(key, sha)
        except RegistryError as exc:
            if exc.reason == "unreachable":
                raise
            return str(exc)
    return None

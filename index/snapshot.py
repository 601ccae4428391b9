"""Versioned index snapshots on disk: manifest.json, products.jsonl, vectors.npy, and for the
approximate kinds the FAISS structure (structure.faiss) with the slot of every product (slots.npy).

A snapshot is refused on load when it is incomplete, corrupt, or made for another embedding
dimension or text model; the caller keeps whatever index it already has.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import orjson

from index.catalog import Product
from index.errors import CatalogError, SnapshotError
from index.item_index import ItemIndex
from index.kinds import KINDS, FaissStructure, IndexParams

log = logging.getLogger(__name__)

FORMAT = 2
MANIFEST = "manifest.json"
STRUCTURE = "structure.faiss"
DATA_FILES = ("products.jsonl", "vectors.npy", "slots.npy", STRUCTURE)


def new_version(products_digest: str) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + products_digest[:8]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in DATA_FILES:
        path = folder / name
        if path.exists():
            h.update(name.encode() + b"\0")
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def save_snapshot(index: ItemIndex, out_dir: str | Path, *, source: str = "",
                  catalog_offsets: dict[str, int] | None = None) -> Path:
    """Write ``index`` to ``out_dir`` (built in a temp folder, then renamed into place).

    ``catalog_offsets``: {partition: offset} of the catalog topic before which the snapshot already
    holds every catalogue update; a worker that loads it applies only the updates from there on.
    """
    out_dir = Path(out_dir)
    products, vectors, slots, structure = index.export()
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "products.jsonl").write_bytes(b"".join(orjson.dumps(p.to_dict()) + b"\n" for p in products))
    np.save(tmp / "vectors.npy", vectors)
    persisted = structure is not None and structure.persisted
    if persisted:
        np.save(tmp / "slots.npy", slots)
        structure.save(tmp / STRUCTURE)
    digest = _digest(tmp)
    if index.version == "unversioned":
        index.version = new_version(digest)
    manifest = {
        "format": FORMAT, "version": index.version, "dim": index.dim, "kind": index.search_kind,
        "params": index.params.to_dict(), "structure": STRUCTURE if persisted else None,
        "model_version": index.model_version, "count": len(products), "sha256": digest,
        "catalog_offsets": {str(k): int(v) for k, v in (catalog_offsets or {}).items()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": source,
    }
    (tmp / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    old = out_dir.with_name(out_dir.name + f".old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)        # a reader sees the old snapshot, then none, then the new one
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = orjson.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise SnapshotError(f"{path}: not an index snapshot (no {MANIFEST}); "
                            "build one with `shopstream index build`") from None
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"{path}/{MANIFEST} is corrupt: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise SnapshotError(f"{path}: unsupported snapshot format {found!r} (this shopstream reads {FORMAT}); "
                            "rebuild it with `shopstream index build`")
    for key in ("version", "dim", "kind", "model_version", "sha256", "count"):
        if key not in manifest:
            raise SnapshotError(f"{path}/{MANIFEST} lacks {key!r}")
    if manifest["kind"] not in KINDS:
        raise SnapshotError(f"{path}: unknown index kind {manifest['kind']!r}")
    return manifest


def load_snapshot(path: str | Path, *, dim: int | None = None, model_version: str | None = None,
                  device: str = "cpu") -> ItemIndex:
    """Load and verify a snapshot. ``dim`` / ``model_version``, when given, must match.

    ``device`` is ``cpu``, ``auto`` or ``cuda`` (:func:`index.gpu.choose_device`); on a GPU the
    snapshot's vectors are searched exactly and a stored structure is not read.
    """
    path = Path(path)
    m = read_manifest(path)
    if dim is not None and m["dim"] != dim:
        raise SnapshotError(f"{path}: snapshot has dimension {m['dim']}, the encoder gives {dim}")
    if model_version is not None and m["model_version"] != model_version:
        raise SnapshotError(f"{path}: snapshot was built with model {m['model_version']}, "
                            f"the worker runs {model_version}")
    try:
        actual = _digest(path)
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read snapshot data: {exc}") from None
    if actual != m["sha256"]:
        raise SnapshotError(f"{path}: checksum mismatch, the snapshot is corrupt or incomplete")
    try:
        lines = (path / "products.jsonl").read_bytes()
        vectors = np.load(path / "vectors.npy", allow_pickle=False)
        products = [Product.from_mapping(orjson.loads(line)) for line in lines.splitlines() if line]
    except (OSError, ValueError, CatalogError) as exc:
        raise SnapshotError(f"{path}: cannot read snapshot data: {exc}") from None
    if vectors.shape != (len(products), m["dim"]) or len(products) != m["count"]:
        raise SnapshotError(f"{path}: {len(products)} products but vectors of shape {vectors.shape}")
    params = IndexParams.from_dict(m.get("params"))
    common = dict(dim=m["dim"], model_version=m["model_version"], version=m["version"])
    if device != "cpu":
        from index.gpu import choose_device

        device = choose_device(device)
    if m.get("structure") and device == "cpu":
        structure = FaissStructure.load(path / m["structure"], m["kind"], m["dim"], params)
        try:
            slots = np.load(path / "slots.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"{path}: cannot read slots.npy: {exc}") from None
        if slots.shape != (len(products),) or (len(slots) and (slots.min() < 0 or slots.max() >= structure.ntotal)) \
                or len(np.unique(slots)) != len(slots):
            raise SnapshotError(f"{path}: slots.npy does not match the {m['kind']} structure")
        index = ItemIndex.restore(products, slots, structure, kind=m["kind"], params=params, **common)
    else:
        index = ItemIndex(kind=m["kind"], params=params, device=device, **common)
        if products:
            index.upsert(products, vectors)
    log.info("loaded snapshot %s: %d products, %s index on %s", m["version"], len(index),
             index.search_kind, index.device)
    return index

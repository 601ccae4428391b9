"""Versioned index snapshots on disk: manifest.json, products.jsonl, vectors.npy.

A snapshot is refused on load when it is incomplete, corrupt, or made for another embedding
dimension or text model; the caller keeps whatever index it already has.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import orjson

from index.catalog import Product
from index.errors import SnapshotError
from index.item_index import ItemIndex

FORMAT = 1
MANIFEST = "manifest.json"


def new_version(products_digest: str) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + products_digest[:8]


def save_snapshot(index: ItemIndex, out_dir: str | Path, *, source: str = "") -> Path:
    """Write ``index`` atomically to ``out_dir`` (a temp folder renamed into place)."""
    out_dir = Path(out_dir)
    pids = list(index.products)
    vectors = index.vectors_of(pids) if pids else np.zeros((0, index.dim), np.float32)
    lines = b"".join(orjson.dumps(index.products[p].to_dict()) + b"\n" for p in pids)
    digest = hashlib.sha256(lines + vectors.tobytes()).hexdigest()
    if index.version == "unversioned":
        index.version = new_version(digest)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "products.jsonl").write_bytes(lines)
    np.save(tmp / "vectors.npy", vectors)
    manifest = {
        "format": FORMAT, "version": index.version, "dim": index.dim, "kind": index.kind,
        "model_version": index.model_version, "count": len(pids), "sha256": digest,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": source,
    }
    (tmp / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
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
        raise SnapshotError(f"{path}: unsupported snapshot format {manifest.get('format')!r}")
    return manifest


def load_snapshot(path: str | Path, *, dim: int | None = None,
                  model_version: str | None = None) -> ItemIndex:
    """Load and verify a snapshot. ``dim`` / ``model_version``, when given, must match."""
    path = Path(path)
    m = read_manifest(path)
    if dim is not None and m["dim"] != dim:
        raise SnapshotError(f"{path}: snapshot has dimension {m['dim']}, the encoder gives {dim}")
    if model_version is not None and m["model_version"] != model_version:
        raise SnapshotError(f"{path}: snapshot was built with model {m['model_version']}, "
                            f"the worker runs {model_version}")
    try:
        lines = (path / "products.jsonl").read_bytes()
        vectors = np.load(path / "vectors.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: cannot read snapshot data: {exc}") from None
    if hashlib.sha256(lines + np.ascontiguousarray(vectors).tobytes()).hexdigest() != m["sha256"]:
        raise SnapshotError(f"{path}: checksum mismatch, the snapshot is corrupt")
    products = [Product.from_mapping(orjson.loads(line)) for line in lines.splitlines() if line]
    if vectors.shape != (len(products), m["dim"]):
        raise SnapshotError(f"{path}: {len(products)} products but vectors of shape {vectors.shape}")
    index = ItemIndex(m["dim"], model_version=m["model_version"], version=m["version"])
    if products:
        index.upsert(products, vectors)
    return index

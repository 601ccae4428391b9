"""Versioned engine artifacts: a folder with the engine files and a ``manifest.json`` that says
what they are (model hash and version, backend, precision, and for TensorRT the TensorRT version
and the GPU's compute capability the plan was built for).

The runtime only loads artifacts; ``shopstream engine build`` (``engines.build``) writes them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineManifest:
    backend: str                    # registry name: "onnxruntime", "tensorrt", "torch", "torch-cuda"
    precision: str                  # "fp32" | "fp16" | "int8"
    model_version: str              # engines.model.model_version of the source weights
    model_hash: str                 # sha256 of the whole source weight file
    dim: int
    files: dict[str, str] = field(default_factory=dict)   # role -> file name inside the folder
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    outputs: tuple[str, ...] = ("embeddings",)
    length_buckets: tuple[int, ...] = ()
    batch_buckets: tuple[int, ...] = ()
    onnx_opset: int | None = None
    tensorrt_version: str | None = None
    compute_capability: str | None = None   # "9.0" for an H100; TensorRT plans only
    parity: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    def path_of(self, folder: Path, role: str) -> Path:
        try:
            return Path(folder) / self.files[role]
        except KeyError:
            raise ArtifactError(f"{folder}: the {self.backend} artifact has no {role!r} file") from None


def write_manifest(folder: str | Path, manifest: EngineManifest) -> Path:
    """Write ``manifest.json`` last and atomically: a folder with a manifest is complete."""
    folder = Path(folder)
    for role, name in manifest.files.items():
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder}: {role} file {name} is missing")
    data = asdict(manifest)
    if not data["created"]:
        data["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def read_manifest(folder: str | Path) -> EngineManifest:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{folder} is not an engine artifact (no {MANIFEST}); "
                            "build one with `shopstream engine build`") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc})") from exc
    if data.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {data.get('format_version')!r}, "
                            f"this shopstream reads {FORMAT_VERSION}")
    try:
        for key in ("inputs", "outputs", "length_buckets", "batch_buckets"):
            data[key] = tuple(data.get(key, ()))
        manifest = EngineManifest(**data)
    except TypeError as exc:
        raise ArtifactError(f"{path}: unexpected manifest fields ({exc})") from exc
    if manifest.precision not in PRECISIONS:
        raise ArtifactError(f"{path}: unknown precision {manifest.precision!r}")
    return manifest


def load_artifact(folder: str | Path, backend: str) -> EngineManifest:
    """Read the manifest and check the artifact was built for ``backend``."""
    manifest = read_manifest(folder)
    if manifest.backend != backend:
        raise ArtifactError(f"{folder} is a {manifest.backend} artifact, not {backend}")
    for role in manifest.files:
        path = manifest.path_of(Path(folder), role)
        if not path.is_file():
            raise ArtifactError(f"{folder}: {role} file {path.name} is missing")
    return manifest


def load_artifact_for_weights(folder: str | Path, backend: str, weights_version: str,
                              model_dir: str | Path) -> EngineManifest:
    """:func:`load_artifact`, and check the artifact was built from the weights in ``model_dir``."""
    manifest = load_artifact(folder, backend)
    if manifest.model_version != weights_version:
        raise ArtifactError(f"{folder} was built for {manifest.model_version}, "
                            f"the weights in {model_dir} are {weights_version}")
    return manifest

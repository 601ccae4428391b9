"""The trained session encoder at serving time: load an artifact, embed sessions, map titles to
product vectors. ``stream.live.services`` calls :func:`load_session_encoder` for the artifact
``SHOPSTREAM_SESSION_ENCODER`` names (by default the one shipped in ``stream/data``);
``shopstream train`` writes artifacts. The backend runners live in ``engines/backends/session_*.py``.

An artifact is a folder::

    manifest.json               format, model version, text model version, config, training record
    weights.pt                  PyTorch state dict (the reference backend)
    session_encoder.onnx        the user tower (fp32); .fp16.onnx and .int8.onnx variants optional
    item_tower.onnx             text vector -> product vector (absent when there is no item tower)
    item_ids.txt                with id vectors: the product id of each learned row
    id_vectors.fp16.npy         optional: the id vectors in fp16, kept out of weights.pt
                                (:func:`store_id_vectors_fp16`, for an artifact that ships)

The index holds each product's vector in the model's product space: with an item tower or id vectors
it must be built from :meth:`TrainedSessionEncoder.item_vectors` of the title vectors and the
product ids (a product seen in training gets its learned id vector added, one the model never saw
its title's alone); with neither, the plain text index serves as is.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from engines.errors import ArtifactError, MissingExtraError
from engines.session import SessionSequence

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
ONNX_FILES = {"fp32": "session_encoder.onnx", "fp16": "session_encoder.fp16.onnx",
              "int8": "session_encoder.int8.onnx"}
ITEM_TOWER_ONNX = "item_tower.onnx"
ITEM_IDS = "item_ids.txt"      # with id vectors: the product id of each learned row, one a line
ID_VECTORS = "id_vectors.fp16.npy"   # optional: the id vectors (``id_emb.weight``) in fp16, not in weights.pt
ID_TABLE = "id_emb.weight"


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    try:
        m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: not a session encoder artifact (no {MANIFEST}); "
                            "make one with `shopstream train`") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{folder}/{MANIFEST} is corrupt: {exc}") from None
    if m.get("format") != FORMAT or m.get("kind") != "session-encoder":
        raise ArtifactError(f"{folder}: unsupported artifact (format {m.get('format')!r}, kind {m.get('kind')!r})")
    return m


def save_artifact(model, out_dir: str | Path, *, text_model_version: str, record: dict,
                  kinds_seen: Sequence[str] = (), uses_time: bool = False,
                  item_ids: Sequence[str] | None = None) -> Path:
    """Write ``weights.pt`` and ``manifest.json``; the model version hashes the weights.

    ``kinds_seen`` (most frequent first) and ``uses_time`` say what the training events had; at
    serving, other event types are read as the most frequent seen one and times are ignored
    when training had none."""
    import io

    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    raw = buf.getvalue()
    (out_dir / WEIGHTS).write_bytes(raw)
    if model.cfg.item_ids:
        if item_ids is None or len(item_ids) < model.cfg.item_ids:
            raise ArtifactError(f"a model with {model.cfg.item_ids} id vectors needs that many product ids")
        (out_dir / ITEM_IDS).write_text("".join(f"{pid}\n" for pid in item_ids[:model.cfg.item_ids]), encoding="utf-8")
    version = _version(raw)
    manifest = {"format": FORMAT, "kind": "session-encoder", "model_version": version,
                "text_model_version": text_model_version, "dim": model.cfg.text_dim,
                "item_space": "item-tower" if model.cfg.item_tower else "text",
                "config": model.cfg.to_dict(), "kinds_seen": list(kinds_seen), "uses_time": bool(uses_time),
                **record}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_plain), encoding="utf-8")
    return out_dir


def store_id_vectors_fp16(folder: str | Path) -> str:
    """Move an artifact's id vectors out of ``weights.pt`` into ``id_vectors.fp16.npy``, in fp16:
    half the bytes of the largest part of a model with id vectors (3,768 x 384 fp32 are 5.8 MB).
    The weights change (rounded), so the model gets a new version, the hash of both files; the
    manifest keeps the one it had as ``id_vectors_fp16.from``. Returns the new version."""
    import io

    import torch

    folder = Path(folder)
    m = read_manifest(folder)
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    if ID_TABLE not in state:
        raise ArtifactError(f"{folder}: no id vectors in {WEIGHTS}")
    table = state.pop(ID_TABLE).numpy().astype(np.float16)
    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    ids_raw = buf.getvalue()
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = buf.getvalue()
    (folder / WEIGHTS).write_bytes(raw)
    (folder / ID_VECTORS).write_bytes(ids_raw)
    version = _version(raw, ids_raw)
    m["id_vectors_fp16"] = {"from": m["model_version"], "rows": int(table.shape[0])}
    m["model_version"] = version
    (folder / MANIFEST).write_text(json.dumps(m, indent=2, default=_plain), encoding="utf-8")
    return version


def _version(*stored: bytes) -> str:
    """A model's version: the hash of the bytes its weights are stored as."""
    return "session-tf-" + hashlib.sha256(b"".join(stored)).hexdigest()[:12]


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to a manifest")


def load_torch_model(folder: str | Path):
    import torch

    from engines.session_network import ModelConfig, SessionTransformer

    m = read_manifest(folder)
    model = SessionTransformer(ModelConfig(**m["config"]))
    try:
        state = torch.load(Path(folder) / WEIGHTS, map_location="cpu", weights_only=True)
        ids = Path(folder) / ID_VECTORS
        if ID_TABLE not in state and ids.is_file():
            state[ID_TABLE] = torch.from_numpy(np.load(ids, allow_pickle=False).astype(np.float32))
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{folder}/{WEIGHTS}: cannot load weights: {exc}") from None
    model.eval()
    return model


#: A lower precision serves only if it costs at most this share of fp32's validation NDCG@10 and
#: Recall@10 (``ranking_check`` in the manifest, written by ``shopstream train``): the speed levers
#: are priced by ranking, not by the cosine of the vectors.
RANKING_TOLERANCE = 0.01


def precision_allowed(manifest: dict, precision: str) -> tuple[bool, str]:
    """Whether ``precision`` ranks as well as fp32 on the artifact's validation fold, and why."""
    if precision == "fp32":
        return True, "the reference precision"
    check = manifest.get("ranking_check") or {}
    ref, got = check.get("fp32"), check.get(precision)
    if not ref or not got:
        return False, f"no ranking check of {precision} in the manifest (shopstream train writes one)"
    for metric in ("ndcg@10", "recall@10"):
        if got[metric] < ref[metric] * (1.0 - RANKING_TOLERANCE):
            return False, (f"{precision} {metric} {got[metric]:.4f} vs fp32 {ref[metric]:.4f} on the "
                           f"{check.get('fold', 'valid')} fold: more than {RANKING_TOLERANCE:.0%} lower")
    return True, (f"{precision} ranks within {RANKING_TOLERANCE:.0%} of fp32 on the {check.get('fold', 'valid')} "
                  f"fold (NDCG@10 {got['ndcg@10']:.4f} vs {ref['ndcg@10']:.4f})")


class TrainedSessionEncoder:
    """:class:`engines.session.SessionEncoder` over a trained artifact, on any session backend.

    ``embed`` takes sessions whose product rows are index vectors and whose search rows are text
    vectors (what :class:`stream.core.recommender.Recommender` builds), packs the whole batch into
    right-aligned arrays and makes **one** call of the backend's runner (``engines.backends.session_*``:
    torch, onnxruntime, torch-cuda, tensorrt). Search rows go through the item tower first, like
    the titles did when the index was built; the item tower runs on onnxruntime (or PyTorch) on the
    CPU whatever the backend, since it runs per catalogue update, not per event.
    """

    def __init__(self, folder: str | Path, *, backend: str = "torch", precision: str = "fp32",
                 threads: int | None = None, **options) -> None:
        from engines.registry import SESSION_BACKENDS, session_backend_class

        if backend not in SESSION_BACKENDS:
            session_backend_class(backend)          # raises with the list of valid names
        if precision not in ONNX_FILES:
            raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(ONNX_FILES)}")
        self.folder = Path(folder)
        self.backend = backend
        self.precision = precision
        self.threads = threads
        self.options = options
        self.name = f"session-transformer-{backend}" + ("" if precision == "fp32" else f"-{precision}")
        self.dim = 0
        self.model_version = ""
        self.items_version = ""
        self.max_len = 0
        self.item_space = "text"
        self.manifest: dict = {}
        self.runner = None
        self._torch = None
        self._ort_items = None
        self._id_rows = None

    def load(self) -> "TrainedSessionEncoder":
        from engines.registry import session_backend_class

        m = self.manifest = read_manifest(self.folder)
        self.dim, self.max_len, self.item_space = m["dim"], m["config"]["max_len"], m["item_space"]
        # events of a type, or times, that training never saw would meet untrained embeddings:
        # map them to what training saw (a purchase-only log without clock serves live views)
        self.kinds_seen = list(m.get("kinds_seen") or [])
        self.uses_time = bool(m.get("uses_time", False))
        # the item tower always runs in fp32: the index's product space is named by the weights alone,
        # whatever precision the user tower serves in
        self.items_version = m["model_version"]
        self.model_version = m["model_version"] + ("" if self.precision == "fp32" else f"-{self.precision}")
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self._torch = load_torch_model(self.folder)     # the reference, and the item tower without ONNX
        self._id_rows = None
        if m["config"].get("item_ids"):
            ids = (self.folder / ITEM_IDS).read_text(encoding="utf-8").splitlines()
            self._id_rows = {pid: i for i, pid in enumerate(ids)}
        if self.item_space == "item-tower" and (self.folder / ITEM_TOWER_ONNX).is_file():
            try:
                self._ort_items = _ort_session(self.folder / ITEM_TOWER_ONNX, self.threads)
            except MissingExtraError:
                log.info("onnxruntime is not installed; the item tower runs on PyTorch")
        runner = session_backend_class(self.backend)(self.folder, precision=self.precision, threads=self.threads,
                                                     **self.options)
        self.runner = runner.load(m, self._torch)
        log.info("session encoder %s %s (%s)", self.name, self.model_version, self.folder)
        return self

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        self.runner = None

    @property
    def has_id_vectors(self) -> bool:
        """Whether products seen in training have a learned id vector next to their title's."""
        return self._id_rows is not None

    # -- product space -----------------------------------------------------------------------
    def item_vectors(self, text_vectors: np.ndarray, batch_size: int = 8192,
                     item_ids: Sequence[str | None] | None = None) -> np.ndarray:
        """Index vectors of products (or queries) from their title (or query) text vectors.

        A model with id vectors adds each product's own where ``item_ids`` names one seen in
        training; a product added later (or no ids given) gets its vector from its title alone."""
        text_vectors = np.ascontiguousarray(text_vectors, dtype=np.float32)
        if self._id_rows is not None and item_ids is not None:
            import torch

            rows = np.array([self._id_rows.get(p, -1) if p is not None else -1 for p in item_ids], dtype=np.int64)
            if len(rows) != len(text_vectors):
                raise ValueError(f"{len(item_ids)} item ids for {len(text_vectors)} vectors")
            with torch.inference_mode():
                return self._torch.items(torch.from_numpy(text_vectors), torch.from_numpy(rows)).numpy()
        if self.item_space != "item-tower":
            norms = np.linalg.norm(text_vectors, axis=1, keepdims=True)
            return (text_vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        if self._ort_items is not None:
            return np.concatenate([self._ort_items.run(None, {"text": text_vectors[i:i + batch_size]})[0]
                                   for i in range(0, max(len(text_vectors), 1), batch_size)])
        import torch

        self._require()
        with torch.inference_mode():
            return self._torch.items(torch.from_numpy(text_vectors)).numpy()

    # -- user embeddings ---------------------------------------------------------------------
    def pack(self, sessions: Sequence[SessionSequence]) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """The live sessions' indices and their right-aligned ``(vectors, kinds, gaps)`` arrays.

        Written straight into the batch arrays (no per-session copies, no gather): on the GPU the
        packing on the host, not the model, is most of a worker batch's session-encoder time."""
        from engines.session import KIND_CODES
        from engines.session_network import gap_code_rows

        live = [i for i, s in enumerate(sessions) if len(s)]
        if not live:
            return live, np.zeros((0, 1, self.dim), np.float32), np.zeros((0, 1), np.int64), np.zeros((0, 1), np.int64)
        fallback = self.kinds_seen[0] if self.kinds_seen else "view"
        known = set(self.kinds_seen) if self.kinds_seen else set(KIND_CODES)
        codes = {k: KIND_CODES[k if k in known else fallback] for k in KIND_CODES}
        other = KIND_CODES[fallback]
        n = min(self.max_len, max(len(sessions[i]) for i in live))
        vecs = np.zeros((len(live), n, self.dim), dtype=np.float32)
        kinds = np.zeros((len(live), n), dtype=np.int64)
        times = np.full((len(live), n + 1), np.nan)           # right-aligned; NaN: none (or no clock)
        first = np.empty(len(live), dtype=np.int64)           # each row's oldest time in ``times``
        start = np.empty(len(live), dtype=np.int64)           # each row's first event in the arrays
        search_rows, search_cols = [], []
        for b, i in enumerate(live):
            s = sessions[i]
            m = min(len(s), n)
            vecs[b, n - m:] = s.vectors[-m:]
            names = list(s.kinds)[-m:]
            kinds[b, n - m:] = [codes.get(x, other) for x in names]
            # times keep one event more than the vectors, so the oldest kept event knows its gap
            t = np.asarray(s.timestamps, dtype=np.float64)[-m - 1:]
            first[b], start[b] = n + 1 - len(t), n - m
            if self.uses_time:
                times[b, n + 1 - len(t):] = t
            for j, x in enumerate(names):
                if x == "search":
                    search_rows.append(b)
                    search_cols.append(n - m + j)
        gaps = gap_code_rows(times, first, start)
        if search_rows and self.item_space == "item-tower":
            # every query of the batch through the item tower at once, as titles were for the index
            vecs[search_rows, search_cols] = self.item_vectors(vecs[search_rows, search_cols])
        return live, vecs, kinds, gaps

    def embed(self, sessions: Sequence[SessionSequence], now: Sequence[float]) -> np.ndarray:
        self._require()
        out = np.zeros((len(sessions), self.dim), dtype=np.float32)
        live, vecs, kin, gap = self.pack(sessions)
        if live:
            out[live] = self.runner.run(vecs, kin, gap)      # one call for the whole worker batch
        return out

    def _require(self) -> None:
        if self._torch is None or self.runner is None:
            raise RuntimeError("call load() before using the session encoder")


def _ort_session(path: Path, threads: int | None):
    from engines.backends.onnxruntime_cpu import make_session

    if not path.is_file():
        raise ArtifactError(f"{path}: no such ONNX file; run `shopstream train` (with --export) on the artifact")
    return make_session(path, threads)


def load_session_encoder(path: str | Path, backend: str = "auto", *, precision: str = "auto",
                         threads: int | None = None, **options) -> TrainedSessionEncoder:
    """Load a trained session encoder.

    ``path`` is an artifact folder, or one of its ``.onnx`` files to pick a precision
    (``session_encoder.int8.onnx``, on onnxruntime). ``auto`` backend and precision follow
    :func:`engines.select.choose_session_backend` (the choice, and each backend skipped, is logged):
    tensorrt, torch-cuda, onnxruntime, torch; fp16 on a GPU and int8 on onnxruntime only when the
    artifact's ranking check says they rank as well as fp32 (:func:`precision_allowed`).
    """
    path = Path(path)
    if path.suffix == ".onnx":
        by_file = {f: p for p, f in ONNX_FILES.items()}
        if path.name not in by_file:
            raise ArtifactError(f"{path}: not one of the session encoder graphs ({', '.join(ONNX_FILES.values())})")
        precision, path, backend = by_file[path.name], path.parent, "onnxruntime"
    if backend == "auto" or precision == "auto":
        from engines.select import choose_session_backend

        choice = choose_session_backend(path, backend=backend, precision=precision)
        log.info("%s", choice.describe())
        backend, precision = choice.backend, choice.precision
    return TrainedSessionEncoder(path, backend=backend, precision=precision, threads=threads, **options).load()


def item_vectors(path: str | Path, text_vectors: np.ndarray,
                 item_ids: Sequence[str | None] | None = None) -> np.ndarray:
    """Product vectors for the index from title vectors (and product ids, for a model with id
    vectors): what ``shopstream index build`` stores when the worker runs this session encoder
    (the identity, renormalised, without an item tower or id vectors)."""
    return load_session_encoder(path, backend="torch", precision="fp32").item_vectors(text_vectors,
                                                                                      item_ids=item_ids)

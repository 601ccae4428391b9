"""Continuous training: one pass of ``shopstream learn``.

:func:`learn_once` reads the newest window of the events topic (``learn_window_events`` events,
and only those of the last ``learn_window_s`` seconds when set), validates them with the worker's
validator, drops every shopper ever forgotten (forget control messages seen since the last pass, and
all earlier ones, kept in the learn state), holds out each shopper's newest event naming a product
new to them (a purchase that follows the view and add-to-cart of the same product is not new: the
full ranking removes the shopper's history, so it could never be ranked; see :mod:`learn.split`),
warm-starts from the serving session encoder (the ``default`` on the models topic, else the
configured / shipped one), and evaluates both on those held-out events. Only when the new model's
NDCG@10 beats the serving one's by ``learn_margin`` is it written to ``<data_dir>/registry``
(``<version>/model`` and the index snapshot in its item space, ``<version>/index``), published
content-addressed to ``SHOPSTREAM_REGISTRY`` when one is set (:mod:`stream.ops.fleet`), and
announced as a ``candidate`` on the models topic; promotion is :mod:`stream.ops.promotion`'s.

The learn state (``<data_dir>/learn``): ``checkpoint.json`` (the end offsets of the last pass, per
partition: a pass with no new events does nothing) and ``forgotten.txt`` (one token per forgotten
shopper: the pseudonym when ``pseudonymise_key`` is set, which is also the id training sees,
else a SHA-256 of the user id, so the file keeps no plain ids).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from stream.settings import Settings

log = logging.getLogger(__name__)


# -- the learn state ---------------------------------------------------------------------------------
class LearnState:
    """Checkpoint offsets and forgotten shoppers, in a folder (written atomically)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.offsets: dict[int, int] = {}
        self.forgotten: set[str] = set()

    def load(self) -> LearnState:
        cp = self.folder / "checkpoint.json"
        if cp.is_file():
            self.offsets = {int(p): int(o) for p, o in json.loads(cp.read_text())["offsets"].items()}
        fg = self.folder / "forgotten.txt"
        if fg.is_file():
            self.forgotten = {line.strip() for line in fg.read_text().splitlines() if line.strip()}
        return self

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _write(self.folder / "checkpoint.json", json.dumps({"offsets": {str(p): o for p, o in self.offsets.items()},
                                                            "saved_at": time.time()}))
        _write(self.folder / "forgotten.txt", "".join(f"{t}\n" for t in sorted(self.forgotten)))


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class TrainingIds:
    """The id a shopper has in training (their pseudonym when a key is set) and their forget token."""

    def __init__(self, settings: Settings) -> None:
        self._pseudo = None
        if settings.pseudonymise_key:
            from stream.core.pseudonyms import Pseudonymiser

            self._pseudo = Pseudonymiser(str(settings.pseudonymise_key))

    def user(self, raw: str) -> str:
        return self._pseudo.user_id(raw) if self._pseudo is not None else raw

    def token(self, raw: str, *, pseudonymous: bool = False) -> str:
        """``raw``'s forget token; ``pseudonymous``: ``raw`` is already the pseudonym (a forget
        request sent with pseudonymisation on)."""
        uid = raw if pseudonymous else self.user(raw)
        return uid if self._pseudo is not None else "sha256-" + hashlib.sha256(uid.encode("utf-8")).hexdigest()


# -- reading the window ------------------------------------------------------------------------------
@dataclass
class Window:
    events: list[dict] = field(default_factory=list)      # valid events, user ids as training sees them
    forgotten_tokens: set[str] = field(default_factory=set)
    new_messages: int = 0                                 # since the checkpoint
    read: int = 0                                         # messages read inside the window
    invalid: int = 0
    ends: dict[int, int] = field(default_factory=dict)


def window_starts(begin: dict[int, int], end: dict[int, int], window_events: int) -> dict[int, int]:
    """Per partition, where the newest ``window_events`` messages start (shared by partition size)."""
    total = sum(end[p] - begin[p] for p in end)
    if total <= window_events:
        return dict(begin)
    return {p: max(begin[p], end[p] - math.ceil(window_events * (end[p] - begin[p]) / total)) for p in end}


async def read_window(settings: Settings, state: LearnState, ids: TrainingIds, *, timeout_s: float = 60.0) -> Window:
    """The window's valid events and every forget request since the checkpoint (all of them on a first pass)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from stream.core.control import FORGET, control_verb, key_is_pseudonym
    from stream.core.schema import EventValidator, parse_ts
    from stream.errors import BrokerError, InvalidEvent
    from stream.ops.model_log import drain, partitions_of

    validator = EventValidator(max_bytes=settings.max_event_bytes, min_ts=parse_ts(settings.min_event_time),
                               max_future_skew_s=settings.max_future_skew_s)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest", **settings.kafka_client_options())
    w = Window()
    try:
        await consumer.start()
        parts = await partitions_of(consumer, settings.events_topic)
        consumer.assign(parts)
        begin = {tp.partition: o for tp, o in (await consumer.beginning_offsets(parts)).items()}
        end = {tp.partition: o for tp, o in (await consumer.end_offsets(parts)).items()}
        w.ends = dict(end)
        starts = window_starts(begin, end, settings.learn_window_events)
        if settings.learn_window_s > 0:
            since = int((time.time() - settings.learn_window_s) * 1000)
            found = await consumer.offsets_for_times({tp: since for tp in parts})
            starts = {tp.partition: max(starts[tp.partition], found[tp].offset if found.get(tp) else end[tp.partition])
                      for tp in parts}
        # forget requests are looked for from the checkpoint on (a first pass: from the beginning)
        scan = {p: min(starts[p], max(begin[p], state.offsets.get(p, begin[p]))) for p in end}
        for tp in parts:
            consumer.seek(tp, scan[tp.partition])

        def on_message(tp, m) -> None:
            verb = control_verb(m.headers)
            if verb is not None:
                if verb == FORGET and m.key:
                    w.forgotten_tokens.add(ids.token(m.key.decode("utf-8", "replace"),
                                                     pseudonymous=key_is_pseudonym(m.headers)))
                return
            if m.offset < starts[tp.partition]:
                return
            w.read += 1
            try:
                ev = validator.parse(m.value, m.key).to_dict()
            except InvalidEvent:
                w.invalid += 1
                return
            raw = ev["user_id"]
            ev["_token"], ev["user_id"] = ids.token(raw), ids.user(raw)
            w.events.append(ev)

        nxt = await drain(consumer, {tp: end[tp.partition] for tp in parts if end[tp.partition] > scan[tp.partition]},
                          on_message, timeout_s=timeout_s)
        for tp, o in nxt.items():
            w.ends[tp.partition] = max(w.ends[tp.partition], o)
        w.new_messages = sum(w.ends[p] - max(begin[p], state.offsets.get(p, begin[p])) for p in w.ends)
    except KafkaError as exc:
        raise BrokerError(f"cannot read {settings.events_topic} on {settings.broker}: {exc}") from exc
    finally:
        await consumer.stop()
    return w


# -- one pass ---------------------------------------------------------------------------------------
def registry_path(settings: Settings, registry: Path | None) -> Path:
    return Path(registry) if registry else Path(settings.data_dir) / "registry"


def serving_artifact(settings: Settings, default) -> Path | None:
    """What serves now: the models topic's default (fetched and verified when it is in the
    registry), else the configured (or shipped) encoder."""
    if default is not None and default.artifact:
        from stream.ops.fleet import local_artifact

        return local_artifact(settings, default)
    from stream.encoders import session_encoder_path

    return session_encoder_path(settings)


async def learn_once(settings: Settings, *, registry: Path | None = None, catalog: Path | None = None,
                     threads: int = 1, progress: bool = False) -> dict:
    """One pass: read the window, train warm-started, compare offline, maybe announce a candidate.

    Returns a summary: events read, shoppers, forgotten ones excluded, the offline figures of both
    models on the held-out events, and the version announced (``announced``) or why not
    (``reason``)."""
    from stream.ops.model_log import announce, read_models
    from stream.ops.models import ModelRecord, now_iso, serving

    t0 = time.perf_counter()
    state = LearnState(Path(settings.data_dir) / "learn").load()
    ids = TrainingIds(settings)
    models = await read_models(settings)
    default, candidate = serving(models)
    summary: dict = {"announced": None, "serving": default.version if default else None}
    if candidate is not None:
        summary["reason"] = f"candidate {candidate.version} is still on trial"
        return _done(summary, t0)

    w = await read_window(settings, state, ids)
    state.forgotten |= w.forgotten_tokens
    kept = [e for e in w.events if e.pop("_token") not in state.forgotten]
    summary.update(new_messages=w.new_messages, events_read=w.read, invalid=w.invalid,
                   forgotten_total=len(state.forgotten), forgotten_new=len(w.forgotten_tokens),
                   excluded_events=len(w.events) - len(kept),
                   excluded_users=len({e["user_id"] for e in w.events} - {e["user_id"] for e in kept}))
    if w.new_messages == 0:
        summary["reason"] = "no new events since the last pass"
        state.save()
        return _done(summary, t0)
    try:
        summary.update(_train_and_compare(settings, kept, default, registry_path(settings, registry), catalog,
                                          threads=threads, progress=progress))
    except BaseException:
        state.save()          # forgotten shoppers are kept whatever happened; the offsets stay for a retry
        raise
    state.offsets = dict(w.ends)
    state.save()
    if summary.get("artifact"):
        where = {"artifact": summary["artifact"], "index": summary["index"]}
        if settings.registry:       # every host fetches it by content address and checks its sha256
            from stream.ops.fleet import publish_model

            where = publish_model(settings, Path(summary["artifact"]), Path(summary["index"]), summary["version"])
            summary.update(where)
        record = ModelRecord(version=summary["version"], state="candidate", **where,
                             share=settings.candidate_share, offline=summary["offline"],
                             reason=summary["reason"], decided_at=now_iso())
        await announce(settings, record)
        summary["announced"] = record.version
    return _done(summary, t0)


def _done(summary: dict, t0: float) -> dict:
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("learn: %s", {k: v for k, v in summary.items() if k != "offline"})
    return summary


def _catalog(catalog: Path | None):
    from index import default_catalog_path, load_catalog

    return load_catalog(catalog or default_catalog_path())


def _train_and_compare(settings: Settings, events: list[dict], default, registry: Path, catalog: Path | None, *,
                       threads: int, progress: bool) -> dict:
    import torch

    from engines.session_model import (
        load_session_encoder,
        read_manifest,
        save_artifact,
    )
    from learn.data import events_to_interactions
    from learn.evaluate import Pooling, TrainedEncoder, evaluate
    from learn.recipes import continue_from
    from learn.split import leave_one_out
    from learn.train import TrainConfig, config_dict, train
    from stream.encoders import text_vectors_for

    torch.set_num_threads(threads)
    products = _catalog(catalog)
    data = events_to_interactions(events, [p.id for p in products], [p.text for p in products], name="events-window")
    out: dict = {"users": len(data.sequences), "events_used": int(sum(len(s) for s in data.sequences))}
    split = leave_one_out(data)
    out["held_out_users"] = len(split.test)
    evaluable = evaluable_targets(split.test, data.n_items)
    if evaluable == 0:
        # both models would score exactly 0.0 on no target: that is no comparison
        out["reason"] = ("nothing to evaluate: no shopper in the window has a held-out product new to them "
                         f"({len(split.test)} held out, 3+ distinct products needed)")
        return out
    if len(split.test) < settings.learn_min_users:
        out["reason"] = (f"{len(split.test)} shoppers with 3+ distinct products in the window, fewer than "
                         f"learn_min_users={settings.learn_min_users}")
        return out
    vecs, text_version = text_vectors_for(data, settings, progress=progress)
    base = serving_artifact(settings, default)
    # the serving model's architecture and chosen recipe; an id model's rows follow the products
    cfg, init = continue_from(base, data, TrainConfig(epochs=settings.learn_epochs, patience=settings.learn_epochs,
                                                      lr=1e-3, max_minutes=settings.learn_max_minutes, threads=threads,
                                                      seed=0, dp_epsilon=settings.dp_epsilon or None,
                                                      dp_delta=settings.dp_delta))
    result = train(data, vecs, split, cfg, init=init, progress=progress)
    staging = registry / f".staging-{int(time.time() * 1000)}"
    record = {"trained_on": data.summary(), "continued_from": str(base) if base else None,
              "train_config": config_dict(cfg), "history": result.history, "best_epoch": result.best_epoch,
              "valid": result.best_valid, "train_seconds": round(result.seconds, 1), "privacy": result.privacy}
    save_artifact(result.model, staging / "model", text_model_version=text_version, record=record,
                  kinds_seen=data.kinds_seen(), uses_time=data.has_clock(), item_ids=data.item_ids)
    n = data.n_items
    if base is not None:
        serving_method = TrainedEncoder(load_session_encoder(base, backend="torch", precision="fp32"), vecs, n,
                                        name="serving")
    else:       # the live pipeline's pooling encoder over title vectors
        serving_method = Pooling(vecs, n)
        serving_method.name = "serving"
    new_method = TrainedEncoder(load_session_encoder(staging / "model", backend="torch", precision="fp32"), vecs, n,
                                name="new")
    report = evaluate([serving_method, new_method], data, split.test, progress=False)
    keys = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")
    offline = {**{k: round(report["new"][k], 5) for k in keys},
               **{f"serving_{k}": round(report["serving"][k], 5) for k in keys},
               "held_out_users": len(split.test), "evaluable_users": evaluable,
               "fold": "newest event naming a product new to the shopper",
               "serving_version": default.version if default else (read_manifest(base)["model_version"] if base else "pooling"),
               "margin": settings.learn_margin, "epochs": len(result.history)}
    if result.privacy:
        offline["dp_epsilon"], offline["dp_delta"] = result.privacy["epsilon"], result.privacy["delta"]
    out["offline"] = offline
    gain = offline["ndcg@10"] - offline["serving_ndcg@10"]
    if gain < settings.learn_margin:
        shutil.rmtree(staging, ignore_errors=True)
        out["reason"] = (f"NDCG@10 {offline['ndcg@10']:.4f} vs serving {offline['serving_ndcg@10']:.4f}: "
                         f"{gain:+.4f}, below the margin {settings.learn_margin}")
        return out
    version = read_manifest(staging / "model")["model_version"]
    final = (registry / version).resolve()     # workers elsewhere read the path from the models topic
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    _export(final / "model")
    index = _build_index(settings, final / "model", final / "index", products, data, vecs, text_version)
    out.update(version=version, artifact=str(final / "model"), index=str(index),
               reason=(f"NDCG@10 {offline['ndcg@10']:.4f} vs serving {offline['serving_ndcg@10']:.4f}: "
                       f"{gain:+.4f}, at least the margin {settings.learn_margin}"))
    return out


def evaluable_targets(fold, n_items: int) -> int:
    """How many of the fold's targets can be ranked at all: those not in the shopper's input
    history (which the full-ranking protocol removes from the ranking). :func:`learn.split.leave_one_out`
    holds out only products new to the shopper, so this is the fold's size; it is counted so that a
    fold of unrankable targets is reported as nothing to evaluate, never as two scores of 0.0."""
    from learn.evaluate import history_items

    return int(sum(int(t) not in set(history_items(s, n_items).tolist()) for s, t in zip(fold.inputs, fold.targets)))


def _export(folder: Path) -> None:
    """ONNX fp32 graphs (the worker's onnxruntime backend); no parity failure is tolerated."""
    try:
        from learn.export import export_session_encoder

        export_session_encoder(folder, precisions=("fp32",))
    except ImportError as exc:          # the onnx extra is missing: the worker runs the PyTorch weights
        log.warning("learn: no ONNX export (%s); the artifact serves on PyTorch", exc)


def _build_index(settings: Settings, artifact: Path, out: Path, products, data, vecs, text_version: str) -> Path:
    """The catalogue's index snapshot in the new model's item space, from the title vectors already
    computed for training (the worker checks the snapshot's model version against its encoders)."""
    import numpy as np

    from engines.session_model import load_session_encoder
    from index import build_index, save_snapshot

    enc = load_session_encoder(artifact, backend="torch", precision="fp32")
    by_text = {t: i for i, t in enumerate(data.texts[:data.n_items])}

    def encode(texts, ids=None):
        rows = [by_text.get(t) for t in texts]
        if any(r is None for r in rows):
            from stream.encoders import load_text_encoder

            text = load_text_encoder(settings)
            try:
                tv = np.asarray(text.encode(list(texts)), dtype=np.float32)
            finally:
                text.close()
        else:
            tv = vecs[rows]
        return enc.item_vectors(tv, item_ids=ids)      # id vectors of the products it was trained on

    encode.takes_ids = True
    from stream.encoders import product_space_version

    model_version = product_space_version(text_version, enc)
    index = build_index(products, encode, dim=enc.dim, model_version=model_version, kind=settings.index_kind)
    return save_snapshot(index, out, source="shopstream learn")

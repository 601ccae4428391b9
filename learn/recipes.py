"""Choose how to train on the validation fold: a few recipes, each trained within a share of a CPU
budget, the best validation NDCG@10 wins.

A recipe is a set of :class:`learn.train.TrainConfig` fields: with or without product id vectors
(next to the title vectors), with or without the item tower, dropout, learning rate and schedule,
epochs. Each candidate is trained on the training sequences and early-stopped on the validation
fold (:func:`learn.train.train`); the test fold is never read here, so the test figure reported
afterwards is read once, for the model chosen. ``shopstream train`` without recipe flags and
``shopstream learn`` (:func:`learning_recipe`) use this.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from learn.train import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    name: str
    fields: dict = field(default_factory=dict)      # TrainConfig fields this recipe sets

    def config(self, base: TrainConfig, **override) -> TrainConfig:
        return dataclasses.replace(base, **{**self.fields, **override})

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.fields.items())


#: The candidates, cheapest first: title-only with the item tower (the architecture that serves a
#: new shop's products from their titles alone), and product id vectors next to the titles: with
#: strong regularisation (dropout 0.5, lr 3e-3 annealed over 6 epochs), with the shopper's history
#: left out of the softmax (what wins on Amazon Beauty's validation fold), a milder one, and one
#: with the item tower as well. Every recipe early-stops on validation.
RECIPES: tuple[Recipe, ...] = (
    Recipe("titles", {"item_tower": True, "id_embeddings": False, "dropout": 0.2, "lr": 1e-3,
                      "lr_schedule": "constant", "epochs": 40, "patience": 4}),
    Recipe("ids+titles-6", {"item_tower": False, "id_embeddings": True, "dropout": 0.5, "lr": 3e-3,
                            "lr_schedule": "cosine", "epochs": 6, "patience": 6}),
    Recipe("ids+titles-excl", {"item_tower": False, "id_embeddings": True, "exclude_history": True,
                               "dropout": 0.3, "lr": 1e-3, "lr_schedule": "cosine", "epochs": 12, "patience": 2}),
    Recipe("ids+titles-mild", {"item_tower": False, "id_embeddings": True, "dropout": 0.3, "lr": 1e-3,
                               "lr_schedule": "cosine", "epochs": 12, "patience": 12}),
    Recipe("ids+tower", {"item_tower": True, "id_embeddings": True, "dropout": 0.3, "lr": 1e-3,
                         "lr_schedule": "cosine", "epochs": 12, "patience": 12}),
)

#: Fields a recipe may set: what ``shopstream train``'s recipe flags override.
RECIPE_FIELDS = ("item_tower", "id_embeddings", "dropout", "lr", "lr_schedule", "epochs", "patience",
                 "exclude_history")


@dataclass
class Choice:
    recipe: Recipe
    result: TrainResult                             # the chosen candidate's trained model
    trials: list[dict]                              # every candidate: name, fields, validation figures, seconds
    budget_minutes: float

    def why(self) -> str:
        ranked = sorted((t for t in self.trials if t.get("ndcg@10") is not None), key=lambda t: -t["ndcg@10"])
        best = ranked[0]
        text = f"highest validation NDCG@10 {best['ndcg@10']:.4f}"
        if len(ranked) > 1:
            text += f" (next: {ranked[1]['recipe']} {ranked[1]['ndcg@10']:.4f})"
        return text

    def record(self) -> dict:
        """What a manifest keeps of the choice."""
        return {"chosen": self.recipe.name, "fields": self.recipe.fields, "fold": "valid", "why": self.why(),
                "budget_minutes": self.budget_minutes, "trials": self.trials}


def choose_recipe(data, text_vecs, split, base: TrainConfig, *, budget_minutes: float,
                  recipes: tuple[Recipe, ...] = RECIPES, progress: bool = False, echo=log.info) -> Choice:
    """Train each recipe within ``budget_minutes / len(recipes)`` CPU minutes (this process, all
    ``base.threads`` threads: the same share of work on an idle or a loaded machine) and keep the
    one with the best validation NDCG@10 (the first on a tie). Only ``split.train`` and ``split.valid`` are read."""
    if budget_minutes <= 0:
        raise ValueError("the recipe budget must be positive")
    share = budget_minutes / len(recipes)
    trials, best, best_result = [], None, None
    for recipe in recipes:
        cfg = recipe.config(base, max_cpu_minutes=share)
        t0, c0 = time.perf_counter(), time.process_time()
        result = train(data, text_vecs, split, cfg, progress=progress)
        trial = {"recipe": recipe.name, "fields": recipe.fields, "epochs_run": len(result.history),
                 "best_epoch": result.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
                 "cpu_seconds": round(time.process_time() - c0, 1),
                 "ndcg@10": round(float(result.best_valid["ndcg@10"]), 5) if result.best_valid else None,
                 "recall@10": round(float(result.best_valid["recall@10"]), 5) if result.best_valid else None}
        trials.append(trial)
        echo(f"  {recipe.name:<16} valid NDCG@10 {trial['ndcg@10']:.4f} Recall@10 {trial['recall@10']:.4f} "
             f"({trial['epochs_run']} epochs, best {trial['best_epoch']}, {trial['cpu_seconds']:.0f} CPU s, "
             f"{trial['seconds']:.0f} s)")
        if trial["ndcg@10"] is not None and (best is None or trial["ndcg@10"] > best[1]):
            best, best_result = (recipe, trial["ndcg@10"]), result
    if best is None:
        raise ValueError("no recipe reached a validation")
    return Choice(best[0], best_result, trials, budget_minutes)


def learning_recipe(manifest: dict | None) -> dict:
    """The TrainConfig fields ``shopstream learn`` continues a serving model with: the recipe
    ``shopstream train`` chose for it on validation, as its manifest records; nothing for a model
    whose recipe was given or not recorded (learn's own schedule then)."""
    if not manifest or (manifest.get("recipe") or {}).get("fold") != "valid":
        return {}          # not chosen by the search: learn's own schedule
    cfg = manifest.get("train_config") or {}
    return {k: cfg[k] for k in ("dropout", "lr", "lr_schedule", "weight_decay", "exclude_history") if k in cfg}


def continue_from(artifact, data, base: TrainConfig) -> tuple[TrainConfig, object | None]:
    """The configuration and starting weights ``shopstream learn`` trains with on ``data``: ``base``
    (learn's schedule) with the serving model's architecture and the recipe ``shopstream train``
    chose for it (:func:`learning_recipe`). A model with id vectors continues as one, its id rows
    renumbered to ``data``'s products: a product it knew keeps its vector, a new one starts at zero
    (its title alone). No artifact: ``base`` from scratch."""
    if artifact is None:
        return base, None
    import torch

    from engines.session_model import ITEM_IDS, load_torch_model, read_manifest
    from engines.session_network import SessionTransformer

    old = load_torch_model(artifact)
    arch = {k: v for k, v in old.cfg.to_dict().items() if k not in ("text_dim", "item_ids")}
    cfg = dataclasses.replace(base, **{**arch, **learning_recipe(read_manifest(artifact)),
                                       "id_embeddings": bool(old.cfg.item_ids)})
    if not old.cfg.item_ids:
        return cfg, old
    model = SessionTransformer(cfg.model_config(old.cfg.text_dim, data.n_items))
    state = old.state_dict()
    row = {pid: i for i, pid in enumerate((Path(artifact) / ITEM_IDS).read_text(encoding="utf-8").splitlines())}
    pairs = [(j, row[pid]) for j, pid in enumerate(data.item_ids) if pid in row]
    weight = torch.zeros(data.n_items, old.cfg.text_dim)
    if pairs:
        new, was = (list(x) for x in zip(*pairs))
        weight[new] = state["id_emb.weight"][was]
    state["id_emb.weight"] = weight
    model.load_state_dict(state)
    log.info("learn continues %s with id vectors: %d of %d products known to it", artifact, len(pairs), data.n_items)
    return cfg, model

"""Choose how to train on the validation fold: a few recipes, each trained within a share of a time
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
#: new shop's products from their titles alone), and product id vectors next to the titles with the
#: regularisation that wins on Amazon Beauty (dropout 0.5, lr 3e-3 on a cosine schedule) over two
#: schedule lengths, and a milder one. Every recipe early-stops on validation.
RECIPES: tuple[Recipe, ...] = (
    Recipe("titles", {"item_tower": True, "id_embeddings": False, "dropout": 0.2, "lr": 1e-3,
                      "lr_schedule": "constant", "epochs": 40, "patience": 4}),
    Recipe("ids+titles-6", {"item_tower": False, "id_embeddings": True, "dropout": 0.5, "lr": 3e-3,
                            "lr_schedule": "cosine", "epochs": 6, "patience": 6}),
    Recipe("ids+titles-12", {"item_tower": False, "id_embeddings": True, "dropout": 0.5, "lr": 3e-3,
                             "lr_schedule": "cosine", "epochs": 12, "patience": 12}),
    Recipe("ids+titles-mild", {"item_tower": False, "id_embeddings": True, "dropout": 0.3, "lr": 1e-3,
                               "lr_schedule": "cosine", "epochs": 12, "patience": 12}),
    Recipe("ids+tower", {"item_tower": True, "id_embeddings": True, "dropout": 0.3, "lr": 1e-3,
                         "lr_schedule": "cosine", "epochs": 12, "patience": 12}),
)

#: Fields a recipe may set: what ``shopstream train``'s recipe flags override.
RECIPE_FIELDS = ("item_tower", "id_embeddings", "dropout", "lr", "lr_schedule", "epochs", "patience")


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
    """Train each recipe within ``budget_minutes / len(recipes)`` (wall clock, on ``base.threads``
    threads) and keep the one with the best validation NDCG@10 (the first on a tie).

    Only ``split.train`` and ``split.valid`` are read."""
    if budget_minutes <= 0:
        raise ValueError("the recipe budget must be positive")
    share = budget_minutes / len(recipes)
    trials, best, best_result = [], None, None
    for recipe in recipes:
        cfg = recipe.config(base, max_minutes=share)
        t0, c0 = time.perf_counter(), time.process_time()
        result = train(data, text_vecs, split, cfg, progress=progress)
        trial = {"recipe": recipe.name, "fields": recipe.fields, "epochs_run": len(result.history),
                 "best_epoch": result.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
                 "cpu_seconds": round(time.process_time() - c0, 1),
                 "ndcg@10": round(float(result.best_valid["ndcg@10"]), 5) if result.best_valid else None,
                 "recall@10": round(float(result.best_valid["recall@10"]), 5) if result.best_valid else None}
        trials.append(trial)
        echo(f"  {recipe.name:<16} valid NDCG@10 {trial['ndcg@10']:.4f} Recall@10 {trial['recall@10']:.4f} "
             f"({trial['epochs_run']} epochs, best {trial['best_epoch']}, {trial['seconds']:.0f}s)")
        if trial["ndcg@10"] is not None and (best is None or trial["ndcg@10"] > best[1]):
            best, best_result = (recipe, trial["ndcg@10"]), result
    if best is None:
        raise ValueError("no recipe reached a validation")
    return Choice(best[0], best_result, trials, budget_minutes)


def learning_recipe(manifest: dict | None) -> dict:
    """The TrainConfig fields ``shopstream learn`` continues a serving model with: the recipe
    ``shopstream train`` chose (or was given) for it, as its manifest records; nothing for a model
    without a record (learn's own defaults)."""
    if not manifest:
        return {}
    cfg = manifest.get("train_config") or {}
    return {k: cfg[k] for k in ("dropout", "lr", "lr_schedule", "weight_decay") if k in cfg}

"""``shopstream train``: learn a session encoder from logged events and write an engine artifact.

Sources: a data set (--dataset), the generic format (--items/--sequences), a JSONL event log
(--events with --items), or the events topic itself (--from-topic: every event on it now, read
from the beginning, validated with the published schema; products from --items or the catalogue).
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import click

from stream.cli.evaluate import dataset_options, text_vectors_for
from stream.cli.options import kafka_options, path_option

log = logging.getLogger(__name__)


async def read_events_topic(settings, *, max_events: int = 0) -> list[dict]:
    """Every valid event on the events topic up to its current end (the newest ``max_events`` when
    set), read like ``shopstream learn`` does: user ids as pseudonyms when a key is set, and every
    shopper forgotten (forget requests on the topic, and those the learn state already holds) left out."""
    from stream.ops.continuous_training import LearnState, TrainingIds, read_window

    state = LearnState(Path(settings.data_dir) / "learn").load()
    window = await read_window(settings.replace(learn_window_events=max_events or 2**62), state,
                               TrainingIds(settings))
    forgotten = state.forgotten | window.forgotten_tokens
    events = [e for e in window.events if e.pop("_token") not in forgotten]
    log.info("read %d events from %s (%d invalid skipped, %d of forgotten shoppers left out)", len(events),
             settings.events_topic, window.invalid, len(window.events) - len(events))
    return events


def register(cli: click.Group) -> None:
    @cli.command("train")
    @dataset_options
    @path_option("--out", required=True, help="Artifact folder to write (weights, manifest, ONNX graphs).")
    @click.option("--epochs", type=click.IntRange(min=1), default=None,
                  help="Epochs (a recipe flag: 40 when another is given; else the recipe search picks).")
    @click.option("--patience", type=click.IntRange(min=1), default=None,
                  help="Stop after this many validations without a better NDCG@10 (a recipe flag; 4).")
    @click.option("--eval-every", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Validate (full ranking) every this many epochs, and after the last.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
    @click.option("--lr", type=float, default=None, help="Learning rate (a recipe flag; 1e-3).")
    @click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default=None,
                  help="cosine: decay the learning rate to 0 over --epochs (a recipe flag; constant).")
    @click.option("--d-model", type=click.IntRange(min=8), default=128, show_default=True)
    @click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
    @click.option("--heads", type=click.IntRange(min=1), default=2, show_default=True)
    @click.option("--dropout", type=float, default=None, help="Dropout (a recipe flag; 0.2).")
    @click.option("--max-len", type=click.IntRange(min=2), default=50, show_default=True)
    @click.option("--negatives", type=click.Choice(["full", "inbatch"]), default="full", show_default=True,
                  help="Softmax over every product, or over the batch's targets.")
    @click.option("--hard-negatives", type=click.IntRange(min=0), default=0, show_default=True,
                  help="With --negatives inbatch: per target, products with the nearest titles.")
    @click.option("--item-tower/--no-item-tower", default=None,
                  help="Learn product vectors from title vectors (a recipe flag; on).")
    @click.option("--id-embeddings/--no-id-embeddings", default=None,
                  help="Also learn a vector per training product, added to its title's (new products: title "
                       "alone; a recipe flag; off).")
    @click.option("--exclude-history/--no-exclude-history", default=None,
                  help="Leave each shopper's history out of the softmax, as serving leaves it out of the "
                       "ranking (a recipe flag; off).")
    @click.option("--refit/--no-refit", default=True, show_default=True,
                  help="Once validation has chosen the recipe and its epochs, train it again from scratch on "
                       "every event before the test targets (the validation targets, the newest, too) and "
                       "ship that.")
    @click.option("--budget-minutes", type=click.FloatRange(min=0.0, min_open=True), default=None,
                  help="Without recipe flags: CPU minutes (all --threads together) to train every recipe of "
                       "the search (learn.recipes) and keep the best on the validation fold (default "
                       "SHOPSTREAM_TRAIN_BUDGET_MINUTES, 30).")
    @click.option("--weight-decay", type=float, default=0.0, show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
    @click.option("--device", default="cpu", show_default=True, help="torch device: cpu or cuda.")
    @click.option("--max-minutes", type=float, default=0.0, help="Stop training after this long (0: no limit).")
    @click.option("--export/--no-export", default=True, show_default=True,
                  help="Write ONNX fp32/fp16/int8 graphs and check parity (needs the onnx extra).")
    @click.option("--backend", "encoder_backend", default=None, help="Text encoder backend (default auto).")
    @click.option("--init", "init", type=click.Path(path_type=Path), default=None,
                  help="Continue from this artifact's weights (same architecture).")
    @click.option("--dp-epsilon", type=click.FloatRange(min=0.0, min_open=True), default=None,
                  help="Train with DP-SGD (opacus, the privacy extra) to this epsilon over --epochs; "
                       "the manifest records what was spent. Default: SHOPSTREAM_DP_EPSILON, 0/unset = off.")
    @click.option("--dp-delta", type=float, default=None, help="DP delta (default SHOPSTREAM_DP_DELTA, 1e-5).")
    @click.option("--dp-max-grad-norm", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True,
                  help="Per-shopper gradient clip under DP.")
    def train_cmd(data, out, epochs, patience, eval_every, batch_size, lr, lr_schedule, d_model, layers, heads, dropout,
                  max_len, negatives, hard_negatives, item_tower, id_embeddings, exclude_history, refit, budget_minutes,
                  weight_decay, seed, threads, device, max_minutes, export, encoder_backend, init, dp_epsilon, dp_delta,
                  dp_max_grad_norm) -> None:
        """Train the session encoder on next-product prediction (contrastive, early stopping).

        Without recipe flags (--epochs, --patience, --lr, --lr-schedule, --dropout, --item-tower,
        --id-embeddings, --exclude-history) the recipe is chosen on the validation fold within
        --budget-minutes."""
        from stream.settings import Settings

        settings = Settings.from_env(encoder_backend=encoder_backend, dp_epsilon=dp_epsilon, dp_delta=dp_delta,
                                     train_budget_minutes=budget_minutes)
        given = {k: v for k, v in dict(epochs=epochs, patience=patience, lr=lr, lr_schedule=lr_schedule,
                                       dropout=dropout, item_tower=item_tower, id_embeddings=id_embeddings,
                                       exclude_history=exclude_history).items()
                 if v is not None}
        search = not given and init is None and not settings.dp_epsilon
        _train(data, settings, out, export=export, d_model=d_model, layers=layers, heads=heads,
               max_len=max_len, weight_decay=weight_decay, batch_size=batch_size,
               eval_every=eval_every, negatives=negatives, hard_negatives=hard_negatives, seed=seed,
               threads=threads, device=device, max_minutes=max_minutes, init=init, refit=refit,
               dp_epsilon=settings.dp_epsilon or None, dp_delta=settings.dp_delta, dp_max_grad_norm=dp_max_grad_norm,
               recipe_budget=settings.train_budget_minutes if search else None, **given)

    @cli.command("train-from-topic")
    @kafka_options
    @path_option("--items", default=None, help="Items file (default: the catalogue the index is built from).")
    @path_option("--out", required=True)
    @click.option("--max-events", type=click.IntRange(min=0), default=0, help="0: all of them.")
    @click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
    @click.option("--export/--no-export", default=True, show_default=True)
    def train_topic_cmd(settings, items, out, max_events, epochs, seed, threads, export) -> None:
        """Train on the events the system already received: the events topic from its beginning."""
        from learn.data import events_to_interactions, read_items

        events = asyncio.run(read_events_topic(settings, max_events=max_events))
        if items:
            ids, texts = read_items(items)
        else:
            from index import default_catalog_path, load_catalog

            products = load_catalog(default_catalog_path())
            ids, texts = [p.id for p in products], [p.text for p in products]
        data = events_to_interactions(events, ids, texts, name=settings.events_topic)
        _train(data, settings, out, export=export, epochs=epochs, seed=seed, threads=threads)


def _train(data, settings, out: Path, *, export: bool, init: Path | None = None,
           recipe_budget: float | None = None, refit: bool = False, **config) -> None:
    """Train (the recipe given, or with ``recipe_budget`` the best of :data:`learn.recipes.RECIPES`
    on the validation fold), save, export, and read the test fold once at the end."""
    import torch

    from engines.session_model import save_artifact
    from learn.report import run_evaluation, table
    from learn.split import leave_one_out
    from learn.train import TrainConfig, config_dict, train

    torch.set_num_threads(config.get("threads", 2))
    cfg = TrainConfig(**config)
    try:
        cfg.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    s = data.summary()
    click.echo(f"{s['name']}: {s['users']} shoppers, {s['items']} products, {s['events']} events")
    vecs, text_version = text_vectors_for(data, settings)
    split = leave_one_out(data)
    t0 = time.perf_counter()
    start = None
    if init is not None:
        from engines.session_model import load_torch_model

        start = load_torch_model(init)
    choice = None
    if recipe_budget is not None:
        from learn.recipes import choose_recipe

        click.echo(f"choosing a recipe on the validation fold ({recipe_budget:g} CPU minutes for all of them, "
                   f"{cfg.threads} thread(s); give any recipe flag to skip):")
        choice = choose_recipe(data, vecs, split, cfg, budget_minutes=recipe_budget, echo=click.echo)
        result, cfg = choice.result, choice.result.config
        click.echo(f"recipe: {choice.recipe.name} ({choice.recipe.describe()}): {choice.why()}")
    else:
        result = train(data, vecs, split, cfg, init=start)
    click.echo(f"trained {len(result.history)} epochs in {result.seconds:.0f}s; best epoch {result.best_epoch}: "
               f"valid NDCG@10 {result.best_valid['ndcg@10']:.4f} Recall@10 {result.best_valid['recall@10']:.4f}")
    refit_record = None
    if refit and cfg.dp_epsilon is not None:
        click.echo("no refit under DP-SGD (it would spend the privacy budget a second time)")
    elif refit:
        from learn.train import refit as refit_model

        chosen = result
        result = refit_model(data, vecs, split, chosen, init=start, progress=False)
        refit_record = {"on": "every event before the test targets", "epochs": chosen.best_epoch,
                        "seconds": round(result.seconds, 1), "chosen_history": chosen.history}
        click.echo(f"refit on every event before the test targets: {chosen.best_epoch} epochs in "
                   f"{result.seconds:.0f}s (the validation figures above are the chosen run's)")
    if result.privacy:
        click.echo(f"DP-SGD: epsilon {result.privacy['epsilon']:.3f} spent (delta {result.privacy['delta']:g}, "
                   f"noise multiplier {result.privacy['noise_multiplier']}, {result.privacy['steps']} steps)")
    record = {"trained_on": s, "continued_from": str(init) if init else None, "train_config": config_dict(cfg), "history": result.history,
              "best_epoch": result.best_epoch, "valid": result.best_valid, "train_seconds": round(result.seconds, 1),
              "privacy": result.privacy, "recipe": choice.record() if choice else {"chosen": "given"},
              "refit": refit_record}
    save_artifact(result.model, out, text_model_version=text_version, record=record,
                  kinds_seen=data.kinds_seen(), uses_time=data.has_clock(), item_ids=data.item_ids)
    if export:
        from learn.export import export_session_encoder

        par = export_session_encoder(out)
        click.echo("ONNX parity against PyTorch: " + ", ".join(
            f"{p} max|diff| {v['max_abs_diff']:.1e}" for p, v in par.items()))
        from engines.session_model import precision_allowed, read_manifest
        from learn.export import ranking_check

        check = ranking_check(out, data, vecs, threads=cfg.threads)
        click.echo(("ranking check, validation fold (trained on by the refit: compares precisions only): "
                    if refit_record else "ranking check, validation fold: ") + ", ".join(
            f"{p} NDCG@10 {check[p]['ndcg@10']:.4f} Recall@10 {check[p]['recall@10']:.4f}"
            for p in ("fp32", "fp16", "int8") if p in check))
        manifest = read_manifest(out)
        for p in ("fp16", "int8"):
            click.echo(f"  {p}: " + precision_allowed(manifest, p)[1])
    report = run_evaluation(data, vecs, models=[out], threads=cfg.threads, progress=False)
    click.echo(table(report))
    click.echo(f"artifact: {out} ({time.perf_counter() - t0:.0f}s)")

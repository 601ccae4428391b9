"""``shopstream eval``: offline quality of the recommender on logged interactions (leave-one-out,
full ranking), with baselines, in one JSON report and one plot; ``shopstream dataset convert``
writes the generic format."""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable

import click

from stream.cli.options import path_option
from stream.encoders import text_vectors_for  # noqa: F401 - where it lived before stream.encoders

log = logging.getLogger(__name__)

DATASETS = ("beauty", "online-retail", "online-retail-sample")


def dataset_options(fn: Callable) -> Callable:
    """--dataset or --items with --sequences / --events: the command receives ``data``."""

    @click.option("--dataset", type=click.Choice(DATASETS), default=None,
                  help="A data set from ../shared/data, converted on the fly (online-retail-sample: the "
                       "slice shipped in stream/data).")
    @path_option("--items", default=None, help="Items file: id<TAB>text per line.")
    @path_option("--sequences", default=None, help="Sequences file: user<TAB>item ids oldest first.")
    @path_option("--events", default=None, help="JSONL event log in the events-topic schema (with --items).")
    @click.option("--shared-data", type=click.Path(path_type=Path), default=None, hidden=True)
    @functools.wraps(fn)
    def wrapper(*args: Any, dataset, items, sequences, events, shared_data, **kwargs: Any):
        return fn(*args, data=load_data(dataset, items, sequences, events, shared_data), **kwargs)

    return wrapper


def load_data(dataset: str | None, items: Path | None, sequences: Path | None, events: Path | None,
              shared: Path | None = None):
    from learn import data as d
    from stream.tools.datasets import shared_data_dir

    shared = shared or shared_data_dir()
    if dataset == "beauty":
        return d.load_amazon_beauty(shared / "amazon-beauty")
    if dataset == "online-retail":
        return d.load_online_retail(shared / "online-retail" / "online_retail.csv.gz")
    if dataset == "online-retail-sample":      # shipped with the package: 877 customers, 2,430 products
        from stream.tools.datasets import PACKAGE_DATA

        data = d.load_online_retail(PACKAGE_DATA / "online_retail_sample.csv.gz")
        data.name = "online-retail-sample"         # its reports go beside, not over, the full set's
        return data
    if items and events:
        return d.read_event_log(events, items)
    if items and sequences:
        return d.load_generic(items, sequences)
    raise click.UsageError("give --dataset, or --items with --sequences (or with --events)")


def register(cli: click.Group) -> None:
    @cli.command("eval")
    @dataset_options
    @click.option("--model", "models", multiple=True, type=click.Path(path_type=Path),
                  help="Trained session encoder artifact, or one of its .onnx files (int8, fp16); repeatable.")
    @click.option("--fold", type=click.Choice(["test", "valid"]), default="test", show_default=True)
    @click.option("--no-baselines", is_flag=True, help="Evaluate only the --model artifacts.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @path_option("--out", default=None, help="Report folder (default: var/eval/<dataset>).")
    @click.option("--no-plot", is_flag=True)
    @click.option("--backend", "encoder_backend", default=None, help="Text encoder backend (default auto).")
    @click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch / onnxruntime threads.")
    def evaluate_cmd(data, models, fold, no_baselines, as_json, out, no_plot, encoder_backend, threads) -> None:
        """Leave-one-out, full-ranking quality of the recommender and its baselines."""
        import orjson

        from learn.report import run_evaluation, table, write_report
        from stream.settings import Settings

        if threads:
            import torch

            torch.set_num_threads(threads)
        settings = Settings.from_env(encoder_backend=encoder_backend)
        vecs, text_version = text_vectors_for(data, settings)
        report = run_evaluation(data, vecs, models=models, fold=fold, baselines=not no_baselines, threads=threads)
        report["text_model_version"] = text_version
        out = out or Path(settings.data_dir) / "eval" / data.name
        paths = write_report(report, out, plot=not no_plot)
        if as_json:
            click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        else:
            d = report["dataset"]
            click.echo(f"{d['name']}: {report['users']} users, {d['items']} items, {fold} fold, full ranking")
            click.echo(table(report))
            click.echo("report: " + ", ".join(str(p) for p in paths.values()))

    @cli.group("dataset")
    def dataset_group() -> None:
        """Interaction data sets in the generic format (items.tsv, sequences.tsv)."""

    @dataset_group.command("convert")
    @dataset_options
    @path_option("--out", required=True, help="Folder for items.tsv and sequences.tsv.")
    def convert(data, out: Path) -> None:
        """Write a data set (or a JSONL event log's product events) in the generic format."""
        from learn.data import write_generic

        items, seqs = write_generic(data, out)
        s = data.summary()
        click.echo(f"{s['name']}: {s['items']} items, {s['users']} users, {s['events']} events -> {items}, {seqs}")

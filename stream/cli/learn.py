"""``shopstream learn``: continuous training and promotion; ``shopstream models``: the versions and their state."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import click

from stream.cli.options import kafka_options, path_option

log = logging.getLogger(__name__)


def register(cli: click.Group) -> None:
    @cli.command("learn")
    @kafka_options
    @click.option("--once", is_flag=True, help="One pass (learn, then decide), then exit: for a scheduler.")
    @click.option("--interval", type=click.FloatRange(min=1.0), default=3600.0, show_default=True,
                  help="Seconds between passes of the long-running loop.")
    @click.option("--registry", default=None,
                  help="Registry URL the candidate is published to (file:///folder, s3://bucket/path; default "
                       "SHOPSTREAM_REGISTRY; none: <data_dir>/registry, read by workers on this host only).")
    @path_option("--catalog", default=None, help="Product catalogue (default: the shipped Online Retail one).")
    @click.option("--alpha", type=float, default=0.05, show_default=True, help="Significance of a promotion decision.")
    @click.option("--min-served", type=click.IntRange(min=1), default=1000, show_default=True,
                  help="Recommendations each side needs before any decision.")
    @click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print each pass's summary as JSON.")
    def learn_cmd(settings, once, interval, registry, catalog, alpha, min_served, threads, as_json) -> None:
        """Train on the newest events, announce a better model as a candidate, promote or withdraw it.

        Each pass: `learn_once` (the events window since the checkpoint, warm-started from the
        serving model, compared offline on each shopper's newest event; announced only when
        NDCG@10 beats the serving model by SHOPSTREAM_LEARN_MARGIN), then `decide` (the candidate's
        online hit rate against the default's: better -> default, worse -> withdrawn)."""
        from stream.ops.continuous_training import learn_once
        from stream.ops.promotion import decide

        if registry:
            settings = settings.replace(registry=registry)      # a malformed URL: one line, exit 2
        while True:
            summary = asyncio.run(learn_once(settings, catalog=catalog, threads=threads))
            decisions = asyncio.run(decide(settings, alpha=alpha, min_served=min_served))
            _echo_pass(summary, decisions, as_json)
            if once:
                return
            time.sleep(interval)

    @cli.command("models")
    @kafka_options
    @click.option("--json", "as_json", is_flag=True, help="The current record of every version, as JSON.")
    @click.option("--set-default", "set_default", default=None, metavar="VERSION",
                  help="Roll back (or promote by hand): VERSION becomes the default every host serves, the "
                       "current default is retired.")
    @click.option("--reason", default="", help="Why, for --set-default (kept in the records).")
    def models_cmd(settings, as_json, set_default, reason) -> None:
        """Every session-encoder version on the models topic: state, share, offline and online figures."""
        import orjson

        from stream.ops.model_log import read_model_log

        if set_default:
            from stream.ops.model_log import announce
            from stream.ops.models import serving

            found = asyncio.run(read_model_log(settings))[0]
            if set_default not in found:
                raise click.BadParameter(f"no version {set_default!r} on {settings.models_topic}",
                                         param_hint="--set-default")
            current, _ = serving(found)
            why = reason or "set by an operator"
            moves = [] if current is None or current.version == set_default else [
                dataclasses.replace(current.moved_to("retired", f"replaced by {set_default}: {why}", by="operator"),
                                    share=0.0)]
            moves.append(dataclasses.replace(found[set_default].moved_to("default", why, by="operator"), share=0.0))
            asyncio.run(announce(settings, *moves))
            for r in moves:
                click.echo(f"{r.version} -> {r.state}: {r.reason}")
            return

        found, invalid = asyncio.run(read_model_log(settings))
        records = sorted(found.values(), key=lambda r: r.decided_at)
        if as_json:
            click.echo(orjson.dumps([r.__dict__ for r in records], option=orjson.OPT_INDENT_2).decode())
            return
        if not records:
            click.echo(f"no models on {settings.models_topic}: workers serve the configured session encoder")
        else:
            click.echo(f"{'version':<26} {'state':<10} {'share':>5} {'NDCG@10':>8} {'serving':>8} "
                       f"{'online hit rate (cand / control)':>34} {'p':>7}  decided_at            reason")
            for r in records:
                click.echo(_row(r))
        for b in invalid:
            click.echo(f"{b.key[:26]:<26} {'invalid':<10} partition {b.partition} offset {b.offset}: {b.reason}")


def _row(r) -> str:
    off, on = r.offline or {}, r.online or {}
    ndcg = f"{off['ndcg@10']:.4f}" if "ndcg@10" in off else "-"
    base = f"{off['serving_ndcg@10']:.4f}" if "serving_ndcg@10" in off else "-"
    if on.get("candidate"):
        c, k = on["candidate"], on["control"]
        online = f"{c['hit_rate']:.4f} ({c['served']}) / {k['hit_rate']:.4f} ({k['served']})"
        p = f"{on['p_value']:.3g}"
    else:
        online, p = "-", "-"
    return (f"{r.version:<26} {r.state:<10} {r.share:>5.2f} {ndcg:>8} {base:>8} {online:>34} {p:>7}  "
            f"{r.decided_at:<21} {r.reason}")


def _echo_pass(summary: dict, decisions, as_json: bool) -> None:
    if as_json:
        import orjson

        click.echo(orjson.dumps({"learn": summary, "decisions": [d.__dict__ for d in decisions]}).decode())
        return
    if summary.get("announced"):
        click.echo(f"announced candidate {summary['announced']}: {summary['reason']} ({summary['seconds']}s)")
    else:
        click.echo(f"no new model: {summary.get('reason')} ({summary['seconds']}s)")
    for key in ("events_read", "users", "held_out_users", "excluded_users", "forgotten_total"):
        if key in summary:
            click.echo(f"  {key.replace('_', ' ')}: {summary[key]}")
    for d in decisions:
        click.echo(f"decision: {d.version} -> {d.state}: {d.reason}")

"""``shopstream bench ...``: benchmarks are commands that print numbers (``--json`` for machines)."""
from __future__ import annotations

import click
import orjson

from stream.cli.options import kafka_options


def emit(result: dict, as_json: bool, render) -> None:
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        render(result)


def register(cli: click.Group) -> None:
    @cli.group("bench")
    def bench() -> None:
        """Measure throughput and latency; print a table, or JSON with --json."""

    @bench.command("e2e")
    @click.option("--events", "n_events", type=click.IntRange(min=1), default=20_000, show_default=True)
    @click.option("--rate", type=click.FloatRange(min=1), default=None,
                  help="Offered load in events/s (default: as fast as the producer can).")
    @click.option("--users", type=click.IntRange(min=1), default=2000, show_default=True)
    @click.option("--bad-share", type=click.FloatRange(0, 0.5), default=0.01, show_default=True)
    @click.option("--partitions", type=click.IntRange(min=1), default=4, show_default=True)
    @click.option("--broker", default=None, help="Kafka to use (default: start the embedded broker).")
    @click.option("--json", "as_json", is_flag=True)
    def e2e(n_events, rate, users, bad_share, partitions, broker, as_json) -> None:
        """Drive N events through broker, worker and the recommendations topic."""
        from stream.bench_e2e import render, run_e2e_bench

        result = run_e2e_bench(n_events=n_events, rate=rate, users=users, bad_share=bad_share,
                               partitions=partitions, broker=broker, progress=not as_json)
        emit(result, as_json, render)

"""``shopstream topics``: create every topic with its partition count and erasure configs (the
compose set-up step); ``--check`` reports what differs on an existing cluster."""
from __future__ import annotations

import asyncio

import click

from stream.cli.options import kafka_options


def register(cli: click.Group) -> None:
    @cli.command("topics")
    @kafka_options
    @click.option("--check", is_flag=True,
                  help="Change nothing: list every topic, partition count and config that differs from what "
                       "shopstream would create (exit 1 when any does).")
    def topics(settings, check: bool) -> None:
        """Create the topics shopstream uses, if missing, and check the partition counts of the others.

        Each topic is created with the configs that bound how long a shopper stays in it
        (SHOPSTREAM_ERASURE_DEADLINE_S, SHOPSTREAM_DEAD_LETTER_RETENTION_S); existing topics are
        not changed: run with --check to see what differs.
        """
        from stream.ops.topics import check_topics, ensure_topics, topic_specs

        specs = topic_specs(settings)
        if check:
            differences = asyncio.run(check_topics(settings, specs))
            for d in differences:
                click.echo(str(d))
            if differences:
                raise SystemExit(1)
            click.echo(f"all {len(specs)} topics as shopstream would create them")
            return
        counts = asyncio.run(ensure_topics(settings, specs))
        for s in specs:
            configs = " ".join(f"{k}={v}" for k, v in s.config_dict.items())
            click.echo(f"{s.name}\t{counts[s.name]} partition(s)\t{configs}")

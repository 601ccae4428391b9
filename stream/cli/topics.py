"""``shopstream topics``: create every topic with its partition count (the compose set-up step)."""
from __future__ import annotations

import asyncio

import click

from stream.cli.options import kafka_options


def register(cli: click.Group) -> None:
    @cli.command("topics")
    @kafka_options
    def topics(settings) -> None:
        """Create the topics shopstream uses, if missing, and check the partition counts of the others."""
        from stream.ops.topics import ensure_topics, topic_specs

        counts = asyncio.run(ensure_topics(settings))
        compacted = {s.name for s in topic_specs(settings) if s.compacted}
        for name, partitions in counts.items():
            click.echo(f"{name}\t{partitions} partition(s){'  compacted' if name in compacted else ''}")

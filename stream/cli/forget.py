"""``shopstream forget USER``: erase a shopper's session state (a tombstone in the changelog)."""
from __future__ import annotations

import asyncio

import click

from stream.cli.options import kafka_options


def register(cli: click.Group) -> None:
    @cli.command("forget")
    @kafka_options
    @click.argument("user_id")
    def forget(settings, user_id: str) -> None:
        """Erase USER_ID's session state.

        Writes a tombstone to the sessions changelog, keyed by the user id (or by its keyed hash
        when SHOPSTREAM_PSEUDONYMISE_KEY is set). Workers drop the session when they next load the
        table (restart or rebalance); restart running workers to drop it from memory at once.
        """
        from stream.privacy import forget as forget_user
        from stream.topics import changelog_topic

        _, partition = asyncio.run(forget_user(settings, user_id))
        click.echo(f"forgot {user_id}: tombstone written to {changelog_topic(settings)} "
                   f"partition {partition}; restart running workers to drop it from memory now")

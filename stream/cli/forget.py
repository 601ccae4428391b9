"""``shopstream forget USER``: erase a shopper's session state (tombstones in the changelog)."""
from __future__ import annotations

import asyncio

import click

from stream.cli.options import kafka_options


def register(cli: click.Group) -> None:
    @cli.command("forget")
    @kafka_options
    @click.argument("user_id")
    def forget(settings, user_id: str) -> None:
        """Erase USER_ID's session, latest recommendation and latest hit.

        Running workers drop the session in order with the user's events (a control message to
        every partition of the events topic) and a tombstone goes to every partition of the
        sessions changelog, the recommendations topic and the feedback topic at once, keyed by the
        user id (or its keyed hash when SHOPSTREAM_PSEUDONYMISE_KEY is set: then the raw id is
        written nowhere), so the erasure survives restarts, holds even while no worker runs, and
        reaches the shopper whichever partitioner the storefront produced with.
        """
        from stream.ops.erasure import forget as forget_user
        from stream.ops.topics import changelog_topic

        _, partitions = asyncio.run(forget_user(settings, user_id))
        click.echo(f"forgot {user_id}: forget request on {settings.events_topic} and tombstones in "
                   f"{changelog_topic(settings)}, {settings.recommendations_topic} and "
                   f"{settings.resolved_feedback_topic}, {len(partitions)} partition(s) each")

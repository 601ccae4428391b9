"""``shopstream catalog push``: publish catalogue updates (and deletions) to the catalog topic."""
from __future__ import annotations

import asyncio
from pathlib import Path

import click

from stream.cli.options import kafka_options


def register(cli: click.Group) -> None:
    @cli.group("catalog")
    def catalog_group() -> None:
        """Live catalogue updates: every running worker applies them within seconds."""

    @catalog_group.command("push")
    @click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
    @click.option("--delete", "deletes", multiple=True, metavar="ID",
                  help="Delete this product id (a tombstone); repeat for more.")
    @kafka_options
    def push(file: Path | None, deletes: tuple[str, ...], settings) -> None:
        """Publish FILE's products (JSONL or CSV, as `index build` reads) and --delete tombstones."""
        from index import iter_catalog
        from stream.clients import push_catalog

        if file is None and not deletes:
            raise click.UsageError("give a catalogue FILE, --delete ID, or both")
        products = iter_catalog(file) if file is not None else ()
        n_up, n_del = asyncio.run(push_catalog(settings, products, deletes))
        click.echo(f"published {n_up} product update(s) and {n_del} deletion(s) to {settings.catalog_topic}")

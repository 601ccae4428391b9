"""``shopstream index build``: embed a catalogue into a versioned index snapshot."""
from __future__ import annotations

import time
from pathlib import Path

import click

from stream.cli.options import path_option
from stream.tools.bootstrap import build_default_index


def register(cli: click.Group) -> None:
    @cli.group("index")
    def index_group() -> None:
        """Build and inspect product index snapshots."""

    @index_group.command("build")
    @path_option("--catalog", default=None, help="JSONL or CSV catalogue (default: the shipped Online Retail products).")
    @path_option("--out", default=None, help="Snapshot folder (default: var/index/current).")
    @click.option("--backend", "encoder_backend", default=None, help="Text encoder backend (default auto).")
    @click.option("--kind", "index_kind", type=click.Choice(["auto", "flat", "hnsw", "ivf"]), default=None,
                  help="Index kind (default SHOPSTREAM_INDEX_KIND or auto: flat up to 20k products, HNSW above).")
    @click.option("--catalog-offset", type=click.IntRange(min=0), default=None,
                  help="The catalogue file already holds the catalog topic's updates before this offset; "
                       "workers that load the snapshot apply only the later ones.")
    @click.option("--session-encoder", default=None,
                  help="default (the shipped model), pooling (plain title vectors) or a trained artifact folder, "
                       "whose item tower and id vectors (a trained product's own, a new one's title) make the "
                       "product vectors; the worker must run the same one "
                       "(default SHOPSTREAM_SESSION_ENCODER, itself 'default').")
    def build(catalog: Path | None, out: Path | None, encoder_backend: str | None, index_kind: str | None,
              catalog_offset: int | None, session_encoder: str | None) -> None:
        """Embed every product and write a snapshot the worker loads (a running worker swaps to it)."""
        from index import read_manifest
        from stream.settings import Settings

        settings = Settings.from_env(encoder_backend=encoder_backend, index_kind=index_kind,
                                     session_encoder=session_encoder)
        t0 = time.perf_counter()
        path = build_default_index(settings, catalog, out, catalog_offset=catalog_offset)
        m = read_manifest(path)
        click.echo(f"index {m['version']}: {m['count']} products, {m['kind']}, dim {m['dim']}, model {m['model_version']} "
                   f"-> {path} ({time.perf_counter() - t0:.1f}s)")

    @index_group.command("publish")
    @click.argument("snapshot", type=click.Path(path_type=Path, exists=True, file_okay=False), required=False)
    @click.option("--registry", default=None, help="Registry URL (default SHOPSTREAM_REGISTRY).")
    @click.option("--not-current", is_flag=True, help="Upload only; new hosts keep starting from the current one.")
    def publish(snapshot: Path | None, registry: str | None, not_current: bool) -> None:
        """Upload an index snapshot (default: var/index/current) to the registry, content-addressed,
        and name it the one new hosts start from until a model on the models topic names its own."""
        from stream.ops.fleet import publish_index
        from stream.settings import Settings

        settings = Settings.from_env(registry=registry)
        path = snapshot or settings.resolved_index_path
        if not (path / "manifest.json").is_file():
            raise click.UsageError(f"no index snapshot at {path}: build one with `shopstream index build`")
        t0 = time.perf_counter()
        out = publish_index(settings, path, current=not not_current)
        click.echo(f"published {path} as {out.key} ({out.size} bytes, sha256 {out.sha256[:12]}...) to "
                   f"{settings.registry}{'' if not_current else ', current'} ({time.perf_counter() - t0:.1f}s)")

    @index_group.command("info")
    @click.argument("path", type=click.Path(path_type=Path))
    def info(path: Path) -> None:
        """Print a snapshot's manifest."""
        import orjson

        from index import read_manifest

        click.echo(orjson.dumps(read_manifest(path), option=orjson.OPT_INDENT_2).decode())

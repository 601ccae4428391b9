"""``shopstream worker``: the Faust worker of the recommendation pipeline."""
from __future__ import annotations

import click

from stream.cli.options import kafka_options, path_option


def register(cli: click.Group) -> None:
    @cli.command("worker")
    @kafka_options
    @path_option("--index", "index_path", default=None, help="Index snapshot folder.")
    @click.option("--backend", "encoder_backend", default=None, help="Text encoder backend (default auto).")
    @click.option("--web-port", type=click.IntRange(1, 65535), default=None)
    @click.option("--batch-size", type=click.IntRange(min=1), default=None)
    @click.option("--batch-wait-ms", type=click.IntRange(min=0), default=None)
    def worker(settings, index_path, encoder_backend, web_port, batch_size, batch_wait_ms) -> None:
        """Consume events, keep sessions, publish recommendations."""
        from stream.live.worker import run_worker

        run_worker(settings.replace(index_path=index_path, encoder_backend=encoder_backend,
                                    web_port=web_port, batch_size=batch_size, batch_wait_ms=batch_wait_ms))

"""``shopstream broker``: run the embedded tansu broker until Ctrl-C."""
from __future__ import annotations

import signal
import threading

import click

from stream.tools.broker import EmbeddedBroker


def register(cli: click.Group) -> None:
    @cli.command("broker")
    @click.option("--port", type=click.IntRange(1, 65535), default=None, help="Default: a free port.")
    @click.option("--host", default="127.0.0.1", show_default=True)
    def broker(port: int | None, host: str) -> None:
        """Start the embedded Kafka-protocol broker (in memory) and print its address."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with EmbeddedBroker(port=port, host=host) as b:
            click.echo(f"broker listening on {b.bootstrap}  (export SHOPSTREAM_BROKER={b.bootstrap}; Ctrl-C stops)")
            try:
                while not stop.wait(0.5):
                    if not b.running:
                        raise click.ClickException("the broker exited")
            except KeyboardInterrupt:
                pass
        click.echo("broker stopped")

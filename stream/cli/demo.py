"""``shopstream demo``: everything on the embedded broker, real behaviour replayed."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from stream.cli.options import path_option


def register(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option("--rate", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
                  help="Events per second replayed.")
    @click.option("--events", "limit", type=click.IntRange(min=1), default=None,
                  help="Stop after this many events (default: the whole data set, or Ctrl-C).")
    @click.option("--bad-share", type=click.FloatRange(0, 0.5), default=0.02, show_default=True,
                  help="Share of malformed events mixed in to show the dead-letter topic.")
    @click.option("--broker", default=None, help="Use this Kafka instead of starting the embedded broker.")
    @path_option("--data-dir", default=Path("var"), show_default=True)
    @click.option("--web-port", type=click.IntRange(1, 65535), default=None)
    def demo(rate: float, limit: int | None, bad_share: float, broker: str | None, data_dir: Path,
             web_port: int | None) -> None:
        """Start broker and worker, replay Online Retail shoppers and WANDS searches, print recommendations."""
        from stream.ops.topics import ensure_topics
        from stream.settings import Settings
        from stream.tools.bootstrap import prepare_local
        from stream.tools.broker import EmbeddedBroker, free_port
        from stream.tools.demo import (
            run_demo,
            start_worker_process,
            stop_process,
            wait_ready,
        )
        from stream.tools.processes import terminate_on_sigterm

        terminate_on_sigterm()
        embedded = None
        worker = None
        try:
            if broker is None:
                embedded = EmbeddedBroker(log_file=data_dir / "logs" / "broker.log").start()
                broker = embedded.bootstrap
                click.echo(f"embedded broker (tansu) on {broker}")
            settings = Settings.from_env(broker=broker, data_dir=data_dir, web_port=web_port or free_port())
            settings = prepare_local(settings, echo=click.echo)
            asyncio.run(ensure_topics(settings))
            log_path = data_dir / "logs" / "worker.log"
            worker = start_worker_process(settings, log_path)
            click.echo(f"worker started (pid {worker.pid}, log {log_path}, "
                       f"metrics http://{settings.web_host}:{settings.web_port}/metrics); waiting until ready ...")
            wait_ready(settings.web_port, worker, timeout=120)
            click.echo(f"replaying real shoppers at {rate:g} events/s; Ctrl-C stops everything\n")
            t0 = time.monotonic()
            stats = asyncio.run(run_demo(settings, rate=rate, limit=limit, bad_share=bad_share, echo=click.echo))
            if worker.poll() is not None:
                raise click.ClickException(f"the worker exited with code {worker.returncode}; see {log_path}")
            click.echo(f"\n{stats.sent} events (+{stats.bad_sent} malformed) in {time.monotonic() - t0:.0f}s: "
                       f"{stats.recommendations} recommendations, {stats.dead_letters} dead-lettered")
        except KeyboardInterrupt:
            click.echo("\nstopping ...")
        finally:
            stop_process(worker)
            if embedded is not None:
                embedded.stop()

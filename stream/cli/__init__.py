"""The ``shopstream`` command: one module per subcommand, each a thin wrapper over the library."""
from __future__ import annotations

import sys

import click

from stream.errors import ShopstreamError


def _user_errors() -> tuple[type[BaseException], ...]:
    from engines.errors import EngineError
    from index.errors import IndexError_

    return (ShopstreamError, EngineError, IndexError_)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", envvar="SHOPSTREAM_LOG_FORMAT", default="text", show_default=True,
              type=click.Choice(["text", "json"], case_sensitive=False), help="json: one object per line.")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """shopstream: live shopper events in, personalised recommendations out."""
    from stream.ops.logs import configure_logging

    # a worker's log keeps the Kafka client's group and partition lines; one-off commands do not
    configure_logging(log_level, log_format, quiet_client=ctx.invoked_subcommand != "worker")


def _register() -> None:
    from stream.cli import broker, demo, index_cmd, produce, tail, worker

    for module in (broker, demo, index_cmd, produce, tail, worker):
        module.register(cli)
    for name in ("engine", "bench", "evaluate", "train", "replay", "catalog", "forget", "topics", "report", "learn"):
        try:
            module = __import__(f"stream.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError:
            continue
        module.register(cli)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        cli.main(args=argv, prog_name="shopstream", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("shopstream: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _user_errors() as exc:
        click.echo(f"shopstream: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:                # a folder that cannot be written, a file that vanished
        import logging

        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        click.echo(f"shopstream: error: {exc} (--log-level DEBUG shows where)", err=True)
        sys.exit(2)

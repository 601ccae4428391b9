"""``shopstream replay``: re-run a slice of the events topic into a separate output topic."""
from __future__ import annotations

import click
import orjson

from stream.cli.options import kafka_options, path_option


def _bound(ctx, param, value):  # noqa: ANN001 - click callback
    from stream.errors import ConfigError
    from stream.replay.run import parse_bound

    try:
        return parse_bound(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def register(cli: click.Group) -> None:
    @cli.command("replay")
    @kafka_options
    @click.option("--from", "start", default="start", show_default=True, callback=_bound,
                  help="OFFSET (in every partition), TIME (ISO-8601, UTC unless given; @epoch_ms) or start.")
    @click.option("--to", "end", default="end", show_default=True, callback=_bound,
                  help="Exclusive end: OFFSET, TIME or end (the end of the topic when the replay starts).")
    @click.option("--topic", default=None, help="Topic to replay (default: the events topic).")
    @click.option("--output", default=None, help="Topic the recommendations go to (default: <recommendations>-replay).")
    @click.option("--rate", type=click.FloatRange(min=0.001), default=None, help="At most N events/s.")
    @click.option("--dry-run", is_flag=True, help="Only count the events in the slice.")
    @path_option("--checkpoint", default=None,
                 help="Checkpoint file (default: <data dir>/replay/<topic>--<output>.checkpoint.json).")
    @click.option("--fresh", is_flag=True, help="Ignore an existing checkpoint and start over.")
    @path_option("--index", "index_path", default=None, help="Index snapshot folder.")
    @click.option("--backend", "encoder_backend", default=None, help="Text encoder backend (default auto).")
    @click.option("--batch-size", type=click.IntRange(min=1), default=None)
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.option("--no-progress", is_flag=True, help="No progress bar.")
    def replay(settings, start, end, topic, output, rate, dry_run, checkpoint, fresh, index_path,
               encoder_backend, batch_size, as_json, no_progress) -> None:
        """Re-run events between --from and --to through the pipeline into --output.

        Sessions start empty and live in this process; the live consumer group, its offsets and
        its sessions are untouched. Interrupted, the same command resumes from its checkpoint.
        """
        from stream.replay.run import run_replay

        settings = settings.replace(index_path=index_path, encoder_backend=encoder_backend)
        summary = run_replay(settings, start=start, end=end, topic=topic, output=output, rate=rate,
                             dry_run=dry_run, checkpoint=checkpoint, fresh=fresh, batch_size=batch_size,
                             progress=not no_progress)
        if as_json:
            click.echo(orjson.dumps(summary.to_dict()).decode())
        else:
            click.echo("\n".join(summary.lines()))

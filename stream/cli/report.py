"""``shopstream report online``: online hit rates per variant with intervals, and the A/B verdict."""
from __future__ import annotations

from pathlib import Path

import click
import orjson

from stream.cli.options import kafka_options, path_option


def register(cli: click.Group) -> None:
    @cli.group("report")
    def report() -> None:
        """Reports on a running deployment."""

    @report.command("online")
    @kafka_options
    @click.option("--recommendations-topic", default=None, help="Default SHOPSTREAM_RECOMMENDATIONS_TOPIC.")
    @click.option("--feedback-topic", default=None, help="Default SHOPSTREAM_FEEDBACK_TOPIC or <app-id>-feedback.")
    @click.option("--control", default=None, help="The variant others are compared with (default control, "
                                                  "else default).")
    @click.option("--alpha", type=click.FloatRange(0.0001, 0.5), default=0.05, show_default=True)
    @click.option("--windows", type=click.IntRange(min=1), default=10, show_default=True,
                  help="Time windows of the plot.")
    @path_option("--png", default=None, help="Plot hit rate over time with 95% bands to this PNG.")
    @click.option("--json", "as_json", is_flag=True)
    def online(settings, recommendations_topic, feedback_topic, control, alpha, windows, png: Path | None,
               as_json: bool) -> None:
        """Hit rate @k per variant and model with 95% intervals, hits by event type, and each variant
        against the control (two-proportion z-test: significant or not)."""
        from stream.ops.online_report import online_report, plot, render

        settings = settings.replace(recommendations_topic=recommendations_topic, feedback_topic=feedback_topic)
        result = online_report(settings, control=control, alpha=alpha, windows=windows)
        if png is not None:
            result["png"] = str(plot(result, png))
        if as_json:
            click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(render(result))
            if png is not None:
                click.echo(f"plot: {png}")

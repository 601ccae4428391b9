"""``shopstream produce``: send events from a JSONL file or stdin to the events topic."""
from __future__ import annotations

import asyncio
import sys

import click
import orjson

from stream.cli.options import kafka_options


async def produce_lines(settings, lines, *, validate: bool, rate: float | None) -> tuple[int, int]:
    from stream.clients import EventProducer
    from stream.errors import InvalidEvent

    sent = rejected = 0
    async with EventProducer(settings, validate=validate) as producer:
        for n, line in enumerate(lines, 1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            key = None
            if not validate:
                try:
                    uid = orjson.loads(line).get("user_id")
                    key = uid.encode() if isinstance(uid, str) else None
                except (orjson.JSONDecodeError, AttributeError):
                    key = None
            try:
                await producer.send(line, key=key)
                sent += 1
            except InvalidEvent as exc:
                rejected += 1
                click.echo(f"line {n}: rejected: {exc}", err=True)
            if rate:
                await asyncio.sleep(1.0 / rate)
        await producer.flush()
    return sent, rejected


def register(cli: click.Group) -> None:
    @cli.command("produce")
    @kafka_options
    @click.argument("source", type=click.File("rb"), default="-")
    @click.option("--validate/--no-validate", default=True, show_default=True,
                  help="Check each event before sending (--no-validate sends bad events on purpose, "
                       "e.g. to exercise the dead-letter topic).")
    @click.option("--rate", type=click.FloatRange(min=0.001), default=None, help="Events per second (default: as fast as possible).")
    def produce(settings, source, validate: bool, rate: float | None) -> None:
        """Send events (one JSON object per line) from SOURCE, a file or - for stdin."""
        sent, rejected = asyncio.run(produce_lines(settings, source, validate=validate, rate=rate))
        click.echo(f"sent {sent} event(s) to {settings.events_topic}" + (f", rejected {rejected}" if rejected else ""),
                   err=True)
        if rejected and not sent:
            sys.exit(1)

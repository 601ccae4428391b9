"""``shopstream tail TOPIC``: print a topic's messages, one per line."""
from __future__ import annotations

import asyncio
import time

import click
import orjson

from stream.cli.options import kafka_options


async def tail_topic(settings, topic: str, *, from_beginning: bool, limit: int | None, idle: float | None,
                     raw: bool) -> int:
    from aiokafka import AIOKafkaConsumer

    from stream.errors import ConfigError
    from stream.ops.topics import start_client

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, fetch_max_wait_ms=settings.fetch_max_wait_ms, group_id=None,
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                enable_auto_commit=False, **settings.kafka_client_options())
    await start_client(consumer, settings)
    count = 0
    last = time.monotonic()
    try:
        # all-topic metadata first: subscribing to a name the cluster lacks would make brokers that
        # auto-create topics (tansu; Kafka with auto.create.topics.enable) create it, mistyped or not
        if topic not in await consumer.topics():
            raise ConfigError(f"topic {topic!r} does not exist on {settings.broker} "
                              f"(`shopstream topics` creates shopstream's own topics)")
        consumer.subscribe([topic])
        while limit is None or count < limit:
            batch = await consumer.getmany(timeout_ms=200)
            if not batch:
                if idle is not None and time.monotonic() - last > idle:
                    break
                continue
            last = time.monotonic()
            for tp, msgs in batch.items():
                for m in msgs:
                    click.echo(format_message(m, raw=raw))
                    count += 1
    finally:
        await consumer.stop()
    return count


def format_message(m, *, raw: bool = False) -> str:
    key = m.key.decode("utf-8", "replace") if m.key is not None else None
    try:
        value = orjson.loads(m.value) if m.value is not None else None
    except orjson.JSONDecodeError:
        value = m.value.decode("utf-8", "replace")
    if raw:
        return orjson.dumps(value).decode() if not isinstance(value, str) else value
    out = {"partition": m.partition, "offset": m.offset, "key": key, "value": value}
    if m.headers:
        out["headers"] = {k: v.decode("utf-8", "replace") for k, v in m.headers}
    return orjson.dumps(out).decode()


def register(cli: click.Group) -> None:
    @cli.command("tail")
    @kafka_options
    @click.argument("topic")
    @click.option("--from-beginning", is_flag=True, help="Start at the oldest message instead of new ones.")
    @click.option("-n", "--limit", type=click.IntRange(min=1), default=None, help="Stop after N messages.")
    @click.option("--idle", type=click.FloatRange(min=0.1), default=None, help="Stop after this many idle seconds.")
    @click.option("--raw", is_flag=True, help="Print values only.")
    def tail(settings, topic: str, from_beginning: bool, limit, idle, raw: bool) -> None:
        """Print the messages of TOPIC (key, value, headers) as JSON lines."""
        try:
            asyncio.run(tail_topic(settings, topic, from_beginning=from_beginning, limit=limit, idle=idle, raw=raw))
        except KeyboardInterrupt:
            pass

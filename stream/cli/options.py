"""Options shared by every command that talks to Kafka."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click

from stream.core.partitioner import PARTITIONERS
from stream.settings import SASL_MECHANISMS, SECURITY_PROTOCOLS, Secret, Settings


def kafka_options(fn: Callable) -> Callable:
    """--broker and the SASL/TLS options; the command receives ``settings``."""

    @click.option("--broker", envvar="SHOPSTREAM_BROKER", help="Kafka bootstrap servers, host:port[,host:port].")
    @click.option("--security-protocol", type=click.Choice(SECURITY_PROTOCOLS), default=None)
    @click.option("--sasl-mechanism", type=click.Choice(SASL_MECHANISMS), default=None)
    @click.option("--sasl-username", default=None)
    @click.option("--sasl-password", default=None, envvar="SHOPSTREAM_SASL_PASSWORD",
                  help="Better given as SHOPSTREAM_SASL_PASSWORD than on the command line.")
    @click.option("--ssl-cafile", type=click.Path(dir_okay=False), default=None)
    @click.option("--ssl-certfile", type=click.Path(dir_okay=False), default=None)
    @click.option("--ssl-keyfile", type=click.Path(dir_okay=False), default=None)
    @click.option("--partitions", type=click.IntRange(min=1), default=None,
                  help="Partitions of the topics shopstream creates.")
    @click.option("--partitioner", type=click.Choice(PARTITIONERS), default=None,
                  help="How the shop's producers place a user's key: murmur2 (Java, aiokafka) or crc32 "
                       "(librdkafka's default); shopstream keys its own messages the same way.")
    @click.option("--app-id", default=None, help="Consumer group and prefix of internal topics.")
    @functools.wraps(fn)
    def wrapper(*args: Any, broker, security_protocol, sasl_mechanism, sasl_username, sasl_password,
                ssl_cafile, ssl_certfile, ssl_keyfile, partitions, partitioner, app_id, **kwargs: Any):
        settings = Settings.from_env(
            broker=broker, security_protocol=security_protocol, sasl_mechanism=sasl_mechanism,
            sasl_username=sasl_username, sasl_password=Secret(sasl_password) if sasl_password else None,
            ssl_cafile=ssl_cafile, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
            partitions=partitions, partitioner=partitioner, app_id=app_id)
        return fn(*args, settings=settings, **kwargs)

    return wrapper


def path_option(*names: str, **kw: Any) -> Callable:
    return click.option(*names, type=click.Path(path_type=Path), **kw)

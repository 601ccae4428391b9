"""The right to be forgotten: erase a shopper's session, whether or not workers are running."""
from __future__ import annotations

import logging

from stream.core.pseudonyms import pseudonym
from stream.errors import BrokerError, ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)


def state_key(settings: Settings, user_id: str) -> str:
    """The key a user's session has in the sessions table (and its changelog)."""
    return pseudonym(str(settings.pseudonymise_key), user_id) if settings.pseudonymise_key else user_id


async def forget(settings: Settings, user_id: str) -> tuple[str, int]:
    """Erase ``user_id``'s session, whether or not workers are running. Returns (table key, partition).

    Two messages: a ``forget`` control message on the events topic
    (:func:`stream.clients.request_forget`), which the worker owning the user applies in order with
    the user's events -- dropping the session from memory and writing the tombstone itself -- and
    a tombstone (key, no value) written to the sessions changelog right away, so the session is
    gone from the log even while no worker runs. Compaction then removes the old values.
    """
    from stream.clients import request_forget

    if not user_id.strip():
        raise ConfigError("the user id to forget must not be empty")
    await request_forget(settings, user_id)
    return await write_tombstone(settings, user_id)


async def write_tombstone(settings: Settings, user_id: str) -> tuple[str, int]:
    """A tombstone for ``user_id``'s session in the sessions changelog, on the user's partition."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from aiokafka.partitioner import DefaultPartitioner

    from stream.ops.topics import changelog_topic, ensure_topics

    if not user_id.strip():
        raise ConfigError("the user id to forget must not be empty")
    topic = changelog_topic(settings)
    partitions = (await ensure_topics(settings))[topic]
    key = state_key(settings, user_id)
    # The table writes a user's changelog record to the partition of that user's events, which
    # the storefront keyed by the *raw* user id (default murmur2 partitioner): the tombstone
    # must land on that same partition to shadow the record there and let compaction drop it.
    partition = DefaultPartitioner()(user_id.encode(), list(range(partitions)), list(range(partitions)))
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **settings.kafka_client_options())
    try:
        await producer.start()
        meta = await producer.send_and_wait(topic, None, key=key.encode(), partition=partition)
    except KafkaError as exc:
        raise BrokerError(f"could not write the tombstone to {settings.broker}: {exc}") from exc
    finally:
        await producer.stop()
    log.info("forgot a session: tombstone in %s partition %d", meta.topic, meta.partition)
    return key, meta.partition

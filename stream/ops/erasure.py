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


async def forget(settings: Settings, user_id: str) -> tuple[str, list[int]]:
    """Erase ``user_id``'s session, whether or not workers are running.

    Returns (table key, the changelog partitions that received a tombstone: all of them).

    Broadcast, twice: a ``forget`` control message to every partition of the events topic
    (:func:`stream.clients.request_forget`), which running workers apply in order with the user's
    events (they tombstone the session, the latest recommendation and the latest hit), and a
    tombstone (key, no value) to every partition of the sessions changelog, the recommendations
    topic and the feedback topic (:func:`write_tombstone`), so the shopper is gone from them even
    while no worker runs. Neither needs to know which partitioner the storefront produced with:
    every partition gets the erasure. Compaction then removes the old values, within
    ``erasure_deadline_s`` (:mod:`stream.ops.topics`). With pseudonymisation on, every record
    carries the pseudonym, never the raw id.
    """
    from stream.clients import request_forget

    if not user_id.strip():
        raise ConfigError("the user id to forget must not be empty")
    await request_forget(settings, user_id)
    return await write_tombstone(settings, user_id)


async def write_tombstone(settings: Settings, user_id: str) -> tuple[str, list[int]]:
    """A tombstone for ``user_id`` on every partition of each compacted topic keyed by shopper:
    the sessions changelog, the recommendations topic and the feedback topic.

    The worker writes a session's changelog records to the partition its events arrived on,
    which the storefront's partitioner chose (murmur2 or CRC32, see
    :mod:`stream.core.partitioner`); a tombstone on every partition shadows the session wherever
    it is, costs one small record per partition, and lets compaction drop the old values.
    Returns (table key, changelog partitions written).
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from stream.ops.topics import changelog_topic, ensure_topics

    if not user_id.strip():
        raise ConfigError("the user id to forget must not be empty")
    topic = changelog_topic(settings)
    counts = await ensure_topics(settings)
    topics = [topic, settings.recommendations_topic, settings.resolved_feedback_topic]
    key = state_key(settings, user_id).encode()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **settings.kafka_client_options())
    try:
        await producer.start()
        sent = [await producer.send(t, None, key=key, partition=p) for t in topics for p in range(counts[t])]
        metas = [await fut for fut in sent]
    except KafkaError as exc:
        raise BrokerError(f"could not write the tombstone to {settings.broker}: {exc}") from exc
    finally:
        await producer.stop()
    written = sorted({m.partition for m in metas if m.topic == topic})
    log.info("forgot a shopper: tombstones in %s", ", ".join(f"{t} ({counts[t]} partitions)" for t in topics))
    return key.decode(), written

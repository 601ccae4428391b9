"""Pseudonymous user ids and the right to be forgotten.

With ``settings.pseudonymise_key`` set, every user id is replaced by a keyed hash (HMAC-SHA256)
as soon as an event is validated, so state, logs and recommendations only ever see the hash.
The same key always gives the same pseudonym, so a shopper's session still builds up; without the
key the pseudonym cannot be turned back into the user id, nor computed from a guessed one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from stream.errors import BrokerError, ConfigError
from stream.schema import Event
from stream.settings import Settings

log = logging.getLogger(__name__)

PSEUDONYM_PREFIX = "p-"
PSEUDONYM_HEX = 32          # 128 bits of the HMAC: collisions are not a practical concern
SESSION_SALT = "session\x1f"  # a session id never hashes to the same pseudonym as an equal user id


def pseudonym(key: str | bytes, user_id: str) -> str:
    """The keyed hash that stands for ``user_id``: ``p-`` and 32 hex digits."""
    if not key:
        raise ConfigError("a pseudonymisation key must not be empty")
    raw_key = key.encode() if isinstance(key, str) else key
    digest = hmac.new(raw_key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX]


class Pseudonymiser:
    """Event -> Event with user and session ids replaced by their keyed hashes (for
    ``BatchHandler.pseudonymise`` and the replay); :meth:`user_id` maps a bare user id.

    The session id is hashed as well (storefronts often derive it from a cookie or the user id);
    event ids, products and queries are kept.
    """

    def __init__(self, key: str | bytes) -> None:
        if not key:
            raise ConfigError("a pseudonymisation key must not be empty")
        self._key = key
        self._cache: dict[str, str] = {}

    def user_id(self, value: str) -> str:
        out = self._cache.get(value)
        if out is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            out = self._cache[value] = pseudonym(self._key, value)
        return out

    def __call__(self, event: Event) -> Event:
        return dataclasses.replace(event, user_id=self.user_id(event.user_id),
                                   session_id=self.user_id(SESSION_SALT + event.session_id))

    def __repr__(self) -> str:
        return "Pseudonymiser(key=**********)"


def pseudonymiser(key: str | bytes) -> Pseudonymiser:
    """An Event -> Event callable for ``BatchHandler.pseudonymise``."""
    return Pseudonymiser(key)


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

    from stream.topics import changelog_topic, ensure_topics

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

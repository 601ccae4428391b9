"""Storefront-side clients: send validated events, receive recommendations."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, Mapping, Sequence

import orjson

from stream.core.schema import EventValidator
from stream.settings import Settings

if TYPE_CHECKING:
    from index import Product

log = logging.getLogger(__name__)


class EventProducer:
    """Validates each event against the published schema before sending it, keyed by user id.

    Keys are placed on partitions by ``settings.partitioner``, so events sent from here join the
    same partition as the storefront's own events for that shopper.

        async with EventProducer(settings) as producer:
            await producer.send({"event_id": "e1", "type": "view", ...})
    """

    def __init__(self, settings: Settings, *, validate: bool = True, linger_ms: int = 5) -> None:
        self.settings = settings
        self.validator = EventValidator(max_bytes=settings.max_event_bytes,
                                        max_future_skew_s=settings.max_future_skew_s) if validate else None
        self.linger_ms = linger_ms
        self._producer = None

    async def start(self) -> "EventProducer":
        from aiokafka import AIOKafkaProducer

        from stream.core.partitioner import aiokafka_partitioner
        from stream.ops.topics import ensure_topics

        await ensure_topics(self.settings)
        self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers,
                                          linger_ms=self.linger_ms, acks="all",
                                          partitioner=aiokafka_partitioner(self.settings.partitioner),
                                          **self.settings.kafka_client_options())
        await self._producer.start()
        return self

    async def send(self, event: Mapping[str, Any] | bytes, *, key: bytes | None = None, wait: bool = False):
        """Queue one event; raises :class:`stream.errors.InvalidEvent` for an invalid one."""
        raw = event if isinstance(event, bytes) else orjson.dumps(event)
        if self.validator is not None:
            parsed = self.validator.parse(raw)
            key = key or parsed.user_id.encode()
        elif key is None and not isinstance(event, bytes):
            uid = event.get("user_id")
            key = uid.encode() if isinstance(uid, str) else None
        fut = await self._producer.send(self.settings.events_topic, raw, key=key)
        return await fut if wait else fut

    async def flush(self) -> None:
        await self._producer.flush()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> "EventProducer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


class RecommendationConsumer:
    """Iterates recommendations as dicts; duplicates (same recommendation_id) and the tombstones
    ``forget`` writes are dropped.

        async with RecommendationConsumer(settings, group_id="storefront") as recs:
            async for rec in recs:
                ...
    """

    def __init__(self, settings: Settings, *, group_id: str | None = None, from_beginning: bool = False,
                 topic: str | None = None, dedupe_window: int = 100_000) -> None:
        self.settings = settings
        self.group_id = group_id
        self.from_beginning = from_beginning
        self.topic = topic or settings.recommendations_topic
        self.dedupe_window = dedupe_window
        self._seen: dict[str, None] = {}
        self._consumer = None

    async def start(self) -> "RecommendationConsumer":
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.settings.bootstrap_servers, fetch_max_wait_ms=self.settings.fetch_max_wait_ms, group_id=self.group_id,
            auto_offset_reset="earliest" if self.from_beginning else "latest",
            enable_auto_commit=self.group_id is not None, **self.settings.kafka_client_options())
        await self._consumer.start()
        return self

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for msg in self._consumer:
            if msg.value is None:          # a tombstone: the shopper was forgotten (compacted topic)
                continue
            rec = orjson.loads(msg.value)
            rid = rec.get("recommendation_id")
            if rid in self._seen:
                continue
            self._seen[rid] = None
            if len(self._seen) > self.dedupe_window:
                self._seen.pop(next(iter(self._seen)))
            rec["_received_at"] = time.time()
            yield rec

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> "RecommendationConsumer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def request_forget(settings: Settings, user_id: str) -> list[int]:
    """Ask the workers to erase ``user_id``'s session: a control message to every events partition.

    Headers ``shopstream.control: forget``, the user id as key, an empty value, sent once to each
    partition of the events topic. With ``settings.pseudonymise_key`` set the key is the user's
    pseudonym and the header ``shopstream.key: pseudonym`` says so: the raw id is not written.
    Whichever partitioner placed the user's events (murmur2 from Java or aiokafka, CRC32 from
    librdkafka), one copy is in order with them and reaches the worker holding the session, which
    erases it and writes the tombstone to the changelog partition the session lives on. Returns
    the partitions it went to.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from stream.core.control import CONTROL_HEADER, FORGET, KEY_HEADER, PSEUDONYM
    from stream.errors import BrokerError
    from stream.ops.erasure import state_key
    from stream.ops.topics import ensure_topics

    partitions = (await ensure_topics(settings))[settings.events_topic]
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **settings.kafka_client_options())
    key = state_key(settings, user_id).encode()
    headers = [(CONTROL_HEADER, FORGET)] + ([(KEY_HEADER, PSEUDONYM)] if settings.pseudonymise_key else [])
    try:
        await producer.start()
        sent = [await producer.send(settings.events_topic, b"", key=key, partition=p, headers=headers)
                for p in range(partitions)]
        metas = [await fut for fut in sent]
    except KafkaError as exc:
        raise BrokerError(f"could not send the forget request to {settings.broker}: {exc}") from exc
    finally:
        await producer.stop()
    return [m.partition for m in metas]


async def push_catalog(settings: Settings, products: Iterable["Product"] = (),
                       deletes: Sequence[str] = ()) -> tuple[int, int]:
    """Publish products (upserts) and tombstones (deletes) to the catalog topic; returns counts."""
    from aiokafka import AIOKafkaProducer

    from stream.ops.topics import ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=20,
                                **settings.kafka_client_options())
    await producer.start()
    n_up = n_del = 0
    try:
        for p in products:
            await producer.send(settings.catalog_topic, orjson.dumps(p.to_dict()), key=p.id.encode())
            n_up += 1
        for pid in deletes:
            await producer.send(settings.catalog_topic, None, key=pid.encode())
            n_del += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n_up, n_del

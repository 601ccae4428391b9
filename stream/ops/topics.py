"""Create every topic explicitly, with its partition count, before anything writes to it.

A broker that auto-creates topics on first write picks its own partition count, and Faust then
refuses the table (PartitionsMismatch); so producers, workers and the demo call
:func:`ensure_topics` first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from stream.errors import BrokerError, ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)

SESSIONS_TABLE = "sessions"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


def changelog_topic(settings: Settings, table: str = SESSIONS_TABLE) -> str:
    return f"{settings.app_id}-{table}-changelog"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    p = settings.partitions
    return [
        TopicSpec(settings.events_topic, p),
        TopicSpec(settings.recommendations_topic, p),
        TopicSpec(settings.dead_letter_topic, p),
        TopicSpec(settings.catalog_topic, 1, compacted=True),
        TopicSpec(changelog_topic(settings), p, compacted=True),
        TopicSpec(settings.models_topic, 1, compacted=True),
        TopicSpec(settings.resolved_feedback_topic, p),
    ]


async def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> dict[str, int]:
    """Create missing topics; verify existing ones have the expected partition count.

    Returns {topic: partitions}. Raises :class:`ConfigError` on a partition mismatch.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    specs = topic_specs(settings) if specs is None else specs
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                client_id=f"{settings.app_id}-admin",
                                request_timeout_ms=15000, **settings.kafka_client_options())
    try:
        await admin.start()
    except KafkaError as exc:
        await _close(admin)
        raise BrokerError(f"cannot reach Kafka at {settings.broker}: {exc}") from exc
    try:
        existing = await _partition_counts(admin, [s.name for s in specs])
        missing = [s for s in specs if s.name not in existing]
        if missing:
            new = [NewTopic(s.name, s.partitions, settings.replication_factor,
                            topic_configs={"cleanup.policy": "compact"} if s.compacted else {})
                   for s in missing]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            for s in missing:
                log.info("created topic %s with %d partition(s)", s.name, s.partitions)
            existing.update(await _partition_counts(admin, [s.name for s in missing]))
        for s in specs:
            have = existing.get(s.name)
            if have is not None and have != s.partitions:
                raise ConfigError(f"topic {s.name!r} has {have} partitions, settings say {s.partitions}")
        return {s.name: existing.get(s.name, s.partitions) for s in specs}
    except KafkaError as exc:
        raise BrokerError(f"topic set-up failed on {settings.broker}: {exc}") from exc
    finally:
        await _close(admin)


async def _partition_counts(admin, names: list[str]) -> dict[str, int]:
    # Ask for all topics: a metadata request that names a missing topic makes some brokers
    # (tansu among them) auto-create it with their default partition count.
    out: dict[str, int] = {}
    wanted = set(names)
    for t in await admin.describe_topics(None):
        if t["topic"] in wanted and t.get("error_code", 0) == 0 and t.get("partitions"):
            out[t["topic"]] = len(t["partitions"])
    return out


async def _close(admin) -> None:
    try:
        await admin.close()
    except Exception:  # noqa: BLE001
        pass

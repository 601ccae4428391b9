"""Create every topic explicitly, with its partition count, before anything writes to it.

A broker that auto-creates topics on first write picks its own partition count, and Faust then
refuses the table (PartitionsMismatch); so producers, workers and the demo call
:func:`ensure_topics` first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from stream.errors import BrokerError, ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)

SESSIONS_TABLE = "sessions"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    configs: tuple[tuple[str, str], ...] = ()     # topic configs set at creation (and checked by --check)

    @property
    def config_dict(self) -> dict[str, str]:
        cleanup = {"cleanup.policy": "compact"} if self.compacted else {}
        return {**cleanup, **dict(self.configs)}


def changelog_topic(settings: Settings, table: str = SESSIONS_TABLE) -> str:
    return f"{settings.app_id}-{table}-changelog"


def deleted_within(deadline_s: float) -> tuple[tuple[str, str], ...]:
    """Configs under which Kafka deletes every record within ``deadline_s`` of its write.

    Retention deletes whole segments once their newest record is older than ``retention.ms``,
    and a segment is closed at the latest ``segment.ms`` after its first record: a record is gone
    within ``segment.ms + retention.ms`` (plus the broker's retention check, 5 minutes by default).
    """
    ms = int(deadline_s * 1000)
    return (("retention.ms", str(ms - ms // 4)), ("segment.ms", str(ms // 4)))


def erased_within(deadline_s: float) -> tuple[tuple[str, str], ...]:
    """Configs under which Kafka compaction removes a key's older values, and then the tombstone
    itself, within ``deadline_s`` of the tombstone's write.

    ``max.compaction.lag.ms`` (half the deadline) makes a record eligible for compaction, and rolls
    the active segment, at most that long after it was written; ``segment.ms`` (a quarter) closes
    segments of a quiet partition; ``delete.retention.ms`` (a quarter) is how long the tombstone is
    kept after the compaction that removed the older values. Together three quarters of the
    deadline, plus the log cleaner's own scheduling.
    """
    ms = int(deadline_s * 1000)
    return (("max.compaction.lag.ms", str(ms // 2)), ("segment.ms", str(ms // 4)),
            ("delete.retention.ms", str(ms // 4)))


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic shopstream writes, with the configs that bound how long a shopper stays in it
    (``erasure_deadline_s``; ``dead_letter_retention_s`` for dead letters; docs/operations.md,
    "Privacy")."""
    p = settings.partitions
    deadline = settings.erasure_deadline_s
    compacted_and_deleted = (("cleanup.policy", "compact,delete"), *erased_within(deadline),
                             ("retention.ms", str(int(deadline * 1000 * 3 // 4))))
    return [
        TopicSpec(settings.events_topic, p, configs=deleted_within(deadline)),
        # latest recommendation / hit per shopper, tombstoned by forget, deleted after the deadline
        TopicSpec(settings.recommendations_topic, p, configs=compacted_and_deleted),
        TopicSpec(settings.dead_letter_topic, p,
                  configs=deleted_within(min(settings.dead_letter_retention_s, deadline))),
        TopicSpec(settings.catalog_topic, 1, compacted=True),
        TopicSpec(changelog_topic(settings), p, compacted=True, configs=erased_within(deadline)),
        TopicSpec(settings.models_topic, 1, compacted=True),
        TopicSpec(settings.resolved_feedback_topic, p, configs=compacted_and_deleted),
    ]


def output_spec(settings: Settings, name: str, partitions: int) -> TopicSpec:
    """A topic a tool writes recommendations or dead letters to (replay, benchmarks): deleted within
    the erasure deadline, as no forget reaches it."""
    return TopicSpec(name, partitions, configs=deleted_within(settings.erasure_deadline_s))


async def start_client(client: Any, settings: Settings) -> Any:
    """``await client.start()`` for an aiokafka consumer or producer; :class:`BrokerError` (one line
    at the command line) when the cluster cannot be reached or refuses the connection."""
    from aiokafka.errors import KafkaError

    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        try:
            await client.stop()
        except Exception:  # noqa: BLE001 - the start failed: nothing more to say
            pass
        raise BrokerError(f"cannot reach Kafka at {settings.broker}: {exc}") from exc
    return client


async def _started_admin(settings: Settings) -> Any:
    """An admin client connected to the cluster; :class:`BrokerError` when it cannot be reached."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                client_id=f"{settings.app_id}-admin",
                                request_timeout_ms=15000, **settings.kafka_client_options())
    try:
        await admin.start()
    except KafkaError as exc:
        await _close(admin)
        raise BrokerError(f"cannot reach Kafka at {settings.broker}: {exc}") from exc
    return admin


async def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> dict[str, int]:
    """Create missing topics; verify existing ones have the expected partition count.

    Returns {topic: partitions}. Raises :class:`ConfigError` on a partition mismatch.
    """
    from aiokafka.admin import NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    specs = topic_specs(settings) if specs is None else specs
    admin = await _started_admin(settings)
    try:
        existing = await _partition_counts(admin, [s.name for s in specs])
        missing = [s for s in specs if s.name not in existing]
        if missing:
            new = [NewTopic(s.name, s.partitions, settings.replication_factor, topic_configs=s.config_dict)
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


@dataclass(frozen=True)
class ConfigDifference:
    topic: str
    name: str          # a config name, or "partitions", or "topic" (missing)
    want: str
    have: str | None   # None: not set on the topic (the broker's default applies) or no such topic

    def __str__(self) -> str:
        if self.name == "topic":
            return f"{self.topic}: missing"
        have = "not set" if self.have is None else repr(self.have)
        return f"{self.topic}: {self.name} is {have}, should be {self.want!r}"


async def check_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[ConfigDifference]:
    """What differs between the topics on the cluster and ``specs``: missing topics, partition
    counts, and every config of each spec (``DescribeConfigs``). Changes nothing.

    A config the broker does not return counts as not set (tansu returns only configs set
    explicitly; Apache Kafka returns defaults too, which then show as the value that differs).
    """
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    specs = topic_specs(settings) if specs is None else specs
    admin = await _started_admin(settings)
    try:
        counts = await _partition_counts(admin, [s.name for s in specs])
        present = [s for s in specs if s.name in counts]
        configs: dict[str, dict[str, str | None]] = {}
        if present:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in present])
            for response in responses:
                for resource in response.resources:
                    error_code, error_message, _, name, entries = resource[:5]
                    if error_code:
                        raise BrokerError(f"describing the configs of {name} failed: {error_message}")
                    configs[name] = {entry[0]: entry[1] for entry in entries}
    except KafkaError as exc:
        raise BrokerError(f"topic check failed on {settings.broker}: {exc}") from exc
    finally:
        await _close(admin)
    out: list[ConfigDifference] = []
    for s in specs:
        if s.name not in counts:
            out.append(ConfigDifference(s.name, "topic", "present", None))
            continue
        if counts[s.name] != s.partitions:
            out.append(ConfigDifference(s.name, "partitions", str(s.partitions), str(counts[s.name])))
        have = configs.get(s.name, {})
        for name, want in s.config_dict.items():
            if have.get(name) != want:
                out.append(ConfigDifference(s.name, name, want, have.get(name)))
    return out


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

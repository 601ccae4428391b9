"""True end offsets for table recovery, on brokers whose ListOffsets(latest) answer is short.

Faust recovers a table by reading its changelog up to the end offsets that ListOffsets reports.
tansu 0.x (the embedded broker) answers with the base offset of the partition's last record batch,
so a recovering worker would stop before that batch and lose the latest sessions on a restart or
rebalance. :func:`install` makes the worker check each end offset with a fetch from there, whose
response carries the real high-water mark; on Apache Kafka the two agree and nothing changes.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from stream.settings import Settings

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
_installed: dict[str, Any] = {}


async def checked_end_offsets(settings: Settings, listed: Mapping[Any, int]) -> dict[Any, int]:
    """``listed`` raised to the high-water mark a fetch from there reports, per partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    out = dict(listed)
    wanted = {TopicPartition(tp.topic, tp.partition): tp for tp, off in listed.items() if off is not None}
    if not wanted:
        return out
    probe = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                             enable_auto_commit=False, max_partition_fetch_bytes=64 * 1024,
                             **settings.kafka_client_options())
    await probe.start()
    try:
        probe.assign(list(wanted))
        for atp, tp in wanted.items():
            probe.seek(atp, listed[tp])
        pending = set(wanted)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            await probe.getmany(*pending, timeout_ms=200, max_records=1)
            for atp in list(pending):
                hw = probe.highwater(atp)
                if hw is not None:
                    pending.discard(atp)
                    if hw > listed[wanted[atp]]:
                        log.info("end offset of %s-%d is %d, not %d as listed", atp.topic, atp.partition,
                                 hw, listed[wanted[atp]])
                        out[wanted[atp]] = hw
    finally:
        await probe.stop()
    return out


def install(settings: Settings) -> None:
    """Make Faust's aiokafka consumer check the end offsets it recovers tables up to."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    _installed["settings"] = settings
    if "original" in _installed:
        return
    original = _installed["original"] = AIOKafkaConsumerThread._highwaters

    async def _highwaters(self, partitions):  # noqa: ANN001 - faust's signature
        listed = await original(self, partitions)
        if self.consumer.in_transaction:
            return listed
        return await checked_end_offsets(_installed["settings"], listed)

    AIOKafkaConsumerThread._highwaters = _highwaters

"""The broker's own ceiling: a plain aiokafka consumer group forwarding each message to another topic.

No Faust, no model, no state: what the broker, the client library and this machine carry.
``shopstream bench e2e`` runs it in a process of its own (as the worker runs), through the same
broker and partition count, with the same messages, and prints shopstream's fraction of it.

    python -m stream.tools.forwarder BROKER IN_TOPIC OUT_TOPIC GROUP

It prints ``forwarder ready`` once it holds its partitions and knows the output topic's, so that
a timed run starts with it warm, as a worker's starts after ``/ready``.
"""
from __future__ import annotations

import asyncio
import signal
import sys


async def forward(broker: str, source: str, target: str, group: str, fetch_max_wait_ms: int = 25) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(source, bootstrap_servers=broker, group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=True, fetch_max_wait_ms=fetch_max_wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5, acks=-1, max_batch_size=262144)
    await consumer.start()
    await producer.start()
    await producer.partitions_for(target)
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    print("forwarder ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            for msgs in batch.values():
                for m in msgs:
                    await producer.send(target, m.value, key=m.key)
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(forward(*sys.argv[1:5]))

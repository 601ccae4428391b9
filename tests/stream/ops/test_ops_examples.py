"""The client examples in docs/examples run as documented, against a real broker and worker."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "docs" / "examples"


def _env(settings) -> dict:
    return dict(os.environ, SHOPSTREAM_BROKER=settings.broker, SHOPSTREAM_EVENTS_TOPIC=settings.events_topic,
                SHOPSTREAM_RECOMMENDATIONS_TOPIC=settings.recommendations_topic,
                SHOPSTREAM_DEAD_LETTER_TOPIC=settings.dead_letter_topic, SHOPSTREAM_CATALOG_TOPIC=settings.catalog_topic,
                SHOPSTREAM_APP_ID=settings.app_id, SHOPSTREAM_PARTITIONS=str(settings.partitions),
                SHOPSTREAM_PARTITIONER=settings.partitioner,
                PYTHONPATH=str(REPO))


def _run(script: str, settings, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=_env(settings), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_storefront_examples_send_events_and_receive_their_recommendations(settings_factory, worker_factory):
    settings = settings_factory()
    worker_factory(settings)
    sent = _run("storefront_events.py", settings)
    assert sent.returncode == 0, sent.stderr
    assert "rejected before sending: unknown_type" in sent.stdout
    event_ids = sent.stdout.strip().splitlines()[-1].split(": ")[1].split(", ")
    assert len(event_ids) == 4

    # the four events may come out in fewer recommendations (micro-batching): stop on the timeout
    got = _run("storefront_recommendations.py", settings, "--user", "shopper-42", "--limit", "4",
               "--timeout", "15")
    assert got.returncode == 0, got.stderr
    reflected = {e for line in got.stdout.splitlines() for e in line.split("[", 1)[1].split("]")[0].split(", ")}
    assert reflected == set(event_ids), got.stdout


def test_confluent_kafka_examples_send_events_and_receive_their_recommendations(settings_factory, worker_factory):
    """The librdkafka storefront: CRC32 keys (SHOPSTREAM_PARTITIONER=crc32), any client reads recommendations."""
    pytest.importorskip("confluent_kafka", reason="the dev extra installs confluent-kafka")
    from stream.core.partitioner import partition_for
    from stream.ops.topics import ensure_topics
    from tests.conftest import run
    from tests.kafka_io import read_topic

    settings = settings_factory(partitioner="crc32")
    run(ensure_topics(settings))       # librdkafka writes to existing topics only (no auto-creation)
    worker_factory(settings)
    sent = _run("storefront_events_confluent.py", settings)
    assert sent.returncode == 0, sent.stderr
    assert "rejected before sending: unknown_type" in sent.stdout
    event_ids = sent.stdout.strip().splitlines()[-1].split(": ")[1].split(", ")
    assert len(event_ids) == 4
    events = run(read_topic(settings, settings.events_topic, until=lambda m: len(m) >= 4, timeout=20))
    assert {m.partition for m in events} == {partition_for("crc32", b"shopper-42", settings.partitions)}

    got = _run("storefront_recommendations_confluent.py", settings, "--user", "shopper-42", "--limit", "4",
               "--timeout", "15")
    assert got.returncode == 0, got.stderr
    reflected = {e for line in got.stdout.splitlines() for e in line.split("[", 1)[1].split("]")[0].split(", ")}
    assert reflected == set(event_ids), got.stdout

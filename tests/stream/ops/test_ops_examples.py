"""The client examples in docs/examples run as documented, against a real broker and worker."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "docs" / "examples"


def _env(settings) -> dict:
    return dict(os.environ, SHOPSTREAM_BROKER=settings.broker, SHOPSTREAM_EVENTS_TOPIC=settings.events_topic,
                SHOPSTREAM_RECOMMENDATIONS_TOPIC=settings.recommendations_topic,
                SHOPSTREAM_DEAD_LETTER_TOPIC=settings.dead_letter_topic, SHOPSTREAM_CATALOG_TOPIC=settings.catalog_topic,
                SHOPSTREAM_APP_ID=settings.app_id, SHOPSTREAM_PARTITIONS=str(settings.partitions),
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

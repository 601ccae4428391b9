"""Shared fixtures: a real broker on a random port, real weights, a real FAISS index.

Fixtures are factories: each test gets its own topics and consumer group on the one broker.
"""
from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA; none here (CI never has one)")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def embedded_broker():
    """The embedded tansu broker on a random port, for the whole test session (its process too)."""
    from stream.tools.broker import EmbeddedBroker

    b = EmbeddedBroker(log_file=REPO / "var" / "test-logs" / "broker.log")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def broker(embedded_broker):
    """The embedded broker's bootstrap address."""
    return embedded_broker.bootstrap


@pytest.fixture(scope="session")
def text_encoder():
    from engines import create_text_encoder

    enc = create_text_encoder("torch").load()
    yield enc
    enc.close()


@pytest.fixture(scope="session")
def catalog_products():
    """The first 800 products of the shipped Online Retail catalogue (real titles and prices)."""
    from index import default_catalog_path, load_catalog

    return load_catalog(default_catalog_path())[:800]


@pytest.fixture(scope="session")
def index_snapshot(tmp_path_factory, text_encoder, catalog_products):
    """A real snapshot of ``catalog_products`` embedded with the real model."""
    from index import build_index, save_snapshot

    index = build_index(catalog_products, text_encoder.encode, dim=text_encoder.dim,
                        model_version=text_encoder.model_version)
    return save_snapshot(index, tmp_path_factory.mktemp("index") / "snapshot")


@pytest.fixture
def settings_factory(broker, index_snapshot, tmp_path):
    """Settings with this test's own topics and consumer group on the shared broker."""
    from stream.settings import Settings
    from stream.tools.broker import free_port

    def make(**overrides):
        uid = uuid.uuid4().hex[:8]
        base = dict(broker=broker, app_id=f"t{uid}", events_topic=f"events-{uid}",
                    recommendations_topic=f"recs-{uid}", dead_letter_topic=f"dlq-{uid}",
                    catalog_topic=f"catalog-{uid}", models_topic=f"models-{uid}",
                    partitions=2, index_path=index_snapshot,
                    data_dir=tmp_path, web_port=free_port(), encoder_backend="torch",
                    batch_wait_ms=20, session_encoder="pooling",   # index_snapshot is in text space
                    session_timeout_s=6.0)   # the embedded broker holds a first join for half of it
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def worker_factory(tmp_path):
    """Start ``shopstream worker`` processes; all are stopped at teardown."""
    from stream.tools.demo import start_worker_process, stop_process, wait_ready

    procs = []

    def start(settings, *, wait: bool = True, extra_env: dict | None = None, name: str | None = None,
              cwd: Path | None = None):
        env = {"SHOPSTREAM_EVENTS_TOPIC": settings.events_topic,
               "SHOPSTREAM_RECOMMENDATIONS_TOPIC": settings.recommendations_topic,
               "SHOPSTREAM_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
               "SHOPSTREAM_CATALOG_TOPIC": settings.catalog_topic,
               "SHOPSTREAM_MODELS_TOPIC": settings.models_topic,
               "SHOPSTREAM_ENCODER_BACKEND": settings.encoder_backend,
               "SHOPSTREAM_BATCH_WAIT_MS": str(settings.batch_wait_ms),
               "SHOPSTREAM_BATCH_SIZE": str(settings.batch_size),
               "SHOPSTREAM_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
               **(extra_env or {})}
        log = tmp_path / f"{name or 'worker'}-{len(procs)}.log"
        proc = start_worker_process(settings, log, extra_env=env, cwd=cwd)
        proc.log_path = log
        procs.append(proc)
        if wait:
            try:
                wait_ready(settings.web_port, proc)
            except Exception:
                sys.stderr.write(log.read_text()[-5000:])
                raise
        return proc

    yield start
    for p in procs:
        stop_process(p)


def run(coro):
    return asyncio.run(coro)

"""Run one worker process: topics, services, Faust."""
from __future__ import annotations

import asyncio
import logging

from stream.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    from faust.worker import Worker

    from stream.app import create_app
    from stream.services import load_services
    from stream.topics import ensure_topics

    asyncio.run(ensure_topics(settings))
    services = load_services(settings)
    app = create_app(settings, services)
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()

"""Run one worker process: topics, services, Faust."""
from __future__ import annotations

import asyncio
import errno
import logging
import socket

from stream.errors import ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    from faust.worker import Worker

    from stream.live import heap
    from stream.live.app import create_app
    from stream.live.faust_compat import install_highwater_check
    from stream.live.services import load_services
    from stream.live.session_store import check_state_dir
    from stream.ops.fleet import join
    from stream.ops.logs import worker_logging_config
    from stream.ops.prometheus import create_metrics
    from stream.ops.topics import changelog_topic, ensure_topics

    check_web_port(settings)                  # before anything slow: a second worker on a host needs its own
    asyncio.run(ensure_topics(settings))
    asyncio.run(check_state_dir(settings, changelog_topic(settings)))   # local state that fits the changelog
    install_highwater_check(settings)         # tables recover to the true end of their changelog
    metrics = create_metrics()
    settings = asyncio.run(join(settings, metrics))     # a new host: default model and index from the registry
    services = load_services(settings, metrics=metrics)
    app = create_app(settings, services)
    log.info("start-up heap frozen: %d object(s) out of the collector's way", heap.freeze())
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
                    logging_config=worker_logging_config(settings.log_level, settings.log_format))
    worker.execute_from_commandline()


def check_web_port(settings: Settings) -> None:
    """:class:`ConfigError` when the worker's web port is taken (another worker on this host), instead
    of Faust's traceback once everything else has started."""
    if not settings.web_enabled:
        return
    with socket.socket(socket.AF_INET6 if ":" in settings.web_host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)       # as aiohttp binds: TIME_WAIT is no conflict
        try:
            s.bind((settings.web_host, settings.web_port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"cannot serve /ready on {settings.web_host}:{settings.web_port}: {exc}") from None
            raise ConfigError(f"web port {settings.web_port} on {settings.web_host} is in use (another worker on "
                              f"this host?): give each worker its own with --web-port or SHOPSTREAM_WEB_PORT") from None

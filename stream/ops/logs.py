"""Log formats: readable text for people, one JSON object per line for log pipelines.

Only the CLI configures handlers. Nothing in shopstream logs raw event payloads: log lines name
topics, partitions, counts and reasons, never an event's bytes.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import orjson

from stream.errors import ConfigError

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...extra fields, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def check_format(fmt: str) -> str:
    fmt = fmt.lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    return fmt


#: The Kafka client's loggers: their INFO lines (topics subscribed, metadata changed, group joined)
#: tell an operator of a worker how its group moves, and tell the user of a one-off command nothing.
CLIENT_LOGGERS = ("aiokafka",)
#: Libraries whose INFO lines say nothing to anyone but their developers: FAISS's loader reports
#: each CPU-specific build it did not find (with a ModuleNotFoundError in the text) before the one it loads.
QUIET_LOGGERS = ("faiss.loader",)


def configure_logging(level: str = "INFO", fmt: str = "text", *, quiet_client: bool = False) -> None:
    """Configure the root logger for a command (called by the CLI only). ``quiet_client``: the
    Kafka client logs its warnings and errors only, unless ``level`` asks for debugging."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if check_format(fmt) == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    info = logging.getLevelName(level.upper()) == logging.INFO
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet_client and info else logging.NOTSET)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if info else logging.NOTSET)


def worker_logging_config(level: str, fmt: str) -> dict | None:
    """A dictConfig for the Faust worker (which resets logging when it starts); None keeps faust's own."""
    if check_format(fmt) != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stdout", "level": level.upper()}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }

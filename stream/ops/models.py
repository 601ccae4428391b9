"""The ``models`` topic: which session-encoder versions exist and what state each is in.

A compacted topic with one partition; key = model version, value = a :class:`ModelRecord` as JSON.
The latest record of a version is its state. ``shopstream learn`` announces new versions as
``candidate`` and decides promotion (``default``) or withdrawal (``withdrawn``) from the online
comparison; workers follow the topic and serve the ``default`` and at most one ``candidate``
(hot-swapping each model together with the index built in its item space); ``shopstream models``
lists it. Every decision is a record here, with its reason.

States: ``candidate`` (serves ``share`` of shoppers) -> ``default`` (serves the rest) or
``withdrawn``; a ``default`` replaced by a newer one becomes ``retired``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from stream.errors import ConfigError

STATES = ("candidate", "default", "withdrawn", "retired")


@dataclass(frozen=True)
class ModelRecord:
    version: str                        # the artifact's model_version (as in session_model_version)
    state: str                          # one of STATES
    artifact: str                       # folder of the session-encoder artifact (registry)
    index: str = ""                     # folder of the index snapshot built in its item space ("" = text space)
    share: float = 0.0                  # a candidate's share of shoppers, 0..1
    offline: dict[str, Any] = field(default_factory=dict)   # e.g. {"ndcg@10": .., "serving_ndcg@10": ..}
    online: dict[str, Any] = field(default_factory=dict)    # the comparison a decision was made on
    reason: str = ""
    decided_at: str = ""                # ISO 8601, UTC
    decided_by: str = "learn"

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ConfigError(f"model state must be one of {', '.join(STATES)}, got {self.state!r}")
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"a candidate's share must be between 0 and 1, got {self.share}")

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ModelRecord":
        try:
            doc = orjson.loads(raw)
            return cls(**{k: doc[k] for k in doc if k in cls.__dataclass_fields__})
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            raise ConfigError(f"not a model record: {exc}") from None

    def moved_to(self, state: str, reason: str, online: dict | None = None, by: str = "learn") -> "ModelRecord":
        return ModelRecord(**{**asdict(self), "state": state, "reason": reason, "online": online or self.online,
                              "decided_at": now_iso(), "decided_by": by})


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def latest(records: list[tuple[bytes | None, bytes | None]]) -> dict[str, ModelRecord]:
    """The current record per version from the topic's (key, value) pairs in order."""
    out: dict[str, ModelRecord] = {}
    for key, value in records:
        if key is None:
            continue
        if value is None:
            out.pop(key.decode(), None)
            continue
        try:
            rec = ModelRecord.from_bytes(value)
        except ConfigError:
            continue
        out[rec.version] = rec
    return out


def serving(records: dict[str, ModelRecord]) -> tuple[ModelRecord | None, ModelRecord | None]:
    """(default, candidate) to serve: the latest-decided of each state."""
    def newest(state: str) -> ModelRecord | None:
        found = [r for r in records.values() if r.state == state]
        return max(found, key=lambda r: r.decided_at) if found else None

    return newest("default"), newest("candidate")

"""The ``models`` topic: which session-encoder versions exist and what state each is in.

A compacted topic with one partition; key = model version, value = a :class:`ModelRecord` as JSON.
The latest record of a version is its state. ``shopstream learn`` announces new versions as
``candidate`` and decides promotion (``default``) or withdrawal (``withdrawn``) from the online
comparison; workers follow the topic and serve the ``default`` and at most one ``candidate``
(hot-swapping each model together with the index built in its item space); ``shopstream models``
lists it. Every decision is a record here, with its reason.

States: ``candidate`` (serves ``share`` of shoppers) -> ``default`` (serves the rest) or
``withdrawn``; a ``default`` replaced by a newer one becomes ``retired``.

With a registry (``SHOPSTREAM_REGISTRY``, :mod:`stream.ops.registry`) ``artifact`` and ``index`` are
keys under it (``model/<sha256>.tar``) and ``artifact_sha256`` / ``index_sha256`` their hashes; every
worker fetches and verifies them before loading. Without one they are folders on the worker's host.

A record of any other shape (not JSON, not an object, a field of the wrong type, a key that is not
its version, a ``decided_at`` that is not ISO 8601 or lies more than :data:`MAX_CLOCK_SKEW_S` in the
future) is invalid: :func:`read_log` returns it with its partition and offset and every reader skips it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from stream.errors import ConfigError

STATES = ("candidate", "default", "withdrawn", "retired")
MAX_CLOCK_SKEW_S = 300.0                # a decided_at later than now + this is refused
_TEXT_FIELDS = ("version", "state", "artifact", "index", "artifact_sha256", "index_sha256", "reason",
                "decided_at", "decided_by")


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
    artifact_sha256: str = ""           # with a registry: the sha256 of the artifact's tar
    index_sha256: str = ""

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        if not self.version or len(self.version) > 200:
            raise ConfigError("version must be 1 to 200 characters")
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)):
            raise ConfigError(f"share must be a number, got {type(self.share).__name__}")
        if not isinstance(self.offline, dict) or not isinstance(self.online, dict):
            raise ConfigError("offline and online must be JSON objects")
        if self.state not in STATES:
            raise ConfigError(f"model state must be one of {', '.join(STATES)}, got {self.state!r}")
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"a candidate's share must be between 0 and 1, got {self.share}")

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes, *, now: datetime | None = None) -> "ModelRecord":
        """A record as read from the topic; ConfigError (one line, the reason) for any other shape."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"not a JSON object but {type(doc).__name__}")
        try:
            rec = cls(**{k: doc[k] for k in doc if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise ConfigError(f"not a model record: {exc}") from None
        if rec.decided_at:
            try:
                at = datetime.fromisoformat(rec.decided_at.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError(f"decided_at {rec.decided_at[:40]!r} is not ISO 8601") from None
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
            if at > (now or datetime.now(timezone.utc)) + timedelta(seconds=MAX_CLOCK_SKEW_S):
                raise ConfigError(f"decided_at {rec.decided_at} is in the future")
        return rec

    def moved_to(self, state: str, reason: str, online: dict | None = None, by: str = "learn") -> "ModelRecord":
        return ModelRecord(**{**asdict(self), "state": state, "reason": reason, "online": online or self.online,
                              "decided_at": now_iso(), "decided_by": by})


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class InvalidRecord:
    """A record of the models topic that is skipped, and why."""
    partition: int
    offset: int
    key: str
    reason: str


def parse(key: bytes | None, value: bytes | None) -> ModelRecord | None:
    """One message: its record, None for a tombstone; ConfigError (the reason) for anything else."""
    if key is None:
        raise ConfigError("no key")
    name = key.decode("utf-8", "replace")
    if value is None:
        return None
    rec = ModelRecord.from_bytes(value)
    if rec.version != name:
        raise ConfigError(f"key {name[:60]!r} is not the record's version {rec.version[:60]!r}")
    return rec


def read_log(rows) -> tuple[dict[str, ModelRecord], list[InvalidRecord]]:
    """The current record per version and the invalid records, from the topic's messages in order:
    (key, value) pairs or (key, value, partition, offset)."""
    out: dict[str, ModelRecord] = {}
    bad: list[InvalidRecord] = []
    for n, row in enumerate(rows):
        key, value = row[0], row[1]
        partition, offset = (row[2], row[3]) if len(row) >= 4 else (0, n)
        try:
            rec = parse(key, value)
        except ConfigError as exc:
            bad.append(InvalidRecord(partition, offset, (key or b"").decode("utf-8", "replace")[:80], str(exc)))
            continue
        if rec is None:
            out.pop(key.decode("utf-8", "replace"), None)
        else:
            out[rec.version] = rec
    return out, bad


def latest(records) -> dict[str, ModelRecord]:
    """The current record per version from the topic's (key, value) pairs in order (invalid ones skipped)."""
    return read_log(records)[0]


def serving(records: dict[str, ModelRecord]) -> tuple[ModelRecord | None, ModelRecord | None]:
    """(default, candidate) to serve: the latest-decided of each state."""
    def newest(state: str) -> ModelRecord | None:
        found = [r for r in records.values() if r.state == state]
        return max(found, key=lambda r: r.decided_at) if found else None

    return newest("default"), newest("candidate")

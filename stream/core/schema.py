"""The behaviour-event schema (``schemas/event.v1.json``) as a fast validator.

Validation is hand-written rather than generic JSON Schema so that it costs microseconds per
event; ``tests/stream/test_schema.py`` keeps it and the published schema file in step.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import orjson

from stream.errors import InvalidEvent

SCHEMA_VERSION = 1
EVENT_TYPES = frozenset({"view", "click", "search", "add_to_cart", "purchase"})
ITEM_TYPES = frozenset({"view", "click", "add_to_cart", "purchase"})
FIELDS = frozenset({"schema_version", "event_id", "type", "user_id", "session_id", "ts", "item_id",
                    "query", "results", "context"})
MAX_ID = 128
MAX_QUERY = 512
MAX_RESULTS = 200

#: Event time as text: an RFC 3339 date-time whose UTC offset may be left out (then it is UTC), the
#: same pattern as ``ts`` in the schema file. Parsed here rather than by ``datetime.fromisoformat``,
#: which accepts far more (dates alone, week dates, no separators) and differently by Python version.
ISO_TS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
                    r"(Z|[+-][0-9]{2}:[0-9]{2})?")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


def schema_path(name: str = "event") -> Path:
    return SCHEMA_DIR / f"{name}.v{SCHEMA_VERSION}.json"


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: str
    user_id: str
    session_id: str
    ts: float                      # seconds since epoch (UTC)
    item_id: str | None = None
    query: str | None = None
    results: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"event_id": self.event_id, "type": self.type, "user_id": self.user_id,
                             "session_id": self.session_id, "ts": int(round(self.ts * 1000))}
        if self.item_id is not None:
            d["item_id"] = self.item_id
        if self.query is not None:
            d["query"] = self.query
        if self.results is not None:
            d["results"] = list(self.results)
        return d


def _string(obj: dict, name: str, max_len: int, *, required: bool = True) -> str | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise InvalidEvent("missing_field", f"'{name}' is required")
        return None
    if not isinstance(v, str):
        raise InvalidEvent("wrong_type", f"'{name}' must be a string, got {type(v).__name__}")
    if not v or v.isspace():                 # what strip() would empty, without the copy
        raise InvalidEvent("wrong_type", f"'{name}' must not be empty")
    if len(v) > max_len:
        raise InvalidEvent("too_long", f"'{name}' is longer than {max_len} characters")
    return v


def parse_ts(v: Any) -> float:
    if isinstance(v, bool):
        raise InvalidEvent("wrong_type", "'ts' must be an ISO-8601 string or epoch milliseconds")
    if isinstance(v, int):
        return v / 1000.0
    if isinstance(v, float) and v.is_integer():     # 1.7e12 is an integer to JSON Schema too
        return v / 1000.0
    if isinstance(v, str):
        m = ISO_TS.fullmatch(v)
        if m is None:
            raise InvalidEvent("bad_timestamp", f"'ts' {v[:40]!r} is not an ISO-8601 date-time")
        year, month, day, hour, minute, second, frac, offset = m.groups()
        try:
            tz = timezone.utc
            if offset and offset != "Z":
                hours, minutes = int(offset[1:3]), int(offset[4:6])
                if hours > 23 or minutes > 59:
                    raise ValueError("UTC offset out of range")
                tz = timezone((-1 if offset[0] == "-" else 1) * timedelta(hours=hours, minutes=minutes))
            dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          int((frac or "0").ljust(6, "0")), tzinfo=tz)
        except ValueError:
            raise InvalidEvent("bad_timestamp", f"'ts' {v[:40]!r} is not a valid date-time") from None
        return (dt - EPOCH).total_seconds()
    raise InvalidEvent("wrong_type", "'ts' must be an ISO-8601 string or epoch milliseconds")


class EventValidator:
    """Bytes in, :class:`Event` out, or :class:`InvalidEvent` with a reason code.

    ``known_product`` answers whether an item id names a product in the catalogue; events that
    need a product and name an unknown one are invalid.
    """

    def __init__(self, *, max_bytes: int = 16_384, min_ts: float = 946684800.0,
                 max_future_skew_s: float = 3600.0,
                 known_product: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_bytes = max_bytes
        self.min_ts = min_ts
        self.max_future_skew_s = max_future_skew_s
        self.known_product = known_product
        self.clock = clock

    def parse(self, raw: bytes | None, key: bytes | None = None) -> Event:
        if raw is None:
            raise InvalidEvent("empty", "message has no value")
        if len(raw) > self.max_bytes:
            raise InvalidEvent("oversized", f"{len(raw)} bytes, the limit is {self.max_bytes}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("not_json", str(exc)[:200]) from None
        if not isinstance(obj, dict):
            raise InvalidEvent("not_object", f"expected a JSON object, got {type(obj).__name__}")
        return self.validate(obj)

    def validate(self, obj: dict) -> Event:
        if not FIELDS.issuperset(obj):
            unknown = obj.keys() - FIELDS
            raise InvalidEvent("unknown_field", f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
        sv = obj.get("schema_version", SCHEMA_VERSION)
        if sv != SCHEMA_VERSION or isinstance(sv, bool):
            raise InvalidEvent("unsupported_version", f"schema_version {sv!r} is not {SCHEMA_VERSION}")
        etype = obj.get("type")
        if etype is None:
            raise InvalidEvent("missing_field", "'type' is required")
        if not isinstance(etype, str) or etype not in EVENT_TYPES:
            raise InvalidEvent("unknown_type", f"type {str(etype)[:40]!r} is not one of "
                                               f"{', '.join(sorted(EVENT_TYPES))}")
        event_id = _string(obj, "event_id", MAX_ID)
        user_id = _string(obj, "user_id", MAX_ID)
        session_id = _string(obj, "session_id", MAX_ID)
        if "ts" not in obj:
            raise InvalidEvent("missing_field", "'ts' is required")
        ts = parse_ts(obj["ts"])
        if ts < self.min_ts:
            raise InvalidEvent("bad_timestamp", f"'ts' is before {datetime.fromtimestamp(self.min_ts, timezone.utc):%Y-%m-%d}")
        if ts > self.clock() + self.max_future_skew_s:
            raise InvalidEvent("bad_timestamp", "'ts' is in the future")
        item_id = query = None
        results = None
        if etype == "search":
            if "item_id" in obj:
                raise InvalidEvent("unexpected_field", "'item_id' is not allowed on search events")
            query = _string(obj, "query", MAX_QUERY)
            if "results" in obj:               # optional, but null is not a list
                raw_results = obj["results"]
                if not isinstance(raw_results, list):
                    raise InvalidEvent("wrong_type", "'results' must be a list of product ids")
                if len(raw_results) > MAX_RESULTS:
                    raise InvalidEvent("too_long", f"'results' has more than {MAX_RESULTS} entries")
                for r in raw_results:
                    if not isinstance(r, str) or not r or len(r) > MAX_ID:
                        raise InvalidEvent("wrong_type", "'results' must hold non-empty product id strings")
                results = tuple(raw_results)
        else:
            for name in ("query", "results"):
                if name in obj:
                    raise InvalidEvent("unexpected_field", f"'{name}' is only allowed on search events")
            item_id = _string(obj, "item_id", MAX_ID)
            if self.known_product is not None and not self.known_product(item_id):
                raise InvalidEvent("unknown_product", f"item_id {item_id[:40]!r} is not in the catalogue")
        if "context" in obj and not isinstance(obj["context"], dict):    # optional, but null is not an object
            raise InvalidEvent("wrong_type", "'context' must be an object")
        return Event(event_id, etype, user_id, session_id, ts, item_id, query, results)


def encode_event(event: dict[str, Any] | Event) -> bytes:
    return orjson.dumps(event.to_dict() if isinstance(event, Event) else event)

"""Control messages on the events topic: a header names the verb, the key names the user.

``shopstream forget USER`` sends ``(CONTROL_HEADER, FORGET)`` with the user as key and an empty
value, once to every partition of the events topic (see :mod:`stream.ops.erasure`). With
pseudonymisation on, the key is the user's pseudonym, not the raw id, and the record says so with
``(KEY_HEADER, PSEUDONYM)``: the raw id is then never written to Kafka by shopstream.

A message that carries the control header is a control message, whatever else it holds. One that
is not a valid forget request -- another verb, no key, a key that is not UTF-8 or longer than a
user id may be (:data:`MAX_KEY_BYTES`) -- is dead-lettered with reason ``invalid_control``, logged
once with its topic, partition and offset, and counted in
``shopstream_control_records_skipped_total{kind="forget"}``; it never stops the worker.

Headers a worker keeps from a message (:func:`bounded_headers`): the first :data:`MAX_HEADERS`,
each key cut to :data:`MAX_HEADER_KEY_CHARS` characters and value to :data:`MAX_HEADER_VALUE_BYTES`
bytes. The control header is looked for among those.
"""
from __future__ import annotations

from typing import Iterable

CONTROL_HEADER = "shopstream.control"
FORGET = b"forget"
VERBS = frozenset({FORGET})

MAX_KEY_BYTES = 128             # the longest user id an event may carry (stream.core.schema.MAX_ID)
MAX_HEADERS = 32
MAX_HEADER_KEY_CHARS = 256
MAX_HEADER_VALUE_BYTES = 4096
KEY_HEADER = "shopstream.key"        # what the key of a control record is
PSEUDONYM = b"pseudonym"             # ... the user's pseudonym (absent: the raw user id)


def control_verb(headers) -> bytes | None:
    """The control verb in a message's headers, or None for an ordinary event."""
    for k, v in headers or ():
        if k == CONTROL_HEADER:
            return v
    return None


def is_control(headers) -> bool:
    """True when the message carries the control header (with any value)."""
    return any(k == CONTROL_HEADER for k, _ in headers or ())


def control_problem(key: bytes | None, headers) -> tuple[str, str] | None:
    """Why a control message is not a valid request, as (reason, detail); None when it is one."""
    verbs = {v for k, v in headers or () if k == CONTROL_HEADER}
    unknown = verbs - VERBS
    if unknown:
        shown = sorted(repr(v[:40]) if isinstance(v, bytes) else repr(v) for v in unknown)
        return "unknown_verb", f"control verb {', '.join(shown)} (known: {sorted(v.decode() for v in VERBS)})"
    if not key:
        return "no_key", "a forget request without a key (the key must be the user id)"
    if len(key) > MAX_KEY_BYTES:
        return "key_too_long", (f"a forget request whose key has {len(key)} bytes "
                                f"(a user id has at most {MAX_KEY_BYTES})")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return "key_not_utf8", f"a forget request whose key {key[:40]!r} is not UTF-8"
    return None


def bounded_headers(headers: Iterable | None) -> tuple[tuple[str, bytes | None], ...]:
    """``headers`` as kept in memory: at most :data:`MAX_HEADERS`, each key and value cut to its limit."""
    if not headers:
        return ()
    out = []
    for k, v in headers:
        if len(out) == MAX_HEADERS:
            break
        key = k if isinstance(k, str) else bytes(k).decode("utf-8", "replace")
        if v is not None and not isinstance(v, bytes):
            v = bytes(v)
        out.append((key[:MAX_HEADER_KEY_CHARS], v[:MAX_HEADER_VALUE_BYTES] if v is not None else None))
    return tuple(out)
def key_is_pseudonym(headers) -> bool:
    """True when a control record's key is already the user's pseudonym."""
    return any(k == KEY_HEADER and v == PSEUDONYM for k, v in headers or ())

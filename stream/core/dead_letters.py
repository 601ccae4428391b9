"""Dead letters: a message the pipeline cannot use, copied with its reason so nothing is lost.

A dead letter can always be written: its value is cut to ``max_bytes`` (the original size and a
SHA-256 of the whole value go in headers), so even a message the broker itself would refuse to
take again fits.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

HEADER = "shopstream.dead-letter."
MAX_DETAIL = 500


@dataclass(frozen=True)
class Message:
    """One consumed record, free of any Kafka client's types."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()
    received_at: float = 0.0          # monotonic time the worker first saw it (holds are timed from it)


@dataclass(frozen=True)
class DeadLetter:
    message: Message
    reason: str                        # a short code: not_json, oversized, unknown_product, processing_error, ...
    detail: str
    pseudonymised: bool = False        # user and session ids (and the key) replaced by pseudonyms


def dead_letter_record(dl: DeadLetter, max_bytes: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of the dead-letter copy of ``dl.message``, at most ``max_bytes`` of value."""
    msg = dl.message
    value, key = msg.value, msg.key
    headers = [(HEADER + "reason", dl.reason.encode()),
               (HEADER + "detail", dl.detail[:MAX_DETAIL].encode("utf-8", "replace")),
               (HEADER + "topic", msg.topic.encode()),
               (HEADER + "partition", str(msg.partition).encode()),
               (HEADER + "offset", str(msg.offset).encode())]
    if dl.pseudonymised:
        headers.append((HEADER + "pseudonymised", b"user_id,session_id,key"))
    if value is not None:
        headers.append((HEADER + "original-size", str(len(value)).encode()))
        headers.append((HEADER + "sha256", hashlib.sha256(value).hexdigest().encode()))
        if len(value) > max_bytes:
            value = value[:max_bytes]
            headers.append((HEADER + "truncated", b"value"))
    if key is not None and len(key) > 1024:
        headers.append((HEADER + "key-sha256", hashlib.sha256(key).hexdigest().encode()))
        key = key[:1024]
        headers.append((HEADER + "truncated", b"key"))
    return key, value, headers

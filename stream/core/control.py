"""Control messages on the events topic: a header names the verb, the key names the user.

``shopstream forget USER`` sends ``(CONTROL_HEADER, FORGET)`` with the user as key and an empty
value, once to every partition of the events topic (see :mod:`stream.ops.erasure`). With
pseudonymisation on, the key is the user's pseudonym, not the raw id, and the record says so with
``(KEY_HEADER, PSEUDONYM)``: the raw id is then never written to Kafka by shopstream.
"""
from __future__ import annotations

CONTROL_HEADER = "shopstream.control"
FORGET = b"forget"
KEY_HEADER = "shopstream.key"        # what the key of a control record is
PSEUDONYM = b"pseudonym"             # ... the user's pseudonym (absent: the raw user id)


def control_verb(headers) -> bytes | None:
    """The control verb in a message's headers, or None for an ordinary event."""
    for k, v in headers or ():
        if k == CONTROL_HEADER:
            return v
    return None


def key_is_pseudonym(headers) -> bool:
    """True when a control record's key is already the user's pseudonym."""
    return any(k == KEY_HEADER and v == PSEUDONYM for k, v in headers or ())

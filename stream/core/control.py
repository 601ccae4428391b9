"""Control messages on the events topic: a header names the verb, the key names the user.

``shopstream forget USER`` sends ``(CONTROL_HEADER, FORGET)`` with the user id as key and an
empty value, once to every partition of the events topic (see :mod:`stream.ops.erasure`).
"""
from __future__ import annotations

CONTROL_HEADER = "shopstream.control"
FORGET = b"forget"


def control_verb(headers) -> bytes | None:
    """The control verb in a message's headers, or None for an ordinary event."""
    for k, v in headers or ():
        if k == CONTROL_HEADER:
            return v
    return None

"""Pseudonymous user ids: a keyed hash in place of every user id. Pure; erasure requests live in :mod:`stream.ops.erasure`.

With ``settings.pseudonymise_key`` set, every user id is replaced by a keyed hash (HMAC-SHA256)
as soon as an event is validated, so state, logs and recommendations only ever see the hash.
The same key always gives the same pseudonym, so a shopper's session still builds up; without the
key the pseudonym cannot be turned back into the user id, nor computed from a guessed one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging

from stream.core.schema import Event
from stream.errors import ConfigError

log = logging.getLogger(__name__)

PSEUDONYM_PREFIX = "p-"
PSEUDONYM_HEX = 32          # 128 bits of the HMAC: collisions are not a practical concern
SESSION_SALT = "session\x1f"  # a session id never hashes to the same pseudonym as an equal user id


def pseudonym(key: str | bytes, user_id: str) -> str:
    """The keyed hash that stands for ``user_id``: ``p-`` and 32 hex digits."""
    if not key:
        raise ConfigError("a pseudonymisation key must not be empty")
    raw_key = key.encode() if isinstance(key, str) else key
    digest = hmac.new(raw_key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX]


class Pseudonymiser:
    """Event -> Event with user and session ids replaced by their keyed hashes (for
    the pipeline core and the replay); :meth:`user_id` maps a bare user id.

    The session id is hashed as well (storefronts often derive it from a cookie or the user id);
    event ids, products and queries are kept.
    """

    def __init__(self, key: str | bytes) -> None:
        if not key:
            raise ConfigError("a pseudonymisation key must not be empty")
        self._key = key
        self._cache: dict[str, str] = {}

    def user_id(self, value: str) -> str:
        out = self._cache.get(value)
        if out is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            out = self._cache[value] = pseudonym(self._key, value)
        return out

    def __call__(self, event: Event) -> Event:
        return dataclasses.replace(event, user_id=self.user_id(event.user_id),
                                   session_id=self.user_id(SESSION_SALT + event.session_id))

    def __repr__(self) -> str:
        return "Pseudonymiser(key=**********)"


def pseudonymiser(key: str | bytes) -> Pseudonymiser:
    """An Event -> Event callable for the pipeline core."""
    return Pseudonymiser(key)

"""One micro-batch of raw Kafka events: validate, dead-letter, fold, recommend, publish.

Kept apart from the Faust wiring (``stream.live.app``) so its steps read in order.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import orjson

from stream.core import session_state
from stream.core.recommender import UserBatch
from stream.core.schema import Event
from stream.errors import InvalidEvent
from stream.live.services import Services

log = logging.getLogger(__name__)

DLQ_HEADER = "shopstream.dead-letter."
CONTROL_HEADER = "shopstream.control"
FORGET = b"forget"


def control_of(ev: Any) -> bytes | None:
    """The control verb of a message (``shopstream forget`` sends ``forget``), or None for events."""
    for k, v in (ev.message.headers or ()):
        if k == CONTROL_HEADER:
            return v
    return None


def dead_letter_headers(err: InvalidEvent, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [(DLQ_HEADER + "reason", err.reason.encode()), (DLQ_HEADER + "detail", err.detail[:500].encode()),
            (DLQ_HEADER + "topic", topic.encode()), (DLQ_HEADER + "partition", str(partition).encode()),
            (DLQ_HEADER + "offset", str(offset).encode())]


def _set_current_event(event: Any) -> None:
    """Faust routes a table write's changelog record by the *current* event's partition.

    A micro-batch spans partitions, so before writing one user's state we make that user's own
    event current (the user's events all arrive on the partition their key hashes to).
    """
    from faust.streams import _current_event

    _current_event.set(weakref.ref(event))


class BatchHandler:
    def __init__(self, services: Services, *, sessions, recommendations_topic, dead_letter_topic,
                 events_topic) -> None:
        self.s = services
        self.sessions = sessions
        self.recommendations_topic = recommendations_topic
        self.dead_letter_topic = dead_letter_topic
        self.events_topic = events_topic
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recommend")
        self.pseudonymise = None     # Event -> Event, set when a pseudonymisation key is configured
        self.pseudonymise_id = None  # str -> str, the same keyed hash for control messages

    async def handle(self, events: Sequence[Any]) -> None:
        metrics = self.s.metrics
        by_user: OrderedDict[str, list[tuple[Event | None, Any]]] = OrderedDict()
        for ev in events:
            msg = ev.message
            if control_of(ev) == FORGET and isinstance(ev.key, bytes):
                # erase the user's session: None in the user's list resets the state there
                user_id = ev.key.decode("utf-8", "replace")
                if self.pseudonymise_id is not None:
                    user_id = self.pseudonymise_id(user_id)
                by_user.setdefault(user_id, []).append((None, ev))
                log.info("forget request for a user: session state erased")
                continue
            try:
                try:
                    parsed = self.s.validator.parse(ev.value)
                except InvalidEvent:
                    raise
                except Exception as exc:  # noqa: BLE001 - no single message may stop the worker
                    raise InvalidEvent("unprocessable", f"{type(exc).__name__}: {exc}") from exc
            except InvalidEvent as err:
                metrics.on_dead_letter(err.reason)
                await self.dead_letter_topic.send(
                    key=ev.key, value=ev.value,
                    headers=dead_letter_headers(err, msg.topic, msg.partition, msg.offset))
                continue
            key = ev.key.decode("utf-8", "replace") if isinstance(ev.key, bytes) else ev.key
            if key != parsed.user_id:
                # keyed wrongly: send it back keyed by user so it lands on the user's partition
                await self.events_topic.send(key=parsed.user_id.encode(), value=ev.value)
                continue
            metrics.on_event_in(parsed.type)
            if self.pseudonymise is not None:
                parsed = self.pseudonymise(parsed)
            by_user.setdefault(parsed.user_id, []).append((parsed, ev))
        if not by_user:
            return

        batch: list[UserBatch] = []
        last_event: list[Any] = []
        for user_id, items in by_user.items():
            state = session_state.loads(self.sessions.get(user_id.encode()))
            for parsed, _ in items:
                state = None if parsed is None else session_state.fold(state, parsed, self.s.limits)
            if any(p is None for p, _ in items):   # forgotten: a tombstone in the changelog first
                _set_current_event(items[-1][1])
                self.sessions.pop(user_id.encode(), None)
            if state is None:                       # and no event since
                continue
            state["p"] = items[-1][1].message.partition    # where its changelog records go (sweeps)
            state["seen_at"] = time.time()
            batch.append(UserBatch(user_id, state, [p for p, _ in items if p is not None]))
            last_event.append(items[-1][1])
        if not batch:
            return
        metrics.on_batch(sum(len(ub.events) for ub in batch), len(batch))

        loop = asyncio.get_running_loop()
        recs = await loop.run_in_executor(self._executor, self.s.recommender.recommend, batch)

        for ub, ev in zip(batch, last_event):
            _set_current_event(ev)
            self.sessions[ub.user_id.encode()] = session_state.dumps(ub.state)
        now = time.time()
        for ub, rec in zip(batch, recs):
            await self.recommendations_topic.send(key=ub.user_id.encode(), value=orjson.dumps(rec))
            metrics.observe_end_to_end(now - max(e.ts for e in ub.events))
        metrics.on_recommendation_out(len(recs))

    def sweep(self, retention_s: float, now: float | None = None) -> int:
        """Delete sessions untouched for ``retention_s`` (wall clock); returns how many.

        Runs from a timer, outside any event, so each tombstone goes to the changelog partition
        recorded in the state when it was last written."""
        now = time.time() if now is None else now
        expired = []
        for key, raw in list(self.sessions.items()):
            state = session_state.loads(raw)
            if state is None or now - state.get("seen_at", now) > retention_s:
                expired.append((key, (state or {}).get("p")))
        for key, partition in expired:
            self.sessions.data.pop(key, None)
            if partition is not None:
                self.sessions.send_changelog(partition, key, None)
        return len(expired)

    def close(self) -> None:
        self._executor.shutdown(wait=False)

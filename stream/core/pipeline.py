"""The pipeline core: a batch of messages and a way to read sessions in, everything to write out.

    messages + read_state  ->  recommendations, session writes, dead letters, re-sent events, held

It is pure: no Kafka, no Faust, no clock but the ones it is given. The live worker
(:mod:`stream.live.batches`) and replay (:mod:`stream.replay.run`) both drive it; tests drive it
from Python lists. Nothing is written here: the driver publishes the result and only then acks.

Failure semantics: :meth:`Pipeline.process` raises if anything inside a batch fails (an encoder,
an index, a session value); :meth:`Pipeline.process_isolating` never does -- it splits the batch by
shopper (bisecting) until the failure is pinned to single messages, dead-letters those with reason
``processing_error`` and the exception, and processes everything else.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import orjson

from stream.core import session_state
from stream.core.control import control_problem, is_control, key_is_pseudonym
from stream.core.dead_letters import DeadLetter, Message
from stream.core.metrics import Metrics
from stream.core.partitioner import partition_for
from stream.core.recommender import Recommender, UserBatch
from stream.core.schema import Event, EventValidator
from stream.core.session_state import FeedbackHorizon, SessionLimits
from stream.errors import InvalidEvent, StateStoreError

log = logging.getLogger(__name__)

StateReader = Callable[[int, bytes], "bytes | None"]   # (partition, key) -> session value or None


@dataclass(frozen=True)
class StateWrite:
    """A session value (or a tombstone, ``value`` None) for the sessions table, on ``partition``."""

    partition: int
    key: bytes
    value: bytes | None


@dataclass(frozen=True)
class Resend:
    """An event keyed wrongly by its producer, to be sent again keyed by its user."""

    key: bytes
    value: bytes
    partition: int | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class BatchResult:
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    latest_event_ts: list[float] = field(default_factory=list)    # per recommendation (latency)
    state_writes: list[StateWrite] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    resends: list[Resend] = field(default_factory=list)
    held: list[Message] = field(default_factory=list)     # not handled yet: try again in a later batch
    done: list[Message] = field(default_factory=list)     # handled: ack once the result is published
    hits: list[dict[str, Any]] = field(default_factory=list)   # online feedback: a shown product taken up
    forgotten: list[str] = field(default_factory=list)    # users erased: tombstone their recommendations, hits

    def extend(self, other: "BatchResult") -> "BatchResult":
        for name in ("recommendations", "latest_event_ts", "state_writes", "dead_letters", "resends",
                     "held", "done", "hits", "forgotten"):
            getattr(self, name).extend(getattr(other, name))
        return self


class InjectedFailure(RuntimeError):
    """Raised by the test-only fault hook (``Settings.fault_event_ids``)."""


@dataclass
class Pipeline:
    """What the core needs, loaded once per worker (or per replay)."""

    validator: EventValidator
    recommender: Recommender                                 # or a VariantRecommender (A/B variants)
    limits: SessionLimits = field(default_factory=SessionLimits)
    horizon: FeedbackHorizon = field(default_factory=FeedbackHorizon)
    metrics: Metrics = field(default_factory=Metrics)
    pseudonymise: Callable[[Event], Event] | None = None     # Event -> Event with hashed ids
    pseudonymise_id: Callable[[str], str] | None = None      # the same hash for a bare user id
    partitioner: str = "murmur2"                             # how the shop's producers partition by key
    partitions: int | None = None                            # of the events topic; None: don't check
    hold_unknown_s: float = 0.0                              # hold events naming a product not known yet
    fail_event_ids: frozenset[str] = frozenset()             # test-only: the encoder "fails" on these
    resend_wrong_keys: bool = True                           # False (replay): a wrongly keyed event is its user's
    produced_at_event_time: bool = False                     # True (replay): produced_at is the batch's event time
    monotonic: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    _warned_partition: bool = False
    _reported_control: dict[int, int] = field(default_factory=dict)   # partition -> last invalid control offset logged

    # -----------------------------------------------------------------------------------------
    def process(self, messages: Sequence[Message], read_state: StateReader) -> BatchResult:
        """Validate, fold and recommend; raises if any step fails for any message."""
        out = BatchResult()
        now = self.monotonic()
        by_user: OrderedDict[str, list[tuple[Event | None, Message]]] = OrderedDict()
        held_users: set[str] = set()       # users (as state keys) with a held message: their later ones wait too
        checked: set[int] = set()          # partitions whose keying this batch has checked
        for msg in messages:
            if msg.headers and is_control(msg.headers):
                problem = control_problem(msg.key, msg.headers)
                if problem is not None:
                    self._invalid_control(msg, *problem)
                    out.dead_letters.append(self._dead_letter(msg, "invalid_control", problem[1]))
                    out.done.append(msg)
                    continue
                subject = msg.key.decode("utf-8", "replace")
                # the request carries the pseudonym when pseudonymisation is on (control.py)
                user_id = subject if key_is_pseudonym(msg.headers) else self._state_user(subject)
                if user_id in held_users:
                    out.held.append(msg)
                    continue
                by_user.setdefault(user_id, []).append((None, msg))
                out.done.append(msg)
                continue
            try:
                parsed = self._parse(msg)
            except InvalidEvent as err:
                if err.reason == "unknown_product" and now - msg.received_at < self.hold_unknown_s:
                    held_users.add(self._state_user(_user_of(msg.value)))   # the catalogue may not have it yet
                    out.held.append(msg)
                    continue
                self.metrics.on_dead_letter(err.reason)
                out.dead_letters.append(self._dead_letter(msg, err.reason, err.detail))
                out.done.append(msg)
                continue
            if held_users and self._state_user(parsed.user_id) in held_users:
                out.held.append(msg)
                continue
            key = msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else msg.key
            user_key = parsed.user_id.encode()
            if key != parsed.user_id and self.resend_wrong_keys:
                # keyed wrongly: send it again keyed by user, to the partition the shop's own
                # producers send that user's events to, so the session stays in one place
                part = partition_for(self.partitioner, user_key, self.partitions) if self.partitions else None
                out.resends.append(Resend(user_key, msg.value, part, msg.headers))
                out.done.append(msg)
                continue
            if msg.partition not in checked:    # one event per partition and batch: a murmur2 in
                checked.add(msg.partition)      # Python per event was 5% of the core (issue 13)
                self._check_partition(user_key, msg)
            self.metrics.on_event_in(parsed.type)
            if self.pseudonymise is not None:
                parsed = self.pseudonymise(parsed)
            by_user.setdefault(parsed.user_id, []).append((parsed, msg))
            out.done.append(msg)

        users: list[UserBatch] = []
        partitions: list[int] = []
        user_hits: list[list[dict[str, Any]]] = []
        for user_id, items in by_user.items():
            key = user_id.encode()
            partition = items[-1][1].partition
            state = self._read(read_state, partition, key)
            erased_on: list[int] = []
            hits: list[dict[str, Any]] = []
            events: list[Event] = []
            for parsed, msg in items:
                if parsed is None:
                    # nothing from before the request may reach what is written after it: not the
                    # session, not a hit, not the recommendation's event ids or search
                    state = None
                    hits = []
                    events = []
                    if msg.partition not in erased_on:
                        erased_on.append(msg.partition)
                else:
                    events.append(parsed)
                    for hit in session_state.credit(state, parsed, self.horizon):
                        hit["user_id"] = user_id
                        hits.append(hit)
                    state = session_state.fold(state, parsed, self.limits)
            # a forget request erases the session on the partition it arrived on: sent to every
            # partition, it reaches the session wherever the shop's partitioner put it
            if erased_on:
                out.state_writes.extend(StateWrite(p, key, None) for p in erased_on)
                out.forgotten.append(user_id)
            if state is None:
                continue
            if not events:
                continue
            state["seen_at"] = self.wall_clock()
            users.append(UserBatch(user_id, state, events))
            partitions.append(partition)
            user_hits.append(hits)
        if not users:
            return out
        self.metrics.on_batch(sum(len(ub.events) for ub in users), len(users))
        if self.fail_event_ids:
            bad = [e.event_id for ub in users for e in ub.events if e.event_id in self.fail_event_ids]
            if bad:
                raise InjectedFailure(f"injected encoder failure for event(s) {', '.join(bad)}")
        if self.produced_at_event_time:
            batch_time = max(e.ts for ub in users for e in ub.events)
            self.recommender.clock = lambda: batch_time
        recs = self.recommender.recommend(users)
        for ub, partition, rec, hits in zip(users, partitions, recs, user_hits):
            latest = ub.latest
            session_state.remember(ub.state, rec, latest)
            out.state_writes.append(StateWrite(partition, ub.user_id.encode(), session_state.dumps(ub.state)))
            out.recommendations.append(rec)
            out.latest_event_ts.append(latest)
            out.hits.extend(hits)
        return out

    def process_isolating(self, messages: Sequence[Message], read_state: StateReader,
                          error: BaseException | None = None) -> BatchResult:
        """:meth:`process`, but a failure dead-letters only the messages that cause it.

        Pass ``error`` when :meth:`process` of the whole batch has already failed (the driver
        retried it); the batch is then split by shopper at once. A :class:`StateStoreError` (the
        store failed to read) is no message's fault: it is raised, never dead-lettered.
        """
        if error is None:
            try:
                return self.process(messages, read_state)
            except StateStoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolated below, never dropped
                error = exc
        log.warning("a batch of %d message(s) failed (%s: %s); isolating the cause", len(messages),
                    type(error).__name__, error)
        groups: OrderedDict[bytes | None, list[Message]] = OrderedDict()
        for msg in messages:
            groups.setdefault(msg.key, []).append(msg)
        return self._bisect(list(groups.values()), read_state)

    # -----------------------------------------------------------------------------------------
    def _bisect(self, groups: list[list[Message]], read_state: StateReader) -> BatchResult:
        try:
            return self.process([m for g in groups for m in g], read_state)
        except StateStoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            if len(groups) == 1:
                return self._isolate_messages(groups[0], read_state, exc)
        mid = len(groups) // 2
        return self._bisect(groups[:mid], read_state).extend(self._bisect(groups[mid:], read_state))

    def _isolate_messages(self, messages: list[Message], read_state: StateReader,
                          error: BaseException) -> BatchResult:
        """One shopper's messages: keep each that processes together with those kept before it."""
        kept: list[Message] = []
        poisoned: list[tuple[Message, BaseException]] = []
        for msg in messages:
            try:
                self.process(kept + [msg], read_state)
            except StateStoreError:
                raise
            except Exception as exc:  # noqa: BLE001
                poisoned.append((msg, exc))
            else:
                kept.append(msg)
        try:
            out = self.process(kept, read_state) if kept else BatchResult()
        except StateStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - fails only together: none of them can go through
            out = BatchResult()
            poisoned.extend((m, exc) for m in kept)
        for msg, exc in poisoned:
            log.error("message %s/%d@%d cannot be processed, dead-lettered: %s: %s", msg.topic,
                      msg.partition, msg.offset, type(exc).__name__, exc)
            self.metrics.on_dead_letter("processing_error")
            out.dead_letters.append(self._dead_letter(msg, "processing_error", f"{type(exc).__name__}: {exc}"))
            out.done.append(msg)
        return out

    def _parse(self, msg: Message) -> Event:
        try:
            return self.validator.parse(msg.value)
        except InvalidEvent:
            raise
        except Exception as exc:  # noqa: BLE001 - no single message may stop the worker
            raise InvalidEvent("unprocessable", f"{type(exc).__name__}: {exc}") from exc

    def _read(self, read_state: StateReader, partition: int, key: bytes) -> dict[str, Any] | None:
        raw = read_state(partition, key)      # a failing store raises StateStoreError: never the message's fault
        try:
            return session_state.loads(raw)
        except Exception as exc:  # noqa: BLE001 - a session value that does not parse starts afresh
            log.error("session of %r on partition %d does not parse (%s); starting it afresh", key[:40],
                      partition, exc)
            self.metrics.on_dead_letter("corrupt_session")
            return None

    def _invalid_control(self, msg: Message, reason: str, detail: str) -> None:
        """Log and count a control message that is not valid, once (a batch may be run again)."""
        if msg.offset <= self._reported_control.get(msg.partition, -1):
            return
        self._reported_control[msg.partition] = msg.offset
        self.metrics.on_control_record_skipped("forget", reason)
        self.metrics.on_dead_letter("invalid_control")
        log.error("control message %s/%d@%d is not valid (%s), dead-lettered: %s", msg.topic, msg.partition,
                  msg.offset, reason, detail)

    def _state_user(self, raw_user: str) -> str:
        """The id a user has in sessions, recommendations and erasures (their pseudonym when on)."""
        return self.pseudonymise_id(raw_user) if self.pseudonymise_id is not None and raw_user else raw_user

    def _dead_letter(self, msg: Message, reason: str, detail: str) -> DeadLetter:
        """A dead letter of ``msg``; with pseudonymisation on, a value that parses as a JSON object
        has its ``user_id`` and ``session_id`` replaced by their pseudonyms, and the key by the
        user's pseudonym (header ``pseudonymised``), so no raw id is written by the worker."""
        if self.pseudonymise_id is None:
            return DeadLetter(msg, reason, detail)
        try:
            doc = orjson.loads(msg.value) if msg.value else None
        except orjson.JSONDecodeError:
            doc = None
        value, key = msg.value, msg.key
        user = doc.get("user_id") if isinstance(doc, dict) else None
        if isinstance(user, str) and user:
            doc["user_id"] = self.pseudonymise_id(user)
            session = doc.get("session_id")
            if isinstance(session, str) and session:
                from stream.core.pseudonyms import SESSION_SALT

                doc["session_id"] = self.pseudonymise_id(SESSION_SALT + session)
            value = orjson.dumps(doc)
            key = doc["user_id"].encode()
        elif key:          # not an event: its key may still be a user id
            key = self.pseudonymise_id(key.decode("utf-8", "replace")).encode()
        if (key, value) == (msg.key, msg.value):
            return DeadLetter(msg, reason, detail)
        return DeadLetter(replace(msg, key=key, value=value), reason, detail, pseudonymised=True)

    def _check_partition(self, user_key: bytes, msg: Message) -> None:
        if self._warned_partition or not self.partitions:
            return
        expected = partition_for(self.partitioner, user_key, self.partitions)
        if expected != msg.partition:
            self._warned_partition = True
            other = "crc32" if self.partitioner == "murmur2" else "murmur2"
            log.warning("events of a shopper arrive on partition %d of %s, but the %s partitioner would "
                        "send their key to %d: the storefront partitions differently (librdkafka clients "
                        "use crc32, Java and aiokafka murmur2). Set SHOPSTREAM_PARTITIONER=%s so re-keyed "
                        "events and erasures follow the shop's producers.", msg.partition, msg.topic,
                        self.partitioner, expected, other)


def _user_of(raw: bytes | None) -> str:
    try:
        uid = orjson.loads(raw).get("user_id") if raw else None
    except (orjson.JSONDecodeError, AttributeError):
        uid = None
    return uid if isinstance(uid, str) else ""

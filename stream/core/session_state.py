"""A shopper's session state: what they touched, bought and carry, bounded and expiring.

State is a plain dict so that it serialises with orjson into the changelog-backed Faust table
and stays readable there. ``fold`` is pure: (state, event) -> state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from stream.core.schema import Event

STATE_VERSION = 1
SEEN_EVENT_IDS = 256   # recent event ids kept to make redelivered events no-ops
SHOWN_MAX = 3          # recommendations remembered for online feedback (the newest)
HIT_TYPES = ("click", "add_to_cart", "purchase")


@dataclass(frozen=True)
class SessionLimits:
    max_items: int = 50
    max_queries: int = 20
    max_purchased: int = 200
    ttl_s: float = 1800.0
    recently_viewed_excluded: int = 5


@dataclass(frozen=True)
class FeedbackHorizon:
    """How long after it is served a recommendation can still be credited with a hit: at most
    ``events`` later events of the shopper and ``seconds`` of event time, whichever ends first."""

    events: int = 20
    seconds: float = 1800.0


def new_state(event: Event) -> dict[str, Any]:
    return {"v": STATE_VERSION, "session_id": event.session_id, "started": event.ts,
            "last": event.ts, "items": [], "queries": [], "purchased": [], "cart": [],
            "counts": {}, "expired_sessions": 0, "seen": []}


def fold(state: dict[str, Any] | None, event: Event, limits: SessionLimits) -> dict[str, Any]:
    """Apply one event. Inactivity longer than ``ttl_s`` (event time) starts a new session;
    purchases are kept across sessions so a bought product stays excluded."""
    if state is None:
        state = new_state(event)
    elif event.event_id in state["seen"]:
        return state  # already folded: a redelivery after a crash (at-least-once) changes nothing
    elif event.ts - state["last"] > limits.ttl_s:
        fresh = new_state(event)
        fresh["purchased"] = state["purchased"]
        fresh["expired_sessions"] = state.get("expired_sessions", 0) + 1
        fresh["seen"] = state["seen"]
        fresh["n"] = state.get("n", 0)
        fresh["shown"] = state.get("shown", [])      # the feedback horizon decides, not the session
        state = fresh
    state["session_id"] = event.session_id
    state["last"] = max(state["last"], event.ts)
    seen = state["seen"]
    seen.append(event.event_id)
    del seen[:-SEEN_EVENT_IDS]
    state["n"] = state.get("n", 0) + 1            # events folded, ever: the feedback horizon counts these
    counts = state["counts"]
    counts[event.type] = counts.get(event.type, 0) + 1
    if event.type == "search":
        queries = state["queries"]
        queries.append([event.query, event.ts])
        del queries[:-limits.max_queries]
    else:
        items = state["items"]
        items.append([event.item_id, event.type, event.ts])
        del items[:-limits.max_items]
        cart = state["cart"]
        if event.type == "add_to_cart":
            if event.item_id not in cart:
                cart.append(event.item_id)
                del cart[:-limits.max_items]
        elif event.type == "purchase":
            if event.item_id in cart:
                cart.remove(event.item_id)
            purchased = state["purchased"]
            if event.item_id in purchased:
                purchased.remove(event.item_id)
            purchased.append(event.item_id)
            del purchased[:-limits.max_purchased]
    return state


def credit(state: dict[str, Any] | None, event: Event, horizon: FeedbackHorizon) -> list[dict[str, Any]]:
    """Hits ``event`` earns the recommendations this session was shown; call it before :func:`fold`.

    A click, add-to-cart or purchase of a product listed in a remembered recommendation, within the
    horizon, is a hit credited to that recommendation's variant and session model; each
    recommendation is credited once (its first hit). A redelivered event earns nothing again.
    """
    if state is None or event.type not in HIT_TYPES or event.item_id is None or event.event_id in state["seen"]:
        return []
    number = state.get("n", 0) + 1
    hits = []
    for shown in state.get("shown", ()):
        if shown.get("hit") or event.item_id not in shown["products"]:
            continue
        if not 0 < number - shown["n"] <= horizon.events or event.ts - shown["ts"] > horizon.seconds:
            continue
        shown["hit"] = True
        hits.append({"recommendation_id": shown["id"], "variant": shown["variant"],
                     "session_model_version": shown["model"], "event_id": event.event_id,
                     "event_type": event.type, "product_id": event.item_id,
                     "rank": shown["products"].index(event.item_id) + 1, "ts": event.ts})
    return hits


def remember(state: dict[str, Any], recommendation: dict[str, Any], served_ts: float) -> None:
    """Keep ``recommendation`` (its id, variant, model and products) among the last shown."""
    shown = state.setdefault("shown", [])
    shown.append({"id": recommendation["recommendation_id"], "variant": recommendation.get("variant", "default"),
                  "model": recommendation["session_model_version"],
                  "products": [i["product_id"] for i in recommendation["items"]],
                  "n": state.get("n", 0), "ts": served_ts, "hit": False})
    del shown[:-SHOWN_MAX]


def excluded_products(state: dict[str, Any], limits: SessionLimits) -> set[str]:
    """Products never to recommend to this shopper now: bought, in the cart, or just viewed."""
    out = set(state["purchased"]) | set(state["cart"])
    recent = [pid for pid, kind, _ in state["items"] if kind in ("view", "click")]
    out.update(recent[-limits.recently_viewed_excluded:])
    return out


def timeline(state: dict[str, Any]) -> list[tuple[str, str, float]]:
    """Products and queries of the session in time order: (kind, product id or query, ts).

    ``kind`` is the event type; for searches the value is the query text."""
    rows = [(kind, pid, ts) for pid, kind, ts in state["items"]]
    rows.extend(("search", q, ts) for q, ts in state["queries"])
    rows.sort(key=lambda r: r[2])
    return rows


def dumps(state: dict[str, Any]) -> bytes:
    return orjson.dumps(state)


_SHAPE = {"session_id": str, "last": (int, float), "items": list, "queries": list, "purchased": list,
          "cart": list, "counts": dict, "seen": list}


def loads(raw: bytes | None) -> dict[str, Any] | None:
    """The state in ``raw``; None for none, another state version, or a value of the wrong shape.

    Raises ``orjson.JSONDecodeError`` for bytes that are not JSON at all."""
    if raw is None:
        return None
    state = orjson.loads(raw)
    if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
        return None
    if any(not isinstance(state.get(k), t) for k, t in _SHAPE.items()):
        return None
    if not isinstance(state.get("shown", []), list) or not isinstance(state.get("n", 0), int):
        state.pop("shown", None)                  # feedback bookkeeping only: the session is kept
        state.pop("n", None)
    return state

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


@dataclass(frozen=True)
class SessionLimits:
    max_items: int = 50
    max_queries: int = 20
    max_purchased: int = 200
    ttl_s: float = 1800.0
    recently_viewed_excluded: int = 5


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
        state = fresh
    state["session_id"] = event.session_id
    state["last"] = max(state["last"], event.ts)
    seen = state["seen"]
    seen.append(event.event_id)
    del seen[:-SEEN_EVENT_IDS]
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
    return state

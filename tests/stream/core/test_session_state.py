"""Folding events into a session: bounded, expiring, idempotent under redelivery."""
from __future__ import annotations

from stream.core import session_state as ss
from stream.core.schema import Event
from stream.core.session_state import SessionLimits


def ev(n, etype="view", item="A", ts=1000.0, query=None, session="s1"):
    return Event(f"e{n}", etype, "u1", session, ts, None if etype == "search" else item,
                 query if etype == "search" else None)


def test_counts_items_queries_cart_and_purchases():
    limits = SessionLimits()
    s = None
    for e in [ev(1, "view", "A"), ev(2, "search", query="lamp"), ev(3, "add_to_cart", "B"),
              ev(4, "add_to_cart", "C"), ev(5, "purchase", "B")]:
        s = ss.fold(s, e, limits)
    assert s["counts"] == {"view": 1, "search": 1, "add_to_cart": 2, "purchase": 1}
    assert s["cart"] == ["C"] and s["purchased"] == ["B"]
    assert [q for q, _ in s["queries"]] == ["lamp"]
    assert ss.excluded_products(s, limits) == {"A", "B", "C"}


def test_bounded_in_size():
    limits = SessionLimits(max_items=5, max_queries=3, max_purchased=4)
    s = None
    for n in range(50):
        s = ss.fold(s, ev(n, "purchase", f"P{n}", ts=1000 + n), limits)
        s = ss.fold(s, ev(1000 + n, "search", query=f"q{n}", ts=1000 + n), limits)
    assert len(s["items"]) == 5 and len(s["queries"]) == 3 and len(s["purchased"]) == 4
    assert s["purchased"][-1] == "P49"
    assert len(ss.dumps(s)) < 8000


def test_session_expires_after_inactivity_but_purchases_stay():
    limits = SessionLimits(ttl_s=60)
    s = ss.fold(None, ev(1, "purchase", "A", ts=1000), limits)
    s = ss.fold(s, ev(2, "view", "B", ts=1030), limits)
    assert len(s["items"]) == 2
    s = ss.fold(s, ev(3, "view", "C", ts=2000, session="s2"), limits)
    assert [i[0] for i in s["items"]] == ["C"]
    assert s["session_id"] == "s2" and s["expired_sessions"] == 1
    assert "A" in ss.excluded_products(s, limits)


def test_redelivered_event_is_a_no_op():
    limits = SessionLimits()
    s = ss.fold(None, ev(1, "add_to_cart", "A"), limits)
    before = ss.dumps(s)
    s = ss.fold(s, ev(1, "add_to_cart", "A"), limits)
    assert ss.dumps(s) == before


def test_timeline_is_in_time_order():
    limits = SessionLimits()
    s = None
    for e in [ev(1, "view", "A", ts=3), ev(2, "search", query="lamp", ts=1), ev(3, "click", "B", ts=2)]:
        s = ss.fold(s, e, limits)
    assert [(k, v) for k, v, _ in ss.timeline(s)] == [("search", "lamp"), ("click", "B"), ("view", "A")]


def test_round_trip_and_version_guard():
    s = ss.fold(None, ev(1), SessionLimits())
    assert ss.loads(ss.dumps(s)) == s
    assert ss.loads(b'{"v": 99}') is None
    assert ss.loads(None) is None

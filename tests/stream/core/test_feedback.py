"""Online feedback in the core: a shown product taken up within the horizon is a hit, credited to
the recommendation's variant and model; outside the horizon, or twice, it is not."""
from __future__ import annotations

import orjson

from stream.core import session_state as ss
from stream.core.schema import Event
from stream.core.session_state import FeedbackHorizon, SessionLimits

LIMITS = SessionLimits()
HORIZON = FeedbackHorizon(events=5, seconds=600)


def ev(n, etype="view", item="A", ts=None):
    return Event(f"e{n}", etype, "u1", "s1", 1000.0 + n if ts is None else ts, item, None)


def served(state, rec_id, products, variant="candidate", model="session-tf-1"):
    rec = {"recommendation_id": rec_id, "variant": variant, "session_model_version": model,
           "items": [{"product_id": p, "score": 0.5} for p in products]}
    ss.remember(state, rec, state["last"])


def fold_all(state, events, horizon=HORIZON):
    hits = []
    for e in events:
        hits += ss.credit(state, e, horizon)
        state = ss.fold(state, e, LIMITS)
    return state, hits


def test_a_click_on_a_recommended_product_within_the_horizon_is_credited_to_its_variant():
    state = ss.fold(None, ev(1, "view", "A"), LIMITS)
    served(state, "r1", ["B", "C", "D"], variant="candidate", model="m2")
    state, hits = fold_all(state, [ev(2, "view", "C"), ev(3, "click", "C"), ev(4, "add_to_cart", "C")])
    assert len(hits) == 1, "one hit per recommendation"
    h = hits[0]
    assert (h["recommendation_id"], h["variant"], h["session_model_version"]) == ("r1", "candidate", "m2")
    assert (h["event_id"], h["event_type"], h["product_id"], h["rank"]) == ("e3", "click", "C", 2)


def test_a_click_outside_the_horizon_is_not_a_hit():
    state = ss.fold(None, ev(1), LIMITS)
    served(state, "r1", ["B"])
    later = [ev(n, "view", "Z") for n in range(2, 8)]          # 6 events later: past the 5-event horizon
    state, hits = fold_all(state, later + [ev(8, "click", "B")])
    assert hits == []

    state = ss.fold(None, ev(1), LIMITS)
    served(state, "r1", ["B"])
    state, hits = fold_all(state, [ev(2, "click", "B", ts=1000.0 + 601 + 1)])   # past 600 s
    assert hits == []


def test_views_and_searches_are_no_hits_and_a_redelivered_event_earns_nothing_again():
    state = ss.fold(None, ev(1), LIMITS)
    served(state, "r1", ["B"])
    served(state, "r2", ["B"])
    state, hits = fold_all(state, [ev(2, "view", "B")])
    assert hits == []
    state, hits = fold_all(state, [ev(3, "purchase", "B")])
    assert [h["recommendation_id"] for h in hits] == ["r1", "r2"]
    _, again = fold_all(state, [ev(3, "purchase", "B")])
    assert again == []


def test_bounded_and_robust_to_old_states():
    state = ss.fold(None, ev(1), LIMITS)
    for i in range(10):
        served(state, f"r{i}", ["B"])
    assert [s["id"] for s in state["shown"]] == ["r7", "r8", "r9"]
    old = ss.fold(None, ev(1), LIMITS)
    del old["n"]                                           # a session written before feedback existed
    old = ss.loads(orjson.dumps(old))
    assert ss.credit(old, ev(2, "click", "B"), FeedbackHorizon()) == []
    assert ss.fold(old, ev(2, "click", "B"), LIMITS)["n"] == 1
    broken = ss.fold(None, ev(1), LIMITS)
    broken["shown"] = "nonsense"
    assert "shown" not in ss.loads(orjson.dumps(broken))

"""Leave-one-out never shows a shopper's held-out product, or anything after it, to the model."""
from __future__ import annotations

import numpy as np
import pytest

from learn.data import (
    KIND_CODES,
    Interactions,
    UserSequence,
    load_generic,
    write_generic,
)
from learn.split import leave_one_out

P, S = KIND_CODES["purchase"], KIND_CODES["search"]
V, C = KIND_CODES["view"], KIND_CODES["add_to_cart"]


def seq(user, tokens, kinds, times=None):
    n = len(tokens)
    return UserSequence(user, np.array(tokens), np.array(kinds), np.array(times if times else [np.nan] * n))


def test_targets_are_the_last_two_products_and_inputs_stop_before_them():
    data = Interactions(["a", "b", "c", "d", "e"], ["A", "B", "C", "D", "E", "query"], [
        seq("u1", [0, 1, 2, 3, 4], [P] * 5),
        seq("u2", [4, 5, 3, 1, 5], [P, S, P, P, S]),    # searches are inputs, never targets
        seq("u3", [0, 1], [P, P]),                       # too short: left out
    ])
    split = leave_one_out(data)
    assert split.dropped_users == 1
    assert split.test.targets.tolist() == [4, 1] and split.valid.targets.tolist() == [3, 3]
    assert split.test.inputs[0].tokens.tolist() == [0, 1, 2, 3]
    assert split.test.inputs[1].tokens.tolist() == [4, 5, 3]
    assert split.valid.inputs[1].tokens.tolist() == [4, 5]
    assert [s.tokens.tolist() for s in split.train] == [[0, 1, 2], [4, 5]]


def test_targets_in_an_event_stream_are_products_new_to_the_shopper():
    """A shop's stream: every purchase follows the view and add-to-cart of the same product, so the
    last product event repeats the history (which the full ranking removes): the targets are the
    last two *first* events of a product, and what came after the test target is never an input."""
    data = Interactions(["a", "b", "c", "d"], ["A", "B", "C", "D", "query"], [
        # view a, cart a, buy a, search, view b, cart b, view c, cart c, buy b, buy c
        seq("u1", [0, 0, 0, 4, 1, 1, 2, 2, 1, 2], [V, C, P, S, V, C, V, C, P, P]),
        # three distinct products, the last one new, then a repeat of an old one
        seq("u2", [3, 2, 1, 3], [V, V, V, P]),
        # six product events but only two products: nothing new to hold out twice, left out
        seq("u3", [0, 0, 0, 1, 1, 1], [V, C, P, V, C, P]),
    ])
    split = leave_one_out(data)
    assert split.dropped_users == 1
    assert split.test.targets.tolist() == [2, 1] and split.valid.targets.tolist() == [1, 2]
    assert split.test.inputs[0].tokens.tolist() == [0, 0, 0, 4, 1, 1]
    assert split.valid.inputs[0].tokens.tolist() == [0, 0, 0, 4]
    assert split.test.inputs[1].tokens.tolist() == [3, 2]
    assert [s.tokens.tolist() for s in split.train] == [[0, 0, 0, 4], [3]]
    for fold in (split.test, split.valid):   # every target can be ranked: it is not in its input
        for inp, target in zip(fold.inputs, fold.targets):
            assert target not in inp.tokens


def test_no_leak_on_real_sequences(beauty_dir):
    data = load_generic(beauty_dir / "items.tsv", beauty_dir / "sequences.tsv")
    full = {s.user: s.tokens for s in data.sequences}
    split = leave_one_out(data)
    assert len(split.test) == len(data.sequences) == 22363
    for inp, target in zip(split.test.inputs, split.test.targets):
        toks = full[inp.user]
        assert toks[-1] == target and inp.tokens.tolist() == toks[:-1].tolist()
    for inp, target, train in zip(split.valid.inputs, split.valid.targets, split.train):
        toks = full[inp.user]
        assert toks[-2] == target and inp.tokens.tolist() == toks[:-2].tolist()
        assert train.tokens.tolist() == toks[:-2].tolist()          # training never sees either target


def test_generic_format_round_trip(tmp_path):
    (tmp_path / "items.tsv").write_text("asin\ttitle\nx1\tRed lipstick\nx2\tBlue\tmascara\nx3\t\n")
    (tmp_path / "sequences.tsv").write_text("user_id\titems\nu1\tx1 x2 nope x3\n# comment\nu2\tx3\n")
    data = load_generic(tmp_path / "items.tsv", tmp_path / "sequences.tsv")
    assert data.item_ids == ["x1", "x2", "x3"] and data.texts == ["Red lipstick", "Blue mascara", ""]
    assert [s.tokens.tolist() for s in data.sequences] == [[0, 1, 2], [2]]
    assert data.stats["dropped_unknown"] == 1
    items, seqs = write_generic(data, tmp_path / "out")
    again = load_generic(items, seqs)
    assert again.item_ids == data.item_ids and [s.user for s in again.sequences] == ["u1", "u2"]


@pytest.fixture(scope="module")
def beauty_dir():
    from tests.conftest import SHARED_DATA

    d = SHARED_DATA / "amazon-beauty"
    if not (d / "sequences.tsv").is_file():
        pytest.skip(f"Amazon Beauty is not at {d} (../shared/data is absent)")
    return d


def test_event_log_becomes_time_ordered_sequences(tmp_path):
    import orjson

    from learn.data import read_event_log

    (tmp_path / "items.tsv").write_text("p1\tRed mug\np2\tBlue mug\np3\tTea pot\n")
    events = [
        {"event_id": "3", "type": "purchase", "user_id": "u", "session_id": "s", "ts": 1_700_000_300_000, "item_id": "p2"},
        {"event_id": "1", "type": "view", "user_id": "u", "session_id": "s", "ts": "2023-11-14T22:13:20Z", "item_id": "p1"},
        {"event_id": "2", "type": "search", "user_id": "u", "session_id": "s", "ts": 1_700_000_100_000, "query": "mug"},
        {"event_id": "4", "type": "view", "user_id": "u", "session_id": "s", "ts": 1_700_000_400_000, "item_id": "nope"},
        {"event_id": "5", "type": "add_to_cart", "user_id": "v", "session_id": "t", "ts": 1_700_000_000_000, "item_id": "p3"},
    ]
    (tmp_path / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events) + b"not json\n")
    data = read_event_log(tmp_path / "events.jsonl", tmp_path / "items.tsv")
    assert data.texts[3:] == ["mug"] and data.stats["skipped_events"] == 2
    u = next(s for s in data.sequences if s.user == "u")
    assert u.tokens.tolist() == [0, 3, 1]
    assert u.kinds.tolist() == [KIND_CODES["view"], S, P]
    assert u.times.tolist() == [1_700_000_000.0, 1_700_000_100.0, 1_700_000_300.0]
    assert data.kinds_seen()[0] in ("view", "search", "purchase", "add_to_cart") and data.has_clock()


def test_the_offline_benchmarks_split_is_unchanged_by_the_new_product_rule(beauty_dir):
    """Amazon Beauty and Online Retail are de-duplicated (each product once per shopper), so every
    product event is new and the targets stay the last two products: their figures do not move."""
    from learn.data import load_online_retail
    from tests.conftest import SHARED_DATA

    sets = [load_generic(beauty_dir / "items.tsv", beauty_dir / "sequences.tsv")]
    retail = SHARED_DATA / "online-retail" / "online_retail.csv.gz"
    if retail.is_file():
        sets.append(load_online_retail(retail))
    for data in sets:
        for s in data.sequences:
            assert s.new_item_positions().tolist() == s.item_positions().tolist(), (data.name, s.user)

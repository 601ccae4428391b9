"""The pipeline core from Python lists: good -> recommendations, bad -> dead letters, failures isolated.

Real model, real FAISS index; no broker.
"""
from __future__ import annotations

import orjson
import pytest

from engines import PoolingSessionEncoder, QueryEmbeddingCache
from index import load_snapshot
from stream.core import session_state
from stream.core.control import CONTROL_HEADER, FORGET
from stream.core.dead_letters import HEADER, DeadLetter, Message, dead_letter_record
from stream.core.partitioner import partition_for
from stream.core.pipeline import Pipeline
from stream.core.recommender import IndexHolder, Recommender
from stream.core.schema import EventValidator

TS = 1_700_000_000_000


@pytest.fixture(scope="module")
def holder(index_snapshot):
    return IndexHolder(load_snapshot(index_snapshot))


@pytest.fixture
def make_pipeline(holder, text_encoder):
    def make(**kw):
        rec = Recommender(index=holder, queries=QueryEmbeddingCache(text_encoder),
                          session_encoder=PoolingSessionEncoder(dim=text_encoder.dim))
        validator = EventValidator(known_product=lambda pid: pid in holder.current, clock=lambda: TS / 1000 + 10)
        return Pipeline(validator=validator, recommender=rec, **kw)
    return make


@pytest.fixture(scope="module")
def products(holder):
    return list(holder.current.products)[:20]


def event(n, user, item, etype="view"):
    return {"event_id": f"e{n}", "type": etype, "user_id": user, "session_id": f"s-{user}",
            "ts": TS + n, "item_id": item}


def msg(n, value, key=None, partition=0, headers=()):
    raw = orjson.dumps(value) if isinstance(value, dict) else value
    if key is None and isinstance(value, dict):
        key = value["user_id"].encode()
    return Message(key, raw, "events", partition, n, tuple(headers))


class Store(dict):
    def read(self, partition, key):
        return self.get((partition, key))

    def apply(self, result):
        for w in result.state_writes:
            if w.value is None:
                self.pop((w.partition, w.key), None)
            else:
                self[(w.partition, w.key)] = w.value


def test_good_events_become_recommendations_and_bad_ones_dead_letters(make_pipeline, products):
    p = make_pipeline()
    batch = [msg(1, event(1, "u1", products[0])), msg(2, b"{not json"), msg(3, event(3, "u2", products[1])),
             msg(4, event(4, "u1", "no-such-product")), msg(5, event(5, "u1", products[2], "click")),
             msg(6, None, key=b"u3")]
    store = Store()
    out = p.process(batch, store.read)
    assert sorted(r["user_id"] for r in out.recommendations) == ["u1", "u2"]
    u1 = next(r for r in out.recommendations if r["user_id"] == "u1")
    assert u1["event_ids"] == ["e1", "e5"]
    assert {(d.message.offset, d.reason) for d in out.dead_letters} == {(2, "not_json"), (4, "unknown_product"),
                                                                       (6, "empty")}
    assert sorted(m.offset for m in out.done) == [1, 2, 3, 4, 5, 6] and not out.held
    store.apply(out)
    state = session_state.loads(store[(0, b"u1")])
    assert [i[0] for i in state["items"]] == [products[0], products[2]]


def test_an_encoder_failure_is_retried_then_isolated_to_its_message(make_pipeline, products):
    p = make_pipeline(fail_event_ids=frozenset({"e3"}))
    batch = [msg(n, event(n, f"u{n % 3}", products[n])) for n in range(1, 10)]
    with pytest.raises(Exception):
        p.process(batch, Store().read)
    out = p.process_isolating(batch, Store().read)
    assert [(d.message.offset, d.reason) for d in out.dead_letters] == [(3, "processing_error")]
    assert "injected" in out.dead_letters[0].detail
    reflected = {e for r in out.recommendations for e in r["event_ids"]}
    assert reflected == {f"e{n}" for n in range(1, 10)} - {"e3"}
    assert sorted(m.offset for m in out.done) == list(range(1, 10))


def test_a_failing_state_store_is_raised_never_blamed_on_a_message(make_pipeline, products):
    """A store that cannot read (disk full, RocksDB I/O error) is no message's fault: the driver
    stalls and retries; isolating it would dead-letter every event of the batch."""
    from stream.errors import StateStoreError

    p = make_pipeline(fail_event_ids=frozenset({"e3"}))      # isolation would run for this one

    def failing_read(partition, key):
        raise StateStoreError("sessions", partition, OSError("IO error: No space left on device"))

    batch = [msg(n, event(n, f"u{n % 3}", products[n])) for n in range(1, 6)]
    with pytest.raises(StateStoreError, match="No space left"):
        p.process_isolating(batch, failing_read)
    with pytest.raises(StateStoreError):
        p.process_isolating(batch, failing_read, RuntimeError("the batch failed before"))


def test_a_session_value_that_does_not_parse_starts_afresh(make_pipeline, products):
    p = make_pipeline()
    store = Store({(0, b"u1"): b"\x00garbage", (0, b"u2"): orjson.dumps({"v": 1, "items": "wrong"})})
    out = p.process([msg(1, event(1, "u1", products[0])), msg(2, event(2, "u2", products[1]))], store.read)
    assert len(out.recommendations) == 2 and not out.dead_letters


def test_unknown_products_are_held_then_dead_lettered(make_pipeline, products):
    clock = [100.0]
    p = make_pipeline(hold_unknown_s=5.0, monotonic=lambda: clock[0])
    first = Message(b"u1", orjson.dumps(event(1, "u1", "new-product")), "events", 0, 1, (), received_at=100.0)
    later = Message(b"u1", orjson.dumps(event(2, "u1", products[0])), "events", 0, 2, (), received_at=100.0)
    other = Message(b"u2", orjson.dumps(event(3, "u2", products[1])), "events", 0, 3, (), received_at=100.0)
    out = p.process([first, later, other], Store().read)
    assert [m.offset for m in out.held] == [1, 2]          # u1's later event waits behind the held one
    assert [r["user_id"] for r in out.recommendations] == ["u2"]
    clock[0] = 106.0
    out = p.process(out.held, Store().read)
    assert [(d.message.offset, d.reason) for d in out.dead_letters] == [(1, "unknown_product")]
    assert [r["event_ids"] for r in out.recommendations] == [["e2"]]


def test_forget_erases_on_the_partition_it_arrives_on(make_pipeline, products):
    p = make_pipeline()
    store = Store()
    store.apply(p.process([msg(1, event(1, "u1", products[0]), partition=1)], store.read))
    assert (1, b"u1") in store
    forget = [msg(n, b"", key=b"u1", partition=n, headers=[(CONTROL_HEADER, FORGET)]) for n in range(2)]
    out = p.process(forget, store.read)
    assert not out.recommendations
    assert sorted((w.partition, w.value) for w in out.state_writes) == [(0, None), (1, None)]
    store.apply(out)
    assert not store


def test_a_wrongly_keyed_event_is_resent_to_its_users_partition(make_pipeline, products):
    for name in ("murmur2", "crc32"):
        p = make_pipeline(partitioner=name, partitions=4)
        out = p.process([msg(1, event(1, "u7", products[0]), key=b"session-9")], Store().read)
        assert not out.recommendations and len(out.resends) == 1
        r = out.resends[0]
        assert r.key == b"u7" and r.partition == partition_for(name, b"u7", 4)


def test_a_shop_that_partitions_differently_is_told_once(make_pipeline, products, caplog):
    """The keying check runs on one event per partition and batch (not per event): a partition
    whose first event sits where the partitioner would put it, then one that does not, warns once."""
    users = [f"u{n}" for n in range(200)]
    agree = next(u for u in users if partition_for("murmur2", u.encode(), 4) == partition_for("crc32", u.encode(), 4))
    differ = next(u for u in users if partition_for("murmur2", u.encode(), 4) != partition_for("crc32", u.encode(), 4))
    p = make_pipeline(partitioner="murmur2", partitions=4)
    at = partition_for("crc32", agree.encode(), 4)
    with caplog.at_level("WARNING", logger="stream.core.pipeline"):
        out = p.process([msg(1, event(1, agree, products[0]), partition=at)], Store().read)
        assert len(out.recommendations) == 1 and not caplog.records
        crc = partition_for("crc32", differ.encode(), 4)      # as a librdkafka storefront sends it
        batch = [msg(n, event(n, differ, products[n]), partition=crc) for n in range(2, 5)]
        out = p.process(batch, Store().read)
        out = p.process(batch, Store().read)
    assert len(out.recommendations) == 1                       # the events are served all the same
    warned = [r for r in caplog.records if "SHOPSTREAM_PARTITIONER=crc32" in r.getMessage()]
    assert len(warned) == 1

def test_dead_letters_are_cut_to_size_with_their_hash():
    big = b"x" * 2_000_000
    dl = DeadLetter(Message(b"k", big, "events", 3, 42), "oversized", "too big")
    key, value, headers = dead_letter_record(dl, 65_536)
    h = dict(headers)
    assert len(value) == 65_536 and key == b"k"
    assert h[HEADER + "original-size"] == b"2000000" and h[HEADER + "truncated"] == b"value"
    assert h[HEADER + "reason"] == b"oversized" and h[HEADER + "offset"] == b"42"
    assert len(h[HEADER + "sha256"]) == 64


def test_nothing_from_before_a_forget_request_reaches_what_follows_it(make_pipeline, products):
    p = make_pipeline()
    search = {"event_id": "e1", "type": "search", "user_id": "u1", "session_id": "s-u1", "ts": TS + 1,
              "query": "a private query", "results": [products[2]]}
    batch = [msg(1, search), msg(2, event(2, "u1", products[0], "purchase")),
             msg(3, b"", key=b"u1", headers=[(CONTROL_HEADER, FORGET)]), msg(4, event(4, "u1", products[1]))]
    out = p.process(batch, Store().read)
    [rec] = out.recommendations
    assert rec["event_ids"] == ["e4"] and "search" not in rec
    [write] = [w for w in out.state_writes if w.value is not None]
    state = session_state.loads(write.value)
    assert "a private query" not in write.value.decode() and not state["purchased"], state


def test_with_pseudonyms_forget_requests_and_dead_letters_carry_no_raw_id(make_pipeline, products):
    from stream.core.control import KEY_HEADER, PSEUDONYM
    from stream.core.pseudonyms import pseudonymiser

    pseudo = pseudonymiser("k")
    p = make_pipeline(pseudonymise=pseudo, pseudonymise_id=pseudo.user_id)
    store = Store()
    store.apply(p.process([msg(1, event(1, "alice@example.com", products[0]))], store.read))
    assert list(store) == [(0, pseudo.user_id("alice@example.com").encode())]
    unknown = msg(2, event(2, "alice@example.com", "no-such-product"))
    not_json = msg(3, b"{alice@example.com", key=b"alice@example.com")
    forget = msg(4, b"", key=pseudo.user_id("alice@example.com").encode(),
                 headers=[(CONTROL_HEADER, FORGET), (KEY_HEADER, PSEUDONYM)])
    out = p.process([unknown, not_json, forget], store.read)
    assert [w.value for w in out.state_writes] == [None]
    store.apply(out)
    assert not store
    assert [d.reason for d in out.dead_letters] == ["unknown_product", "not_json"]
    for d in out.dead_letters:
        key, value, headers = dead_letter_record(d, 65_536)
        assert key == pseudo.user_id("alice@example.com").encode()
        assert (HEADER + "pseudonymised", b"user_id,session_id,key") in headers
    known = orjson.loads(dead_letter_record(out.dead_letters[0], 65_536)[1])
    assert known["user_id"] == pseudo.user_id("alice@example.com") and "example.com" not in known["session_id"]
    assert known["item_id"] == "no-such-product"

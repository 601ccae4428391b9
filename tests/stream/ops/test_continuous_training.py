"""`learn_once` against the real broker: Online Retail-like purchase streams on the events topic,
a forgotten shopper, a warm start from the shipped session encoder, a candidate announced on the
models topic with its model and index in the registry (or declined when the margin cannot be met).
"""
from __future__ import annotations

import orjson
import pytest

from tests.conftest import run
from tests.kafka_io import event, keyed, produce_raw

N_PRODUCTS = 150
N_USERS = 90


@pytest.fixture
def small_catalog(tmp_path, catalog_products):
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(b"".join(orjson.dumps(p.to_dict()) + b"\n" for p in catalog_products[:N_PRODUCTS]))
    return path, [p.id for p in catalog_products[:N_PRODUCTS]]


def purchase_streams(ids: list[str], n_users: int = N_USERS, length: int = 6, t0_ms: int = 1_700_000_000_000):
    """Each shopper buys a run of neighbouring catalogue products, one an hour (a learnable order)."""
    out, n = [], 0
    for u in range(n_users):
        start = (u * 7) % len(ids)
        for k in range(length):
            n += 1
            out.append(event(n, f"shopper-{u}", "purchase", item=ids[(start + k) % len(ids)],
                             ts_ms=t0_ms + u * 1000 + k * 3_600_000))
    return out


def shop_streams(ids: list[str], n_users: int = N_USERS, length: int = 5, t0_ms: int = 1_700_000_000_000):
    """As a shop's stream reads (and ``bench online`` replays): each product of a shopper's run of
    neighbouring products is viewed, added to the cart and bought, so every shopper's last event
    is a purchase of a product already in their history."""
    out, n = [], 0
    for u in range(n_users):
        start = (u * 7) % len(ids)
        for k in range(length):
            for j, kind in enumerate(("view", "add_to_cart", "purchase")):
                n += 1
                out.append(event(n, f"shopper-{u}", kind, item=ids[(start + k) % len(ids)],
                                 ts_ms=t0_ms + u * 1000 + k * 3_600_000 + j * 60_000))
    return out


def test_learn_once_evaluates_shop_streams_whose_purchases_repeat_the_cart(settings_factory, small_catalog):
    """The held-out product is the last one new to the shopper, not the purchase that repeats its
    add-to-cart (which the full ranking removes with the history): every shopper can be ranked and
    both the shipped encoder and the model warm-started from it score above zero (on main both
    scored exactly 0.0 and nothing could ever be announced)."""
    from stream.ops.continuous_training import learn_once

    catalog, ids = small_catalog
    settings = settings_factory(session_encoder="default", learn_epochs=1, learn_min_users=10, learn_margin=1.0)
    run(produce_raw(settings, [keyed(e) for e in shop_streams(ids)]))

    summary = run(learn_once(settings, catalog=catalog))
    assert summary["events_read"] == N_USERS * 5 * 3 and summary["users"] == N_USERS, summary
    off = summary["offline"]
    # a shopper's next product neighbours the ones before it in the catalogue: the title-based
    # encoder ranks it well above chance (NDCG@10 of a random ranking of ~145 products is ~0.03)
    assert off["serving_ndcg@10"] > 0.1 and off["ndcg@10"] > 0.1, off
    assert off["held_out_users"] == off["evaluable_users"] == N_USERS
    assert off["fold"] == "newest event naming a product new to the shopper"
    assert "below the margin" in summary["reason"] and summary["announced"] is None


def test_learn_once_reports_nothing_to_evaluate_rather_than_two_zeros(settings_factory, small_catalog):
    """Shoppers with many events but only two products have no product new to them to hold out
    twice: no comparison of two scores of 0.0 is made (none would mean anything), even with no
    minimum of shoppers, and no model is trained or announced."""
    from stream.ops.continuous_training import learn_once
    from stream.ops.model_log import read_models

    catalog, ids = small_catalog
    settings = settings_factory(learn_epochs=1, learn_min_users=0, learn_margin=-1.0)
    run(produce_raw(settings, [keyed(e) for e in shop_streams(ids, n_users=12, length=2)]))

    summary = run(learn_once(settings, catalog=catalog))
    assert summary["reason"].startswith("nothing to evaluate"), summary
    assert summary["held_out_users"] == 0 and "offline" not in summary and summary["announced"] is None
    assert run(read_models(settings)) == {}


def test_learn_once_announces_a_candidate_and_leaves_out_the_forgotten(settings_factory, small_catalog):
    from stream.clients import request_forget
    from stream.ops.continuous_training import learn_once
    from stream.ops.model_log import read_models

    catalog, ids = small_catalog
    settings = settings_factory(session_encoder="default", learn_epochs=2, learn_min_users=10,
                                learn_margin=-1.0, candidate_share=0.25, pseudonymise_key="k3y")
    run(produce_raw(settings, [keyed(e) for e in purchase_streams(ids)]))
    run(request_forget(settings, "shopper-3"))
    run(produce_raw(settings, [keyed(event(10_000, "shopper-bad", "purchase"))]))   # no item_id: invalid

    summary = run(learn_once(settings, catalog=catalog))
    assert summary["announced"], summary
    assert summary["events_read"] == N_USERS * 6 + 1 and summary["invalid"] == 1
    assert summary["excluded_users"] == 1 and summary["excluded_events"] == 6 and summary["forgotten_new"] == 1
    assert summary["users"] == N_USERS - 1 and summary["held_out_users"] == N_USERS - 1
    off = summary["offline"]
    assert 0.0 <= off["ndcg@10"] <= 1.0 and 0.0 <= off["serving_ndcg@10"] <= 1.0
    assert off["held_out_users"] == N_USERS - 1

    models = run(read_models(settings))
    rec = models[summary["announced"]]
    assert rec.state == "candidate" and rec.share == 0.25 and rec.offline == off
    from pathlib import Path

    from engines.session_model import read_manifest
    from index import read_manifest as read_index_manifest

    manifest = read_manifest(rec.artifact)
    assert manifest["model_version"] == rec.version and manifest["continued_from"].endswith("session_encoder")
    assert (Path(rec.artifact) / "session_encoder.onnx").is_file()
    assert read_index_manifest(rec.index)["model_version"].endswith(f"+items:{rec.version}")

    # the learn state keeps the forgotten shopper as a pseudonym, never the plain id
    state = (settings.data_dir / "learn" / "forgotten.txt").read_text()
    from stream.core.pseudonyms import pseudonym

    assert state.split() == [pseudonym("k3y", "shopper-3")] and "shopper-3" not in state
    # while the candidate is on trial, the next pass trains nothing
    again = run(learn_once(settings, catalog=catalog))
    assert again["announced"] is None and "on trial" in again["reason"]


def test_learn_once_declines_below_the_margin_and_then_waits_for_new_events(settings_factory, small_catalog):
    from stream.ops.continuous_training import learn_once
    from stream.ops.model_log import read_models

    catalog, ids = small_catalog
    settings = settings_factory(learn_epochs=1, learn_min_users=10, learn_margin=1.0)   # pooling serves
    run(produce_raw(settings, [keyed(e) for e in purchase_streams(ids, n_users=40)]))

    summary = run(learn_once(settings, catalog=catalog))
    assert summary["announced"] is None and "below the margin" in summary["reason"], summary
    assert summary["offline"]["serving_version"] == "pooling"
    assert run(read_models(settings)) == {}
    assert not [p for p in (settings.data_dir / "registry").iterdir() if not p.name.startswith(".")]

    again = run(learn_once(settings, catalog=catalog))
    assert again["reason"] == "no new events since the last pass" and again["new_messages"] == 0


def test_train_from_topic_reads_like_learn(settings_factory, small_catalog):
    """`shopstream train-from-topic`'s reader: every valid event, forgotten shoppers left out."""
    from stream.cli.train import read_events_topic
    from stream.clients import request_forget

    _, ids = small_catalog
    settings = settings_factory()
    run(produce_raw(settings, [keyed(e) for e in purchase_streams(ids, n_users=5)]))
    run(request_forget(settings, "shopper-1"))
    events = run(read_events_topic(settings))
    assert len(events) == 4 * 6 and "shopper-1" not in {e["user_id"] for e in events}
    assert len(run(read_events_topic(settings, max_events=10))) <= 10


def test_learn_once_command_on_an_empty_topic(settings_factory, monkeypatch, capsys):
    from stream.cli import main

    settings = settings_factory()
    for name in ("events_topic", "recommendations_topic", "models_topic", "app_id", "data_dir"):
        monkeypatch.setenv(f"SHOPSTREAM_{name.upper()}", str(getattr(settings, name)))
    main(["learn", "--once", "--broker", settings.broker, "--json"])
    out = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["learn"]["announced"] is None and out["learn"]["reason"] == "no new events since the last pass"
    assert out["decisions"] == []

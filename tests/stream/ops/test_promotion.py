"""Promotion and automatic withdrawal, driven by synthetic online outcomes.

The pure decision first (counts in, records out), then the whole loop against the real broker:
a candidate announced on the models topic, recommendations and hits written to their topics,
`decide` reads them and writes its decision back to the models topic.
"""
from __future__ import annotations

import orjson
import pytest

from stream.core.online_stats import HitRate
from stream.ops.models import ModelRecord, now_iso
from tests.conftest import run
from tests.kafka_io import produce_raw

DEFAULT = ModelRecord(version="session-tf-aaaaaaaaaaaa", state="default", artifact="/r/a/model")
CANDIDATE = ModelRecord(version="session-tf-bbbbbbbbbbbb", state="candidate", artifact="/r/b/model", share=0.2,
                        offline={"ndcg@10": 0.2, "serving_ndcg@10": 0.19}, decided_at="2026-01-01T00:00:00Z")


def test_significantly_better_promotes_and_retires_the_old_default():
    from stream.ops.promotion import decide_on

    out = decide_on(DEFAULT, CANDIDATE, HitRate(100, 2000), HitRate(160, 2000), alpha=0.05, min_served=500)
    assert [(r.version, r.state) for r in out] == [(DEFAULT.version, "retired"), (CANDIDATE.version, "default")]
    new_default = out[1]
    assert new_default.share == 0.0 and new_default.offline == CANDIDATE.offline
    assert new_default.online["verdict"] == "better" and new_default.online["p_value"] < 0.05
    assert new_default.online["candidate"] == {"hits": 160, "served": 2000, "hit_rate": 0.08,
                                               "ci95": new_default.online["candidate"]["ci95"]}
    assert "significantly better" in new_default.reason and new_default.decided_at > CANDIDATE.decided_at


def test_significantly_worse_withdraws_the_candidate():
    from stream.ops.promotion import decide_on

    out = decide_on(DEFAULT, CANDIDATE, HitRate(160, 2000), HitRate(100, 2000), alpha=0.05, min_served=500)
    assert [(r.version, r.state) for r in out] == [(CANDIDATE.version, "withdrawn")]
    assert out[0].online["verdict"] == "worse" and "significantly worse" in out[0].reason


@pytest.mark.parametrize("control,treated", [
    (HitRate(100, 2000), HitRate(110, 2000)),      # a small difference: not significant
    (HitRate(10, 100), HitRate(40, 100)),          # a big one, but fewer than min_served trials
])
def test_inconclusive_holds(control, treated):
    from stream.ops.promotion import decide_on

    assert decide_on(DEFAULT, CANDIDATE, control, treated, alpha=0.05, min_served=500) == []


def test_without_a_default_record_the_candidate_is_promoted_alone():
    from stream.ops.promotion import decide_on

    out = decide_on(None, CANDIDATE, HitRate(100, 2000), HitRate(160, 2000), min_served=500)
    assert [(r.version, r.state) for r in out] == [(CANDIDATE.version, "default")]


def test_counting_matches_hits_to_served_recommendations():
    from stream.ops.promotion import count_outcomes

    v = CANDIDATE.version
    recs = ([{"recommendation_id": f"c{i}", "session_model_version": f"{v}-int8"} for i in range(10)]
            + [{"recommendation_id": f"d{i}", "session_model_version": DEFAULT.version} for i in range(20)])
    fb = [{"recommendation_id": "c1"}, {"recommendation_id": "c1"}, {"recommendation_id": "d3"},
          {"recommendation_id": "zz-not-served-in-the-window"}]
    control, treated = count_outcomes(recs, fb, v)
    assert (treated.hits, treated.served) == (1, 10)        # a second hit on one recommendation is not counted
    assert (control.hits, control.served) == (1, 20)


def _outcomes(version: str, served: int, hits: int, prefix: str) -> tuple[list, list]:
    recs = [(f"u{i}".encode(), orjson.dumps({"recommendation_id": f"{prefix}{i}", "variant": prefix,
                                             "session_model_version": version, "user_id": f"u{i}"}))
            for i in range(served)]
    fb = [(f"u{i}".encode(), orjson.dumps({"recommendation_id": f"{prefix}{i}", "variant": prefix,
                                           "session_model_version": version, "event_type": "click",
                                           "product_id": "p", "rank": 1, "user_id": f"u{i}"}))
          for i in range(hits)]
    return recs, fb


@pytest.mark.parametrize("cand_hits,expected", [(40, "withdrawn"), (130, "default")])
def test_decide_reads_the_topics_and_announces_its_decision(settings_factory, monkeypatch, capsys, cand_hits,
                                                            expected):
    from stream.ops.model_log import announce, read_models
    from stream.ops.promotion import decide

    settings = settings_factory()
    default = ModelRecord(version="session-tf-000000000001", state="default", artifact="/r/1/model",
                          decided_at="2026-01-01T00:00:00Z")
    candidate = ModelRecord(version="session-tf-000000000002", state="candidate", artifact="/r/2/model",
                            share=0.5, decided_at=now_iso())
    run(announce(settings, default, candidate))
    c_recs, c_fb = _outcomes(candidate.version, 800, cand_hits, "cand")
    d_recs, d_fb = _outcomes(default.version, 800, 80, "ctrl")
    run(produce_raw(settings, c_recs + d_recs, topic=settings.recommendations_topic))
    run(produce_raw(settings, c_fb + d_fb, topic=settings.resolved_feedback_topic))

    records = run(decide(settings, alpha=0.01, min_served=500))
    assert expected in [r.state for r in records]
    now = run(read_models(settings))
    assert now[candidate.version].state == expected
    assert now[candidate.version].online["candidate"]["served"] == 800
    assert now[candidate.version].online["control"] == {"hits": 80, "served": 800, "hit_rate": 0.1,
                                                        "ci95": now[candidate.version].online["control"]["ci95"]}
    assert now[default.version].state == ("retired" if expected == "default" else "default")
    # nothing left to decide: a second call writes nothing
    assert run(decide(settings, alpha=0.01, min_served=500)) == []

    # shopstream models lists both versions with their state and online figures
    from stream.cli import main

    monkeypatch.setenv("SHOPSTREAM_MODELS_TOPIC", settings.models_topic)
    main(["models", "--broker", settings.broker])
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith(candidate.version))
    assert expected in row and "(800)" in row
    main(["models", "--broker", settings.broker, "--json"])
    listed = {r["version"]: r for r in orjson.loads(capsys.readouterr().out)}
    assert listed[candidate.version]["state"] == expected and listed[default.version]["artifact"] == "/r/1/model"

"""Chaos in CI: two workers killed again and again, the broker paused, one worker's state disk
refusing every write for 8 s, the catalogue churning, malformed input, an encoder that fails for chosen events and session values in the changelog that
do not parse -- and nothing lost.

The scenario is :mod:`stream.tools.chaos` (``shopstream bench chaos`` runs a longer one). Bounded:
about three minutes on a 2-core machine, most of it workers loading the model after each kill.
"""
from __future__ import annotations

import logging
import os
import signal

import pytest

from stream.tools.chaos import MALFORMED_KINDS, ChaosPlan, render, run_chaos

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

PLAN = ChaosPlan(events=900, rate=15.0, workers=2, kills=5, pause_s=10.0, malformed_share=0.10,
                 churn_products=4, fault_events=3, users=50, seed=3, settle_timeout_s=150.0, disk_fault_s=8.0)


def test_kills_pause_churn_and_malformed_input_lose_nothing(settings_factory, embedded_broker, tmp_path):
    settings = settings_factory(partitions=4)
    try:
        report = run_chaos(settings, PLAN, broker_pid=embedded_broker.pid, log_dir=tmp_path / "chaos")
    finally:
        os.kill(embedded_broker.pid, signal.SIGCONT)     # the broker serves the whole session
    log.info("chaos run:\n%s", render(report.to_dict()))
    logs = f"worker logs: {report.worker_logs}"

    # the chaos happened
    assert report.kills >= 5 and report.restarts >= 5
    assert report.kills_of_ready >= 3, "most kills hit a worker that was processing"
    assert report.pause_s == 10.0
    assert report.disk_fault_s > 0
    assert report.disk_fault_unready or report.worker_exits, \
        "the failing disk showed neither on /ready nor as a worker exit"
    assert report.churn_updates >= 10
    assert report.malformed >= PLAN.events * PLAN.malformed_share * 0.9
    assert set(report.malformed_by_kind) == set(MALFORMED_KINDS)
    assert report.fault_events == 3
    assert report.corrupt_sessions == 3

    # 0 valid events lost; every bad one dead-lettered with its reason
    assert not report.valid_missing, f"{len(report.valid_missing)} valid event(s) lost: {report.valid_missing[:20]}; {logs}"
    assert not report.churn_missing, f"events naming churned products lost: {report.churn_missing[:20]}; {logs}"
    assert not report.wrong, f"handled wrongly: {report.wrong[:20]}; {logs}"
    assert report.fault_dead_lettered == 3 and not report.fault_missing, report.fault_missing
    assert report.malformed_dead_lettered == report.malformed, \
        f"malformed not dead-lettered: {report.malformed_missing[:20]}; {logs}"
    assert report.valid_reflected == report.valid
    assert report.sessions_checked > 0
    assert not report.valid_missing_from_sessions, \
        f"valid events missing from their shopper's session: {report.valid_missing_from_sessions[:20]}; {logs}"
    assert report.churn_reflected + report.churn_dead_lettered == report.churn_events
    assert {r for r in report.dead_letter_reasons} <= {*MALFORMED_KINDS, "processing_error", "unknown_product"}
    assert report.ok

"""Promotion and rollback of a candidate session encoder from its online outcomes.

:func:`decide_on` is pure: the candidate's and the control's hit rates in, the records that move
states out (empty while the comparison is inconclusive). :func:`decide` reads the counts from
Kafka: a recommendation on the recommendations topic produced after the candidate was announced
is a trial for the version that made it (``session_model_version``: the candidate's, or anything
else for the control); a feedback record naming one of those recommendations
(``recommendation_id``) makes it a hit, at most once. Every decision is logged with its numbers and
written to the models topic with the comparison in ``online``. A candidate whose artifacts in the
registry cannot be fetched or fail their sha256 check (what every worker checks before loading
it) is withdrawn with that reason before any comparison, so the learning loop goes on.
"""
from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from stream.core.online_stats import HitRate, compare
from stream.ops.models import ModelRecord
from stream.settings import Settings

log = logging.getLogger(__name__)


def decide_on(default: ModelRecord | None, candidate: ModelRecord, control: HitRate, treated: HitRate, *,
              alpha: float = 0.05, min_served: int = 100) -> list[ModelRecord]:
    """``better``: the candidate becomes ``default`` and the old default ``retired``; ``worse``: the
    candidate is ``withdrawn``; ``inconclusive``: nothing changes (an empty list)."""
    c = compare(control, treated, alpha=alpha, min_served=min_served)
    online = {**c.to_dict(), "min_served": min_served}
    figures = (f"hit rate {treated.rate:.4f} ({treated.hits}/{treated.served}) vs control {control.rate:.4f} "
               f"({control.hits}/{control.served}), p={c.p_value:.4g}, alpha={alpha}")
    log.info("promotion: candidate %s vs %s: %s -> %s", candidate.version, default.version if default else "control",
             figures, c.verdict)
    if c.verdict == "better":
        out = [_unshared(candidate.moved_to("default", f"significantly better online: {figures}", online))]
        if default is not None:
            out.insert(0, _unshared(default.moved_to("retired", f"replaced by {candidate.version}: {figures}", online)))
        return out
    if c.verdict == "worse":
        return [_unshared(candidate.moved_to("withdrawn", f"significantly worse online: {figures}", online))]
    return []


def _unshared(record: ModelRecord) -> ModelRecord:
    """Only a candidate has a share: the default serves everyone else, the others nobody."""
    return dataclasses.replace(record, share=0.0)


def _ms(iso: str) -> int | None:
    if not iso:
        return None
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def is_version(served: str, version: str) -> bool:
    """A recommendation's ``session_model_version`` names ``version`` (``-int8``/``-fp16`` serve it too)."""
    return served == version or served.startswith(version + "-")


def count_outcomes(recommendations: list[dict], feedback: list[dict], candidate: str) -> tuple[HitRate, HitRate]:
    """(control, candidate) hit rates from recommendation and feedback records (pure)."""
    served: dict[str, bool] = {}
    for r in recommendations:
        rid = r.get("recommendation_id")
        if rid:
            served[rid] = is_version(str(r.get("session_model_version", "")), candidate)
    hit_ids = {f.get("recommendation_id") for f in feedback} & served.keys()
    cand_served = sum(served.values())
    cand_hits = sum(1 for rid in hit_ids if served[rid])
    return (HitRate(len(hit_ids) - cand_hits, len(served) - cand_served), HitRate(cand_hits, cand_served))


async def decide(settings: Settings, *, alpha: float = 0.05, min_served: int = 100) -> list[ModelRecord]:
    """Compare the current candidate with the default on what happened since its announcement, and
    announce the decision (if any). Returns the records written."""
    import orjson

    from stream.ops.model_log import announce, read_models, read_topic_to_end
    from stream.ops.models import serving

    default, candidate = serving(await read_models(settings))
    if candidate is None:
        return []
    from stream.ops.fleet import verify

    refused = verify(settings, candidate)      # what every worker checks before it loads a model
    if refused is not None:
        record = _unshared(candidate.moved_to("withdrawn", f"refused: {refused}"))
        log.error("promotion: candidate %s withdrawn: %s", candidate.version, refused)
        await announce(settings, record)
        return [record]
    since = _ms(candidate.decided_at)

    def values(rows):
        out = []
        for _, v, _ in rows:
            try:
                doc = orjson.loads(v) if v else None
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    recs = values(await read_topic_to_end(settings, settings.recommendations_topic, since_ms=since))
    fb = values(await read_topic_to_end(settings, settings.resolved_feedback_topic, since_ms=since))
    control, treated = count_outcomes(recs, fb, candidate.version)
    records = decide_on(default, candidate, control, treated, alpha=alpha, min_served=min_served)
    if records:
        await announce(settings, *records)
    return records

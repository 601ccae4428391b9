"""Hit-rate intervals and the two-proportion test against values computed by hand / scipy."""
from __future__ import annotations

import math

from stream.core.online_stats import HitRate, compare


def test_wilson_interval_known_value():
    lo, hi = HitRate(10, 100).interval()
    assert math.isclose(lo, 0.0552, abs_tol=1e-4) and math.isclose(hi, 0.1744, abs_tol=1e-4)
    assert HitRate(0, 0).interval() == (0.0, 1.0)


def test_two_proportion_test():
    c = compare(HitRate(100, 1000), HitRate(140, 1000))
    # pooled p = 0.12, se = sqrt(0.12 * 0.88 * 2 / 1000), z = 0.04 / se
    assert math.isclose(c.z, 2.7524, abs_tol=1e-3) and math.isclose(c.p_value, 0.005916, abs_tol=1e-5)
    assert c.verdict == "better" and math.isclose(c.lift, 0.4)
    assert compare(HitRate(140, 1000), HitRate(100, 1000)).verdict == "worse"
    assert compare(HitRate(100, 1000), HitRate(105, 1000)).verdict == "inconclusive"
    assert compare(HitRate(1, 10), HitRate(9, 10)).verdict == "inconclusive"      # too few trials

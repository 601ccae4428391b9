"""Online quality as counts: hit rates with 95% intervals, and the test that compares two variants.

A recommendation served is a trial; a later click, add-to-cart or purchase of one of its products
within the horizon makes it a hit (at most one hit per recommendation). Everything here is pure
arithmetic on those counts, shared by the worker's metrics, ``shopstream report online``, the
promotion decisions of ``shopstream learn`` and the benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class HitRate:
    hits: int
    served: int

    @property
    def rate(self) -> float:
        return self.hits / self.served if self.served else 0.0

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """Wilson score interval (95% by default); (0, 1) with nothing served."""
        n = self.served
        if n == 0:
            return 0.0, 1.0
        p = self.hits / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        return max(0.0, centre - half), min(1.0, centre + half)

    def to_dict(self) -> dict:
        lo, hi = self.interval()
        return {"hits": self.hits, "served": self.served, "hit_rate": round(self.rate, 6),
                "ci95": [round(lo, 6), round(hi, 6)]}


@dataclass(frozen=True)
class Comparison:
    """``candidate`` against ``control``: a two-sided two-proportion z-test."""

    control: HitRate
    candidate: HitRate
    z: float
    p_value: float
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` (both significant at ``alpha``) or ``inconclusive``."""
        if not self.significant:
            return "inconclusive"
        return "better" if self.candidate.rate > self.control.rate else "worse"

    @property
    def lift(self) -> float:
        """Relative change of the candidate's hit rate over the control's."""
        return self.candidate.rate / self.control.rate - 1.0 if self.control.rate else 0.0

    def to_dict(self) -> dict:
        return {"control": self.control.to_dict(), "candidate": self.candidate.to_dict(),
                "z": round(self.z, 4), "p_value": round(self.p_value, 6), "alpha": self.alpha,
                "lift": round(self.lift, 4), "verdict": self.verdict}


def compare(control: HitRate, candidate: HitRate, alpha: float = 0.05, min_served: int = 100) -> Comparison:
    """Two-proportion z-test with the pooled standard error; fewer than ``min_served`` trials on
    either side is never significant."""
    n1, n2 = control.served, candidate.served
    if n1 < min_served or n2 < min_served:
        return Comparison(control, candidate, 0.0, 1.0, alpha)
    pooled = (control.hits + candidate.hits) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return Comparison(control, candidate, 0.0, 1.0, alpha)
    z = (candidate.rate - control.rate) / se
    p = math.erfc(abs(z) / math.sqrt(2))          # two-sided
    return Comparison(control, candidate, z, p, alpha)

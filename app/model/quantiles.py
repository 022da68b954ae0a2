"""A mergeable histogram for durations (startup time, seek latency): logarithmic buckets,
each GAMMA times wider than the one before, so any quantile read from it is within
RELATIVE_ERROR of a true sample value (the DDSketch construction, with fixed buckets).
GAMMA trades precision for rows: an hour of a popular video fills every bucket between its
fastest and slowest startups, and a month's answer reads every (hour, bucket) row; 10 %
buckets (±4.8 %) keep that to ~40 rows per hour, and a startup of 1.20 s is reported as
somewhere in 1.14–1.26 s.

Why buckets and not exact values: the QoE rollups keep one histogram per video x
15-minute bucket x device class, and histograms add up. Exact percentiles would need every
sample at query time, which is linear in the sessions; these are constant-size, and the
raw path bins the same samples with the same function, so both paths give identical
answers. Shared by storage (which stores bucket counts) and query (which reads quantiles).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

GAMMA = 1.1
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)  # ~4.8 %
MAX_MS = 600_000.0  # ten minutes: anything longer is binned as ten minutes
_LOG_GAMMA = math.log(GAMMA)


def index(ms: float) -> int:
    """The bucket of a duration in milliseconds: i such that GAMMA^(i-1) < ms <= GAMMA^i
    (durations up to 1 ms share bucket 0)."""
    value = min(max(ms, 1.0), MAX_MS)
    return math.ceil(math.log(value) / _LOG_GAMMA)


def representative(i: int) -> float:
    """The value reported for bucket i: within RELATIVE_ERROR of anything in it."""
    return 2 * GAMMA**i / (GAMMA + 1)


def histogram(values: Iterable[float]) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        i = index(v)
        out[i] = out.get(i, 0) + 1
    return out


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The nearest-rank q-quantile (0 < q <= 1): the bucket holding the ceil(q * n)-th
    smallest sample, as its representative value, in ms rounded to 0.1; None when empty."""
    return quantiles(counts, (q,))[0]


def quantiles(counts: Mapping[int, int], qs: tuple[float, ...]) -> list[float | None]:
    """quantile() of each of qs (ascending), in one pass over the histogram."""
    kept = sorted((i, c) for i, c in counts.items() if c > 0)
    total = sum(c for _, c in kept)
    if total == 0:
        return [None] * len(qs)
    out: list[float | None] = []
    seen, at = 0, 0
    for q in qs:
        rank = max(1, math.ceil(q * total - 1e-9))
        while seen < rank:  # rank <= total: ends within the histogram
            seen += kept[at][1]
            at += 1
        out.append(round(representative(kept[at - 1][0]), 1))
    return out


def add(into: dict[int, int], more: Mapping[int, int], sign: int = 1) -> None:
    if not into and sign == 1:
        into.update(more)  # the usual case when merging: nothing there yet
        return
    for i, c in more.items():
        into[i] = into.get(i, 0) + sign * c

"""Time buckets and per-bucket series (pure, vectorized).

Rules: bucket 0 starts at the capture's first packet; buckets are whole seconds, 1 s unless the
capture is long, then the smallest of BUCKET_CHOICES_S that keeps the series within
MAX_BUCKETS (a 1 h capture gets 5 s buckets). Counts are per bucket; rates are events over
data segments of the same bucket (null without data); RTT percentiles are nearest-rank over the
bucket's samples (null without samples). Series are plain lists, ready for JSON.
"""

from __future__ import annotations

import numpy as np

BUCKET_CHOICES_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
MAX_BUCKETS = 720
PERCENTILES = (50, 90, 99)


def choose_bucket_s(duration_s: float) -> int:
    for b in BUCKET_CHOICES_S:
        if duration_s / b <= MAX_BUCKETS:
            return b
    return BUCKET_CHOICES_S[-1]


def bucket_of(ts_ns: np.ndarray, origin_ns: int, bucket_s: int, n: int) -> np.ndarray:
    b = (np.asarray(ts_ns, np.int64) - origin_ns) // (bucket_s * 1_000_000_000)
    return np.clip(b, 0, max(n - 1, 0))


def counts(buckets: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    if buckets.size == 0:
        return np.zeros(n, np.int64)
    c = np.bincount(buckets, weights=weights, minlength=n)[:n]
    return c if weights is not None else c.astype(np.int64)


def grouped_percentiles(group: np.ndarray, values: np.ndarray, n: int,
                        pcts=PERCENTILES) -> np.ndarray:
    """(n, len(pcts)) nearest-rank percentiles of `values` per group 0..n-1 (NaN: empty)."""
    out = np.full((n, len(pcts)), np.nan)
    if group.size == 0:
        return out
    o = np.lexsort((values, group))
    g, v = group[o], values[o]
    size = np.bincount(g, minlength=n)[:n]
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    has = size > 0
    for j, p in enumerate(pcts):
        rank = np.ceil(p / 100.0 * size).astype(np.int64) - 1
        rank = np.clip(rank, 0, None)
        out[has, j] = v[(start + rank)[has]]
    return out


def as_list(x: np.ndarray, digits: int | None = None) -> list:
    """JSON-ready: NaN -> None, floats rounded."""
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        return x.astype(np.int64).tolist()
    if digits is not None:
        x = np.round(x, digits)
    return [None if v != v else v for v in x.tolist()]


def rate(events: np.ndarray, denominators: np.ndarray, digits: int = 6) -> list:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(denominators > 0, events / np.maximum(denominators, 1), np.nan)
    return as_list(r, digits)

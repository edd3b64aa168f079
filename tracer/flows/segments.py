"""Segmented scans: running max, cumulative sum and forward fill within groups of rows.

The flow stage sorts a batch's packets by (flow, direction, frame); each flow-direction is then
a contiguous *segment*, and every sequential rule of TCP analysis ("the highest sequence number
seen before this segment", "the last ACK this side sent") becomes a scan restricted to
segments, seeded with the value carried over from earlier batches. These functions are those
scans, each a few whole-array operations.

Rules: `seg` is a non-decreasing array of segment numbers 0..nseg-1 (rows sorted by it);
`init` has one value per segment. "Exclusive" scans look only at earlier rows.
"""

from __future__ import annotations

import numpy as np

_LIMIT = np.int64(2**62)


def starts_of(seg: np.ndarray) -> np.ndarray:
    """Bool per row: first row of its segment."""
    first = np.ones(seg.shape, bool)
    if seg.size:
        first[1:] = seg[1:] != seg[:-1]
    return first


def running_max(values: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Inclusive running maximum of int64 values within each segment."""
    if values.size == 0:
        return values.copy()
    values = values.astype(np.int64)
    lo = values.min()
    span = int(values.max() - lo) + 1
    nseg = int(seg[-1]) + 1
    if span * nseg < int(_LIMIT):
        # Lift each segment above all earlier ones; one global accumulate then stays inside.
        lifted = (values - lo) + seg.astype(np.int64) * span
        return np.maximum.accumulate(lifted) - seg.astype(np.int64) * span + lo
    # Values too far apart to lift: doubling steps, log2(longest segment) of them.
    out = values.copy()
    step = 1
    n = out.shape[0]
    while step < n:
        same = seg[step:] == seg[:-step]
        candidate = np.where(same, out[:-step], out[step:])
        out[step:] = np.maximum(out[step:], candidate)
        step *= 2
    return out


def exclusive_max(values: np.ndarray, seg: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Max of `init[seg]` and the values of earlier rows of the same segment."""
    inclusive = running_max(values, seg)
    out = init[seg].astype(np.int64)
    if values.size > 1:
        same = seg[1:] == seg[:-1]
        prev = np.where(same, inclusive[:-1], np.iinfo(np.int64).min)
        out[1:] = np.maximum(out[1:], prev)
    return out


def last_index_before(valid: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Index of the last earlier row of the same segment where `valid`, or -1."""
    n = valid.shape[0]
    idx = np.where(valid, np.arange(n, dtype=np.int64), -1)
    inclusive = running_max(idx, seg)
    out = np.full(n, -1, np.int64)
    if n > 1:
        same = seg[1:] == seg[:-1]
        out[1:] = np.where(same, inclusive[:-1], -1)
    return out


def ffill_before(values: np.ndarray, valid: np.ndarray, seg: np.ndarray,
                 init: np.ndarray) -> np.ndarray:
    """The value of the last earlier `valid` row of the same segment, else `init[seg]`."""
    prev = last_index_before(valid, seg)
    out = init[seg].copy()
    has = prev >= 0
    out[has] = values[prev[has]]
    return out


def cumsum_in(values: np.ndarray, seg: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum within segments, starting from `init[seg]`."""
    values = values.astype(np.int64)
    total = np.cumsum(values)
    start = np.maximum.accumulate(np.where(starts_of(seg), np.arange(values.shape[0]), 0))
    before_segment = total[start] - values[start]
    return total - before_segment + init[seg]


def last_of(values: np.ndarray, seg: np.ndarray, nseg: int, fill) -> np.ndarray:
    """The last row's value in each segment (`fill` for empty segments)."""
    out = np.full(nseg, fill, dtype=values.dtype)
    if values.size:
        last = np.ones(seg.shape, bool)
        last[:-1] = seg[1:] != seg[:-1]
        out[seg[last]] = values[last]
    return out


def first_of(values: np.ndarray, seg: np.ndarray, nseg: int, fill) -> np.ndarray:
    out = np.full(nseg, fill, dtype=values.dtype)
    if values.size:
        first = starts_of(seg)
        out[seg[first]] = values[first]
    return out


def reduce_by(ufunc: np.ufunc, values: np.ndarray, seg: np.ndarray, nseg: int,
              fill) -> np.ndarray:
    """`ufunc` over each segment's values (seg sorted); `fill` where a segment has no rows.

    The sorted-segment counterpart of `ufunc.at`, which is unbuffered and many times slower.
    """
    out = np.full(nseg, fill, dtype=values.dtype)
    if values.size:
        starts = np.flatnonzero(starts_of(seg))
        out[seg[starts]] = ufunc.reduceat(values, starts)
    return out


def reduce_by_key(ufunc: np.ufunc, values: np.ndarray, keys: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys, `ufunc` over each key's values), for unsorted keys."""
    order = np.argsort(keys, kind="stable")
    k, vals = keys[order], values[order]
    if k.size == 0:
        return k, vals
    starts = np.flatnonzero(starts_of(k))
    return k[starts], ufunc.reduceat(vals, starts)

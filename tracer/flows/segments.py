"""Segmented scans: running max, cumulative sum and forward fill within groups of rows.

The flow stage sorts a batch's packets by (flow, direction, frame); each flow-direction is then
a contiguous *segment*, and every sequential rule of TCP analysis ("the highest sequence number
seen before this segment", "the last ACK this side sent") becomes a scan restricted to
segments, seeded with the value carried over from earlier batches. These functions are those
scans, each a few whole-array operations.

Rules: `seg` is a non-decreasing array of segment numbers 0..nseg-1 (rows sorted by it), given
either as an array or as a `Segments`, which computes the segment boundaries once for the many
scans a batch runs over the same order; `init` has one value per segment. "Exclusive" scans
look only at earlier rows.

Theory: a scan that must restart at every segment start costs the same as a global one when
the restart can be folded into the values. Indices only grow, so "the last valid row before
this one" is a global running max of valid row indices, kept only when it is not before the
row's segment start. Values are lifted above every earlier segment's (value + segment * span)
so one global running max never carries a value across a boundary.
"""

from __future__ import annotations

import numpy as np

_LIMIT = np.int64(2**62)
# Bounded scans: values in [-_BOUND, _BOUND - 1) (unwrapped sequence numbers: a TB each way;
# lower ones, such as NO_SEQ, are "none yet"), segments fewer than 2**21.
_SPAN_BITS = 41
_BOUND = 2**40


class Segments:
    """A sorted segment-number array with its boundaries computed once."""

    __slots__ = ("seg", "n", "nseg", "starts", "first_rows", "last_rows",
                 "first_seg", "last_seg", "rows", "_seg64", "_lift", "_start_row")

    def __init__(self, seg: np.ndarray, nseg: int | None = None) -> None:
        self.seg = seg
        self.n = n = seg.shape[0]
        self.starts = starts_of(seg)
        self.first_rows = np.flatnonzero(self.starts)
        last = np.ones(n, bool)
        if n:
            last[:-1] = self.starts[1:]
        self.last_rows = np.flatnonzero(last)
        self.first_seg = seg[self.first_rows]
        self.last_seg = seg[self.last_rows]
        self.nseg = (int(seg[-1]) + 1 if n else 0) if nseg is None else nseg
        self.rows = np.arange(n, dtype=np.int64)
        self._seg64 = None
        self._lift = None
        self._start_row = None

    def per_segment(self, values: np.ndarray) -> np.ndarray:
        """`values` (one per non-empty segment, in segment order) spread to every row of its
        segment: a lookup table indexed by segment number (a gather, not a scan)."""
        table = np.empty(self.nseg, values.dtype)
        table[self.first_seg] = values
        return table.take(self.seg)

    @property
    def start_row(self) -> np.ndarray:
        """Row index of the start of each row's segment."""
        if self._start_row is None:
            self._start_row = self.per_segment(self.first_rows)
        return self._start_row

    @property
    def seg64(self) -> np.ndarray:
        if self._seg64 is None:
            self._seg64 = self.seg.astype(np.int64)
        return self._seg64

    @property
    def lift(self) -> np.ndarray:
        """Each row's segment number times _SPAN, shared by every bounded scan of a batch."""
        if self._lift is None:
            self._lift = self.seg64 << _SPAN_BITS
        return self._lift


def _segments(seg) -> Segments:
    return seg if isinstance(seg, Segments) else Segments(seg)


def starts_of(seg: np.ndarray) -> np.ndarray:
    """Bool per row: first row of its segment."""
    first = np.ones(seg.shape, bool)
    if seg.size:
        np.not_equal(seg[1:], seg[:-1], out=first[1:])
    return first


def running_max(values: np.ndarray, seg) -> np.ndarray:
    """Inclusive running maximum of int64 values within each segment."""
    if values.size == 0:
        return values.astype(np.int64)
    s = _segments(seg)
    values = values.astype(np.int64, copy=False)
    hi = int(values.max())
    if hi < _BOUND - 1 and s.nseg < 2**21:
        # The usual case: one lift shared by the batch's scans, sentinels (below -_BOUND)
        # raised to just under the real values for the scan and put back after.
        floor = -_BOUND - 1
        raised = np.maximum(values, floor)
        raised += s.lift
        out = np.maximum.accumulate(raised)
        out -= s.lift
        low = np.flatnonzero(out == floor)
        if low.size:
            # Rows with nothing above the bound yet in their segment (a prefix of it): their
            # own running max, usually of one sentinel value.
            below = values[low]
            if int(below.min()) == int(below.max()):
                out[low] = below[0]
            else:
                out[low] = _running_max_wide(below, Segments(s.seg[low]))
        return out
    return _running_max_wide(values, s)


def _running_max_wide(values: np.ndarray, s: Segments) -> np.ndarray:
    """running_max for any int64 values."""
    lo, hi = int(values.min()), int(values.max())
    if (hi - lo + 1) * s.nseg < int(_LIMIT):
        return _lifted_max(values, s, lo, hi - lo + 1)
    # The usual reason for a span too wide to lift: a sentinel ("none yet", e.g. NO_SEQ) far
    # below the real values. Raise it to just under them, scan, and put it back.
    real_lo = int(np.where(values == lo, hi, values).min())
    floor = real_lo - 1
    if (hi - floor + 1) * s.nseg < int(_LIMIT):
        out = _lifted_max(np.maximum(values, floor), s, floor, hi - floor + 1)
        out[out == floor] = lo
        return out
    # Values too far apart to lift: doubling steps, log2(longest segment) of them.
    out = values.copy()
    step = 1
    n = out.shape[0]
    segv = s.seg
    while step < n:
        same = segv[step:] == segv[:-step]
        candidate = np.where(same, out[:-step], out[step:])
        out[step:] = np.maximum(out[step:], candidate)
        step *= 2
    return out


def _lifted_max(values: np.ndarray, s: Segments, lo: int, span: int) -> np.ndarray:
    lift = s.seg64 * span
    lifted = values - lo
    lifted += lift
    out = np.maximum.accumulate(lifted)
    out -= lift
    out += lo
    return out


def exclusive_max(values: np.ndarray, seg, init: np.ndarray) -> np.ndarray:
    """Max of `init[seg]` and the values of earlier rows of the same segment."""
    s = _segments(seg)
    inclusive = running_max(values, s)
    out = init[s.seg].astype(np.int64)
    if values.size > 1:
        prev = inclusive[:-1]
        np.maximum(out[1:], prev, out=out[1:], where=~s.starts[1:])
    return out


def last_index_before(valid: np.ndarray, seg) -> np.ndarray:
    """Index of the last earlier row of the same segment where `valid`, or -1."""
    s = _segments(seg)
    n = valid.shape[0]
    out = np.empty(n, np.int64)
    if n == 0:
        return out
    out[0] = -1
    if n > 1:
        idx = np.where(valid[:-1], s.rows[:-1], -1)
        np.maximum.accumulate(idx, out=out[1:])
        # (np.where: a masked assignment branches per row, several times slower)
        out = np.where(out >= s.start_row, out, -1)
    return out


def ffill_before(values: np.ndarray, valid: np.ndarray, seg,
                 init: np.ndarray) -> np.ndarray:
    """The value of the last earlier `valid` row of the same segment, else `init[seg]`."""
    s = _segments(seg)
    prev = last_index_before(valid, s)
    out = init.take(s.seg)
    if values.size:
        out = np.where(prev >= 0, values.take(prev), out).astype(out.dtype, copy=False)
    return out


def previous_in(values: np.ndarray, seg, init: np.ndarray) -> np.ndarray:
    """The previous row's value within the same segment, else `init[seg]` (ffill_before with
    every row valid, without the scan)."""
    s = _segments(seg)
    out = np.empty(values.shape, np.result_type(values.dtype, init.dtype))
    if values.size:
        out[1:] = values[:-1]
        out[s.first_rows] = init[s.first_seg]
    return out


def cumsum_in(values: np.ndarray, seg, init: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum within segments, starting from `init[seg]`."""
    s = _segments(seg)
    values = values.astype(np.int64, copy=False)
    total = np.cumsum(values)
    if values.size == 0:
        return total
    # Per segment: what the global sum had reached before it, less the segment's start value.
    first = s.first_rows
    offset = total.take(first) - values.take(first) - init.take(s.first_seg)
    total -= s.per_segment(offset)
    return total


def last_of(values: np.ndarray, seg, nseg: int, fill) -> np.ndarray:
    """The last row's value in each segment (`fill` for empty segments)."""
    s = _segments(seg)
    out = np.full(nseg, fill, dtype=values.dtype)
    if values.size:
        out[s.last_seg] = values[s.last_rows]
    return out


def first_of(values: np.ndarray, seg, nseg: int, fill) -> np.ndarray:
    s = _segments(seg)
    out = np.full(nseg, fill, dtype=values.dtype)
    if values.size:
        out[s.first_seg] = values[s.first_rows]
    return out


def reduce_by(ufunc: np.ufunc, values: np.ndarray, seg, nseg: int,
              fill) -> np.ndarray:
    """`ufunc` over each segment's values (seg sorted); `fill` where a segment has no rows.

    The sorted-segment counterpart of `ufunc.at`, which is unbuffered and many times slower.
    """
    s = _segments(seg)
    out = np.full(nseg, fill, dtype=values.dtype)
    if values.size:
        out[s.first_seg] = ufunc.reduceat(values, s.first_rows)
    return out


def reduce_where(ufunc: np.ufunc, values: np.ndarray, mask: np.ndarray, seg, nseg: int,
                 fill) -> np.ndarray:
    """`ufunc` over each segment's values at the rows where `mask` holds; `fill` where a
    segment has none. Rare masks (FINs, RSTs) are reduced over their own rows only."""
    s = _segments(seg)
    rows = np.flatnonzero(mask)
    if rows.size > mask.shape[0] >> 3:
        return reduce_by(ufunc, np.where(mask, values, fill).astype(values.dtype, copy=False),
                         s, nseg, fill)
    out = np.full(nseg, fill, dtype=values.dtype)
    if rows.size:
        segs = s.seg.take(rows)
        starts = np.flatnonzero(starts_of(segs))
        out[segs.take(starts)] = ufunc.reduceat(values.take(rows), starts)
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


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """`np.argsort(keys, kind="stable")` for non-negative integer keys, faster when they are
    small: numpy radix-sorts 16-bit keys, so keys below 2**32 are sorted in two stable 16-bit
    passes (low half, then high half), several times cheaper than a merge sort of int64."""
    if keys.size == 0:
        return np.zeros(0, np.int64)
    top = int(keys.max())
    if top < 2**16 and int(keys.min()) >= 0:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    if top < 2**32 and int(keys.min()) >= 0:
        k = keys.astype(np.int64, copy=False)
        low = np.argsort((k & 0xFFFF).astype(np.uint16), kind="stable")
        high = np.argsort((k[low] >> 16).astype(np.uint16), kind="stable")
        return low[high]
    return np.argsort(keys, kind="stable")


def dense_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value among them): `np.unique(values,
    return_inverse=True)` for integers, without a sort when their range is a few times the
    row count (a presence table, then a running count)."""
    if values.size == 0:
        return values.copy(), np.zeros(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if span > 4 * values.size + 1024:
        uniq, inverse = np.unique(values, return_inverse=True)
        return uniq, inverse.reshape(-1)
    offset = values - lo
    present = np.zeros(span, bool)
    present[offset] = True
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present) + lo, rank[offset]

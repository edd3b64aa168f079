"""Segmented scans (tracer.flows.segments) against plain per-row loops.

The flow stage leans on these for every sequential TCP rule, so each is checked on random
segment layouts (empty segments included), values with sentinels and wide spans.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracer.flows import segments as sg

NO = -(2**62)


@st.composite
def layouts(draw):
    nseg = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(0, 6), min_size=nseg, max_size=nseg))
    seg = np.repeat(np.arange(nseg), sizes).astype(np.int64)
    n = seg.size
    edges = st.sampled_from([-(2**40) - 1, -(2**40), 2**40 - 2, 2**40 - 1])  # scan bounds
    pool = st.one_of(st.integers(-50, 50), st.just(NO), st.integers(-(2**40), 2**40), edges)
    values = np.array(draw(st.lists(pool, min_size=n, max_size=n)), np.int64)
    valid = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    init = np.array(draw(st.lists(pool, min_size=nseg, max_size=nseg)), np.int64)
    return seg, nseg, values, valid, init


def _loop(seg, fn):
    out = []
    for i in range(seg.size):
        earlier = [j for j in range(i) if seg[j] == seg[i]]
        out.append(fn(i, earlier))
    return np.array(out, np.int64)


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_scans_match_loops(layout):
    seg, nseg, values, valid, init = layout
    s = sg.Segments(seg, nseg)
    expect_prev = _loop(seg, lambda i, e: values[e[-1]] if e else init[seg[i]])
    assert np.array_equal(sg.previous_in(values, s, init), expect_prev)
    expect_ffill = _loop(seg, lambda i, e: next((values[j] for j in reversed(e) if valid[j]),
                                                init[seg[i]]))
    assert np.array_equal(sg.ffill_before(values, valid, s, init), expect_ffill)
    expect_last = _loop(seg, lambda i, e: next((j for j in reversed(e) if valid[j]), -1))
    assert np.array_equal(sg.last_index_before(valid, s), expect_last)
    expect_xmax = _loop(seg, lambda i, e: max([init[seg[i]], *(values[j] for j in e)]))
    assert np.array_equal(sg.exclusive_max(values, s, init), expect_xmax)
    small = np.clip(values, -1000, 1000)
    expect_sum = _loop(seg, lambda i, e: init[seg[i]] % 1000 + sum(small[j] for j in e) + small[i])
    assert np.array_equal(sg.cumsum_in(small, s, init % 1000), expect_sum)


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_reduce_where_matches_loops(layout):
    # Sparse masks take the path over their own rows, dense ones the masked full reduction.
    seg, nseg, values, valid, _ = layout
    s = sg.Segments(seg, nseg)
    for ufunc, fill in ((np.minimum, 2**62), (np.maximum, NO), (np.add, 0)):
        if ufunc is np.add:
            values = np.clip(values, -1000, 1000)
        expect = np.full(nseg, fill, np.int64)
        for i in range(seg.size):
            if valid[i]:
                expect[seg[i]] = ufunc(expect[seg[i]], values[i]) if ufunc is not np.add \
                    else expect[seg[i]] + values[i]
        got = sg.reduce_where(ufunc, values, valid, s, nseg, fill)
        assert np.array_equal(got, expect), ufunc.__name__

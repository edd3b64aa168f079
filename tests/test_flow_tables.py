"""Helpers of the flow stage's tables against their plain definitions: the per-batch grouping
of endpoint keys (tracker._distinct against np.unique) and blanking state rows in place
(StateTable.clear against a freshly made blank table)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracer.flows.tables import StateTable, blank_state
from tracer.flows.tracker import _distinct


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 5), max_size=60))
def test_distinct_is_unique_with_first_index_and_inverse(values):
    keys = np.array(values, np.uint64)
    uniq, first, inverse = _distinct(keys)
    e_uniq, e_first, e_inverse = np.unique(keys, return_index=True, return_inverse=True)
    assert np.array_equal(uniq, e_uniq)
    assert np.array_equal(first, e_first)  # the lowest row of each key
    assert np.array_equal(inverse, e_inverse.reshape(-1))


def test_clear_makes_rows_blank_and_leaves_the_others():
    rng = np.random.default_rng(3)
    state = blank_state(50)
    for col in state.cols.values():
        # Every column scribbled on, 2-D ones included.
        scribble = rng.integers(1, 100, col.shape)
        col[...] = scribble.astype(col.dtype)
    before = {name: col.copy() for name, col in state.cols.items()}
    rows = np.array([0, 7, 8, 49])
    state.clear(rows)
    blank = blank_state(1)
    kept = np.setdiff1d(np.arange(50), rows)
    for name, col in state.cols.items():
        assert np.array_equal(col[rows], np.repeat(blank.cols[name], rows.size, axis=0)), name
        assert np.array_equal(col[kept], before[name][kept]), name
    assert isinstance(state, StateTable)

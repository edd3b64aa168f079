"""Anomaly windows in a time series, by a robust rolling baseline (pure).

Method (documented in docs/json-schema.md, `anomalies`): for each bucket, the baseline is the
median of the series over a centred window of ROLLING_BUCKETS buckets (fewer at the edges),
and the spread is the median absolute deviation (MAD) over the same window, scaled by 1.4826
so that it estimates a standard deviation for normal data. A bucket is anomalous when

    score = (value - baseline) / max(1.4826 * MAD, floor)  >=  SCORE_MIN  (4)

and it exceeds the baseline by at least `min_excess` (a unit of the series: one event for
counts). The floor keeps a flat baseline (MAD 0) from turning any blip into an anomaly: for
counts it is sqrt(max(baseline, 1)) (the Poisson spread of a count with that mean), for
rates and times a fraction of the baseline (`relative_floor`) or an absolute unit. Median and
MAD ignore outliers (up to half the window), so a burst does not raise its own baseline as a
mean and standard deviation would. Consecutive anomalous buckets form one window; its score is
the highest in it. Buckets without data (NaN, e.g. no RTT samples) are never anomalous and
are left out of the baselines.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ROLLING_BUCKETS = 31
SCORE_MIN = 4.0
MAD_SCALE = 1.4826


def rolling_baseline(values: np.ndarray, window: int = ROLLING_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """(median, MAD) over a centred window per bucket, NaNs ignored."""
    x = np.asarray(values, float)
    n = x.shape[0]
    if n == 0:
        return x.copy(), x.copy()
    w = min(window, n if n % 2 else n - 1) if n > 1 else 1
    half = w // 2
    padded = np.concatenate((np.full(half, np.nan), x, np.full(half, np.nan)))
    view = sliding_window_view(padded, w)
    with np.errstate(all="ignore"), _quiet():
        med = np.nanmedian(view, axis=1)
        mad = np.nanmedian(np.abs(view - med[:, None]), axis=1)
    return med, mad


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def anomaly_windows(values: np.ndarray, *, counts: bool, min_excess: float,
                    relative_floor: float = 0.25, absolute_floor: float = 0.0,
                    window: int = ROLLING_BUCKETS) -> list[dict]:
    """Windows of consecutive anomalous buckets: first and last bucket index, peak bucket, its
    value, the baseline there and the score."""
    x = np.asarray(values, float)
    if x.size == 0:
        return []
    med, mad = rolling_baseline(x, window)
    base = np.nan_to_num(med, nan=0.0)
    if counts:
        floor = np.sqrt(np.maximum(base, 1.0))
    else:
        floor = np.maximum(relative_floor * np.abs(base), absolute_floor)
        floor = np.where(floor > 0, floor, max(absolute_floor, 1e-12))
    spread = np.maximum(MAD_SCALE * np.nan_to_num(mad, nan=0.0), floor)
    with np.errstate(invalid="ignore"):
        score = (x - base) / spread
    hot = np.nan_to_num(score, nan=-np.inf) >= SCORE_MIN
    hot &= np.nan_to_num(x - base, nan=-np.inf) >= min_excess
    out = []
    idx = np.flatnonzero(hot)
    if idx.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        seg = score[s:e + 1]
        peak = s + int(np.nanargmax(seg))
        out.append({"first": s, "last": e, "peak": peak, "value": float(x[peak]),
                    "baseline": float(base[peak]), "score": float(score[peak])})
    return out

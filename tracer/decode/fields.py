"""Reading header fields at per-row offsets of a frame batch's `head` array.

Theory of operation: `head` is an (n, HEAD_LEN) uint8 array. Flattened, row i's byte k sits at
i * HEAD_LEN + k, so a field at a different offset in every row is one gather from an unaligned,
overlapping big-endian view of the flat buffer (network byte order; little-endian views exist
for the few host-order fields such as the BSD loopback header).

Rules: offsets are clamped into the row, so a gather never fails; whether a field was really
captured is decided separately against `caplen` by the caller (`Fields.within`). That keeps
every stage a fixed sequence of whole-array operations with masks, instead of shrinking and
re-indexing arrays at each header.
"""

from __future__ import annotations

import numpy as np

from tracer.packet import HEAD_LEN


class Fields:
    def __init__(self, head: np.ndarray, caplen: np.ndarray) -> None:
        n = head.shape[0]
        self.n = n
        self._flat = np.ascontiguousarray(head).reshape(-1)
        self._row_base = np.arange(n, dtype=np.int64) * HEAD_LEN
        # Bytes that decode may trust in each row: captured and inside the copied head.
        self.limit = np.minimum(caplen.astype(np.int64), HEAD_LEN)
        self._views: dict[str, np.ndarray] = {}

    def _view(self, dtype: str) -> np.ndarray:
        view = self._views.get(dtype)
        if view is None:
            width = np.dtype(dtype).itemsize
            # Pad so that a clamped read at the last row's end stays inside the buffer.
            view = np.ndarray(
                (self._flat.shape[0] - width + 1,), dtype=dtype, buffer=self._flat, strides=(1,)
            )
            self._views[dtype] = view
        return view

    def _index(self, offset: np.ndarray | int, width: int, rows: np.ndarray | None) -> np.ndarray:
        off = np.clip(offset, 0, HEAD_LEN - width)
        base = self._row_base if rows is None else self._row_base[rows]
        return base + off

    def u8(self, offset, rows: np.ndarray | None = None) -> np.ndarray:
        return self._flat[self._index(offset, 1, rows)]

    def u16(self, offset, rows: np.ndarray | None = None) -> np.ndarray:
        return self._view(">u2")[self._index(offset, 2, rows)].astype(np.uint16)

    def u32(self, offset, rows: np.ndarray | None = None) -> np.ndarray:
        return self._view(">u4")[self._index(offset, 4, rows)].astype(np.uint32)

    def u64(self, offset, rows: np.ndarray | None = None) -> np.ndarray:
        return self._view(">u8")[self._index(offset, 8, rows)].astype(np.uint64)

    def u32_le(self, offset, rows: np.ndarray | None = None) -> np.ndarray:
        return self._view("<u4")[self._index(offset, 4, rows)].astype(np.uint32)

    def within(self, end, rows: np.ndarray | None = None) -> np.ndarray:
        """True where bytes [.., end) were captured and copied (end is an exclusive offset)."""
        limit = self.limit if rows is None else self.limit[rows]
        return end <= limit


def missing_reason(f: Fields, end: np.ndarray, rows: np.ndarray, truncated_code: int, beyond_code: int,
                   caplen: np.ndarray) -> np.ndarray:
    """For rows whose bytes up to `end` are not available: truncated, or past the copied head."""
    beyond = end <= caplen[rows].astype(np.int64)
    return np.where(beyond, beyond_code, truncated_code).astype(np.uint8)

"""Reading header fields of many frames that sit at arbitrary offsets of one byte buffer.

Theory of operation: a frame batch is a buffer plus each frame's start offset. A header that
starts at a different offset in every frame (IP after a VLAN stack, TCP after IP options) is
copied out as a **window**: an (n, width) array whose row i holds frame i's bytes from that
header on, made with one row gather from a sliding-window view of the buffer. Inside a window
every field sits at a constant column, so reading it is a strided view (big-endian dtype, row
stride = width) plus one conversion to a native array: no per-element index arithmetic. Gathers
at per-row offsets (`Fields.u8` ...) remain for the rare, irregular parts: VLAN stacks, IPv6
extension headers and unusual TCP option layouts.

Rules: reads are clamped into the buffer, so a gather or window never fails (a window running
off the end of the buffer is cut from a zero-padded copy); whether bytes were really captured is
decided separately against `caplen` (`within`). Every stage is thus a fixed sequence of
whole-array operations with masks.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MIN_BUFFER = 64


class Window:
    """Bytes [offset, offset + width) of each row, with fields read at constant columns."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data  # (n, width) uint8, C-contiguous
        self.n, self.width = data.shape

    def _column(self, dtype: str, column: int) -> np.ndarray:
        if self.n == 0:
            return np.zeros(0, dtype)
        return np.ndarray(
            (self.n,), dtype=dtype, buffer=self.data, offset=column, strides=(self.width,)
        )

    def u8(self, column: int) -> np.ndarray:
        return self.data[:, column]

    def u16(self, column: int) -> np.ndarray:
        return self._column(">u2", column).astype(np.uint16)

    def u32(self, column: int) -> np.ndarray:
        return self._column(">u4", column).astype(np.uint32)

    def u64(self, column: int) -> np.ndarray:
        return self._column(">u8", column).astype(np.uint64)

    def u32_le(self, column: int) -> np.ndarray:
        return self._column("<u4", column).astype(np.uint32)


class Fields:
    def __init__(self, data: np.ndarray, offset: np.ndarray, caplen: np.ndarray) -> None:
        self.n = offset.shape[0]
        if data.shape[0] < MIN_BUFFER:
            # Clamped reads need some bytes to land on, even for a buffer of empty frames.
            padded = np.zeros(MIN_BUFFER, np.uint8)
            padded[: data.shape[0]] = data
            data = padded
        self._flat = data
        self._row_base = offset.astype(np.int64, copy=False)
        self.limit = caplen.astype(np.int64)  # bytes of each frame that were captured
        self._views: dict[str, np.ndarray] = {}

    def window(self, offsets, width: int, rows=None) -> Window:
        """Bytes [offsets, offsets + width) of each frame (of `rows`) as one contiguous copy."""
        base = self._row_base if rows is None else self._row_base[rows]
        start = base + offsets
        size = self._flat.shape[0]
        over = start > size - width
        if not over.any():
            return Window(sliding_window_view(self._flat, width)[start])
        # Windows running off the end of the buffer: cut from a zero-padded copy of its tail.
        data = np.empty((start.shape[0], width), np.uint8)
        inner = ~over
        if inner.any():
            data[inner] = sliding_window_view(self._flat, width)[start[inner]]
        tail_from = int(min(start[over].min(), size))
        tail = np.zeros(size - tail_from + width, np.uint8)
        tail[: size - tail_from] = self._flat[tail_from:]
        data[over] = sliding_window_view(tail, width)[np.minimum(start[over], size) - tail_from]
        return Window(data)

    def _view(self, dtype: str) -> np.ndarray:
        view = self._views.get(dtype)
        if view is None:
            width = np.dtype(dtype).itemsize
            view = np.ndarray(
                (self._flat.shape[0] - width + 1,), dtype=dtype, buffer=self._flat, strides=(1,)
            )
            self._views[dtype] = view
        return view

    def _index(self, offset, width: int, rows) -> np.ndarray:
        base = self._row_base if rows is None else self._row_base[rows]
        return np.minimum(base + offset, self._flat.shape[0] - width)

    def u8(self, offset, rows=None) -> np.ndarray:
        return self._flat[self._index(offset, 1, rows)]

    def u16(self, offset, rows=None) -> np.ndarray:
        return self._view(">u2")[self._index(offset, 2, rows)].astype(np.uint16)

    def u32(self, offset, rows=None) -> np.ndarray:
        return self._view(">u4")[self._index(offset, 4, rows)].astype(np.uint32)

    def within(self, end, rows=None) -> np.ndarray:
        """True where bytes [.., end) of the frame were captured (end is an exclusive offset)."""
        limit = self.limit if rows is None else self.limit[rows]
        return end <= limit

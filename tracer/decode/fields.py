"""Reading header fields of many frames that sit at arbitrary offsets of one byte buffer.

Theory of operation: a frame batch is a buffer plus each frame's start offset. Decode first
copies every frame's first `HEAD_BYTES` bytes into one (n, HEAD_BYTES) array, the **head**: a
single gather from the capture buffer (one opaque `V<width>` element per row, the cheapest row
copy numpy has), after which every header of an ordinary frame (link, VLAN tags, IP, TCP with
options) is read from that small, cache-resident array instead of the large buffer. A header
that starts at a different offset in every frame (IP after a VLAN stack, TCP after IP options)
is copied out of the head as a **window**: an (n, width) array whose row i holds frame i's bytes
from that header on. Inside a window every field sits at a constant column, so reading it is a
strided view (big-endian dtype, row stride = width): one numpy call for all rows, and several
fields can be moved into a structured array in one call (`Window.records`). Per-row-offset
reads (`Fields.u8` ...) remain for the rare, irregular parts: VLAN stacks, IPv6 extension
headers. Reads that reach past the head (unusual headers) go to the capture buffer itself.

Rules: reads are clamped into the buffer, so a gather or window never fails (a head or window
running off the end of the buffer is cut from a zero-padded copy); whether bytes were really
captured is decided separately against `caplen` (`within`). Bytes past `caplen` are whatever
followed the frame, in the head as in the buffer: only rows that pass `within` use them. The
head and the windows are decode's own copies, so decode may rewrite bytes in them in place;
the capture buffer is never written.
"""

from __future__ import annotations

import numpy as np

from tracer.packet import PACKET_DTYPE

MIN_BUFFER = 64
# Ethernet + two VLAN tags + IPv6 + the longest TCP header = 122: every ordinary TCP/IP header.
HEAD_BYTES = 128


def _rows_view(buf: np.ndarray, width: int) -> np.ndarray:
    """Element i is buf[i : i + width] as one opaque value (overlapping)."""
    return np.ndarray((buf.shape[0] - width + 1,), dtype=f"V{width}", buffer=buf, strides=(1,))


def gather_rows(buf: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """(len(start), width) copy of buf[start : start + width], zero past the end of buf."""
    size = buf.shape[0]
    if start.shape[0] == 0:
        return np.zeros((0, width), np.uint8)
    if size >= width and int(start.max()) <= size - width:
        return _rows_view(buf, width)[start].view(np.uint8).reshape(-1, width)
    # Rows running off the end of the buffer: cut from a zero-padded copy of its tail.
    over = start > size - width
    tail_from = int(min(start[over].min(), size))
    data = np.empty((start.shape[0], width), np.uint8)
    inner = ~over
    if inner.any():
        data[inner] = _rows_view(buf, width)[start[inner]].view(np.uint8).reshape(-1, width)
    tail = np.zeros(size - tail_from + width, np.uint8)
    tail[: size - tail_from] = buf[tail_from:]
    data[over] = _rows_view(tail, width)[np.minimum(start[over], size) - tail_from].view(
        np.uint8
    ).reshape(-1, width)
    return data


def wire_fields(spec: list[tuple[str, int, str]], itemsize: int) -> np.dtype:
    """A structured dtype of (name, offset, format) fields over records of `itemsize` bytes."""
    names, offsets, formats = zip(*spec, strict=True)
    return np.dtype({"names": list(names), "offsets": list(offsets), "formats": list(formats),
                     "itemsize": itemsize})


def packet_fields(names: list[str]) -> np.dtype:
    """Some fields of PACKET_DTYPE at their offsets in a packet row: viewed through it, the
    packet rows take several fields in one structured copy (assignment is by position)."""
    return wire_fields(
        [(name, PACKET_DTYPE.fields[name][1], PACKET_DTYPE.fields[name][0]) for name in names],
        PACKET_DTYPE.itemsize,
    )


class Window:
    """Bytes [column, column + width) of each row of a C-contiguous (n, stride) uint8 array."""

    def __init__(self, base: np.ndarray, column: int = 0, width: int | None = None) -> None:
        self.base = base
        self.column = column
        self.n, self.stride = base.shape
        self.width = self.stride - column if width is None else width

    @property
    def data(self) -> np.ndarray:
        return self.base[:, self.column : self.column + self.width]

    def raw(self, dtype: str, column: int) -> np.ndarray:
        """The field at `column` of every row as a strided view, in its wire byte order."""
        if self.n == 0:
            return np.zeros(0, dtype)
        return np.ndarray(
            (self.n,),
            dtype=dtype,
            buffer=self.base,
            offset=self.column + column,
            strides=(self.stride,),
        )

    def records(self, dtype: np.dtype) -> np.ndarray:
        """Every row as one record of a structured dtype (offsets relative to the window)."""
        if self.n == 0:
            return np.zeros(0, dtype)
        return np.ndarray(
            (self.n,), dtype=dtype, buffer=self.base, offset=self.column, strides=(self.stride,)
        )

    def u8(self, column: int) -> np.ndarray:
        return self.base[:, self.column + column]

    def u16(self, column: int) -> np.ndarray:
        return self.raw(">u2", column).astype(np.uint16)

    def u32(self, column: int) -> np.ndarray:
        return self.raw(">u4", column).astype(np.uint32)

    def u64(self, column: int) -> np.ndarray:
        return self.raw(">u8", column).astype(np.uint64)

    def u32_le(self, column: int) -> np.ndarray:
        return self.raw("<u4", column).astype(np.uint32)

    def take(self, rows: np.ndarray) -> Window:
        """The window of some rows, as a contiguous copy."""
        return Window(np.ascontiguousarray(self.data[rows]))


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
        self.head = gather_rows(data, self._row_base, HEAD_BYTES)
        self._head_flat = self.head.reshape(-1)
        self._head_base = np.arange(0, self.n * HEAD_BYTES, HEAD_BYTES, dtype=np.int64)
        self._views: dict[tuple[str, bool], np.ndarray] = {}

    def _in_head(self, offsets, width: int) -> bool:
        if isinstance(offsets, (int, np.integer)):
            return 0 <= offsets <= HEAD_BYTES - width
        return offsets.shape[0] == 0 or int(offsets.max()) <= HEAD_BYTES - width

    def window(self, offsets, width: int, rows=None) -> Window:
        """Bytes [offsets, offsets + width) of each frame (of `rows`).

        A constant offset inside the head is a view of it; otherwise a contiguous copy.
        """
        if self._in_head(offsets, width):
            if isinstance(offsets, (int, np.integer)) and rows is None:
                return Window(self.head, int(offsets), width)
            base = self._head_base if rows is None else self._head_base[rows]
            if base.shape[0] == 0:
                return Window(np.zeros((0, width), np.uint8))
            return Window(
                _rows_view(self._head_flat, width)[base + offsets].view(np.uint8).reshape(-1, width)
            )
        base = self._row_base if rows is None else self._row_base[rows]
        return Window(gather_rows(self._flat, base + offsets, width))

    def _view(self, dtype: str, head: bool) -> np.ndarray:
        view = self._views.get((dtype, head))
        if view is None:
            flat = self._head_flat if head else self._flat
            width = np.dtype(dtype).itemsize
            view = np.ndarray((flat.shape[0] - width + 1,), dtype=dtype, buffer=flat, strides=(1,))
            self._views[(dtype, head)] = view
        return view

    def _read(self, dtype: str, offset, rows) -> np.ndarray:
        width = np.dtype(dtype).itemsize
        if self.n and self._in_head(offset, width):
            base = self._head_base if rows is None else self._head_base[rows]
            return self._view(dtype, True)[base + offset]
        base = self._row_base if rows is None else self._row_base[rows]
        return self._view(dtype, False)[np.minimum(base + offset, self._flat.shape[0] - width)]

    def u8(self, offset, rows=None) -> np.ndarray:
        return self._read("u1", offset, rows)

    def u16(self, offset, rows=None) -> np.ndarray:
        return self._read(">u2", offset, rows).astype(np.uint16)

    def u32(self, offset, rows=None) -> np.ndarray:
        return self._read(">u4", offset, rows).astype(np.uint32)

    def within(self, end, rows=None) -> np.ndarray:
        """True where bytes [.., end) of the frame were captured (end is an exclusive offset)."""
        limit = self.limit if rows is None else self.limit[rows]
        return end <= limit

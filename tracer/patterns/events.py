"""Per-segment facts the flow tables do not keep, gathered batch by batch (pure, stateful).

Rules: fed in capture order with each packet batch and the flow stage's segment rows for it
(the same rows tracer.attribution.timeline reads). Nothing loops over packets: a batch costs a
mask, a sort and a unique. Capture duplicates are left out everywhere.

Two things are kept, both small against the capture:
- `events`: one row per *rare* segment (a retransmission, a gap before it, an ACK of data the
  capture missed, a zero window): its time, flow, direction, analysis flags and TCP flags. At
  ~1% of segments on a lossy network this is the per-time-bucket source for loss and zero
  windows; a SYN among them is a SYN retry.
- `data`: data segments (payload > 0) counted per (flow, second since the first packet,
  direction), merged across batches: the denominators of per-bucket and per-leg loss and
  retransmission rates, and per-flow data segment counts. A row per flow per second it sent
  data in, so long busy captures grow by their active flow-seconds (16 bytes each).
"""

from __future__ import annotations

import numpy as np

from tracer.flows import vocab as fv

RARE_FLAGS = (fv.A_RETRANSMISSION | fv.A_FAST_RETRANSMISSION | fv.A_SPURIOUS_RETRANSMISSION
              | fv.A_LOST_SEGMENT | fv.A_ACK_LOST_SEGMENT | fv.A_ZERO_WINDOW)

EVENT_DTYPE = np.dtype([
    ("ts_ns", np.int64),
    ("flow_id", np.int64),
    ("direction", np.uint8),
    ("flags", np.uint16),  # tracer.flows.vocab A_* bits
    ("tcp_flags", np.uint16),  # the packet's TCP flags (SYN: a SYN retry)
])

# (flow_id << 25) | (second << 1) | direction: seconds up to 2**24 (194 days), flow ids to 2**38
_SECOND_BITS = 24
_MAX_SECOND = (1 << _SECOND_BITS) - 1
_COMPACT_EVERY = 1 << 20  # merge the pending (key, count) pieces past this many rows


class SegmentFacts:
    def __init__(self) -> None:
        self.origin_ns: int | None = None  # time of the first packet seen: second 0
        self._events: list[np.ndarray] = []
        self._keys = np.zeros(0, np.int64)
        self._counts = np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, seg: np.ndarray, pk: np.ndarray) -> None:
        """One batch: segment rows without capture duplicates and their packets, row for row
        (tracer.flows.tables.segments_with_packets)."""
        if seg.shape[0] == 0:
            return
        ts = pk["ts_ns"]
        if self.origin_ns is None:
            self.origin_ns = int(ts.min())
        rare = (seg["flags"] & RARE_FLAGS) != 0
        if rare.any():
            ev = np.zeros(int(rare.sum()), EVENT_DTYPE)
            ev["ts_ns"] = ts[rare]
            ev["flow_id"] = seg["flow_id"][rare]
            ev["direction"] = seg["direction"][rare]
            ev["flags"] = seg["flags"][rare]
            ev["tcp_flags"] = pk["flags"][rare]
            self._events.append(ev)
        data = pk["payload_len"] > 0
        if data.any():
            second = np.clip((ts[data] - self.origin_ns) // 1_000_000_000, 0, _MAX_SECOND)
            key = ((seg["flow_id"][data].astype(np.int64) << (_SECOND_BITS + 1))
                   | (second << 1) | seg["direction"][data].astype(np.int64))
            uniq, counts = np.unique(key, return_counts=True)
            self._pending.append((uniq, counts))
            self._pending_rows += uniq.shape[0]
            if self._pending_rows > _COMPACT_EVERY:
                self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self._keys] + [k for k, _ in self._pending])
        counts = np.concatenate([self._counts] + [c for _, c in self._pending])
        self._keys, inverse = np.unique(keys, return_inverse=True)
        self._counts = np.bincount(inverse.ravel(), weights=counts,
                                   minlength=self._keys.shape[0]).astype(np.int64)
        self._pending.clear()
        self._pending_rows = 0

    @property
    def events(self) -> np.ndarray:
        if len(self._events) > 1:
            self._events = [np.concatenate(self._events)]
        return self._events[0] if self._events else np.zeros(0, EVENT_DTYPE)

    def data_segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(flow_id, second, direction, data segments) rows, sorted by flow id then second."""
        self._compact()
        k = self._keys
        return (k >> (_SECOND_BITS + 1), (k >> 1) & _MAX_SECOND, (k & 1).astype(np.uint8),
                self._counts)

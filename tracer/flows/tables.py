"""Declared layouts of the flow stage: the active-flow state and the tables it emits.

Rules:
- Per-direction fields are pairs indexed by direction: 0 = from the initiator, 1 = from the
  responder (tracer.flows.vocab.FROM_INITIATOR / FROM_RESPONDER).
- Sequence and acknowledgment numbers are *unwrapped*: 64-bit, relative to the direction's base
  (its SYN, else its first segment), so comparisons never wrap at 2**32.
- Times are int64 nanoseconds since the Unix epoch; NO_TIME (-1) means "never". Unwrapped
  sequence values use NO_SEQ for "none seen".
"""

from __future__ import annotations

import math

import numpy as np

NO_TIME = -1
NO_SEQ = -(2**62)
NO_FRAME = 0

# State of one active flow, kept between batches (one row per slot of the flow table).
STATE_DTYPE = np.dtype(
    [
        ("flow_id", np.int64),
        ("a_hi", np.uint64), ("a_lo", np.uint64), ("a_port", np.uint16),  # canonical endpoint a
        ("b_hi", np.uint64), ("b_lo", np.uint64), ("b_port", np.uint16),  # canonical endpoint b
        ("pair_check", np.uint64),  # the slot's check word (tracker._endpoint_key)
        ("init_is_a", np.bool_),  # the initiator is endpoint a
        ("midstream", np.bool_),  # the capture started after the handshake
        ("reused", np.bool_),  # started by a SYN on a 4-tuple with an earlier flow
        ("ref_seq", np.uint32, (2,)),  # per endpoint a/b: seq of its last SYN, else its first
        ("ref_valid", np.bool_, (2,)),
        ("first_ts", np.int64), ("last_ts", np.int64),
        ("first_frame", np.int64), ("last_frame", np.int64),
        ("syn_ts", np.int64), ("synack_ts", np.int64), ("hs_ack_ts", np.int64),
        ("synack_seq", np.uint32), ("synack_valid", np.bool_),
        ("syn_count", np.int64), ("synack_count", np.int64),  # SYNs / SYN-ACKs seen
        ("hs_ambiguous", np.bool_, (2,)),  # Karn: SYN / SYN-ACK resent before its answer
        ("base", np.uint32, (2,)), ("base_valid", np.bool_, (2,)),
        ("seq_last_rel", np.uint32, (2,)), ("seq_last", np.int64, (2,)),
        ("ack_last_rel", np.uint32, (2,)), ("ack_last", np.int64, (2,)),
        ("next_seq", np.int64, (2,)),  # highest sequence end sent (NO_SEQ: none)
        ("max_ack", np.int64, (2,)),  # highest ACK sent (NO_SEQ: none)
        ("last_ack_raw", np.uint32, (2,)), ("acked_once", np.bool_, (2,)),
        ("last_window", np.int64, (2,)),  # raw window field of the last segment (-1: none)
        ("wscale", np.int8, (2,)),  # window scale shift from the SYN (-1: not seen)
        ("dupacks", np.int64, (2,)),  # current run of duplicate ACKs
        ("last_ack_ts", np.int64, (2,)),
        ("next_seq_ts", np.int64, (2,)),  # when next_seq was last raised
        ("dir_first_ts", np.int64, (2,)), ("dir_last_ts", np.int64, (2,)),
        ("last_data_frame", np.int64, (2,)),
        ("last_data_ts", np.int64, (2,)),  # when that payload was seen
        ("packets", np.int64, (2,)), ("payload_bytes", np.int64, (2,)),
        ("retransmissions", np.int64, (2,)), ("fast_retransmissions", np.int64, (2,)),
        ("spurious_retransmissions", np.int64, (2,)), ("out_of_order", np.int64, (2,)),
        ("lost_segments", np.int64, (2,)), ("ack_lost_segments", np.int64, (2,)),
        ("duplicate_acks", np.int64, (2,)), ("zero_windows", np.int64, (2,)),
        ("duplicates", np.int64, (2,)), ("keep_alives", np.int64, (2,)),
        ("fin_ts", np.int64, (2,)), ("fin_frame", np.int64, (2,)),
        ("rst_count", np.int64, (2,)), ("first_rst_ts", np.int64, (2,)),
        ("ttl_last", np.int16, (2,)),  # TTL/hop limit of the last non-RST packet (-1: none)
        ("ipid_last", np.int32, (2,)),  # IPv4 ID of the last non-RST packet (-1: none)
        ("min_seq", np.int64, (2,)),  # lowest sequence sent (for bytes implied by seq numbers)
        ("last_fp", np.uint64),  # fingerprint of the flow's last packet (capture duplicates)
        ("last_dir", np.int8),  # its direction (-1: none yet)
        ("last_iface", np.int32),  # the capture interface it came from (-1: none yet)
    ]
)

# One row per flow, emitted when a flow is finished (closed and quiet, idle, replaced by port
# reuse, or at the end of the capture).
FLOW_DTYPE = np.dtype(
    [
        ("flow_id", np.int64),
        ("initiator_hi", np.uint64), ("initiator_lo", np.uint64), ("initiator_port", np.uint16),
        ("responder_hi", np.uint64), ("responder_lo", np.uint64), ("responder_port", np.uint16),
        ("state", np.uint8),  # vocab.FLOW_STATE_NAMES
        ("midstream", np.bool_), ("reused", np.bool_),
        ("first_ts", np.int64), ("last_ts", np.int64),
        ("first_frame", np.int64), ("last_frame", np.int64),
        ("syn_ts", np.int64), ("synack_ts", np.int64), ("hs_ack_ts", np.int64),
        ("packets", np.int64, (2,)), ("payload_bytes", np.int64, (2,)),
        ("seq_bytes", np.int64, (2,)),  # bytes implied by sequence numbers (data seen + missed)
        ("retransmissions", np.int64, (2,)), ("fast_retransmissions", np.int64, (2,)),
        ("spurious_retransmissions", np.int64, (2,)), ("out_of_order", np.int64, (2,)),
        ("lost_segments", np.int64, (2,)), ("ack_lost_segments", np.int64, (2,)),
        ("duplicate_acks", np.int64, (2,)), ("zero_windows", np.int64, (2,)),
        ("duplicates", np.int64, (2,)), ("keep_alives", np.int64, (2,)),
        ("wscale", np.int8, (2,)),
        ("fin_ts", np.int64, (2,)), ("rst_count", np.int64, (2,)),
        ("first_rst_ts", np.int64, (2,)),
    ]
)

# One row per TCP segment (kept only when asked: it grows with the capture).
SEGMENT_DTYPE = np.dtype(
    [
        ("frame", np.int64),
        ("flow_id", np.int64),
        ("direction", np.uint8),
        ("flags", np.uint16),  # vocab.A_* bits
        ("seq", np.int64),  # unwrapped, relative to the direction's base
        ("next_seq", np.int64),  # seq + payload (+1 for SYN/FIN)
        ("ack", np.int64),  # unwrapped, relative to the other direction's base (NO_SEQ: no ACK)
        ("window", np.int64),  # scaled window (-1: scale unknown, raw shown in `window_raw`)
        ("window_raw", np.uint16),
        ("ack_rtt_ns", np.int64),  # data RTT sample this ACK produced (-1: none)
        ("dupack_count", np.int64),  # position in a run of duplicate ACKs (0: not a dup ACK)
    ]
)

# One row per RST packet.
RST_DTYPE = np.dtype(
    [
        ("frame", np.int64),
        ("ts_ns", np.int64),
        ("flow_id", np.int64),
        ("src_hi", np.uint64), ("src_lo", np.uint64), ("sport", np.uint16),
        ("dst_hi", np.uint64), ("dst_lo", np.uint64), ("dport", np.uint16),
        ("sender_side", np.uint8),  # vocab.SIDE_NAMES
        ("with_ack", np.bool_),  # RST+ACK rather than a bare RST
        ("seq_class", np.uint8),  # vocab.SEQ_CLASS_NAMES
        ("seq_offset", np.int64),  # RST seq - receiver's expected next seq (0 if no state)
        ("phase", np.uint8),  # vocab.PHASE_NAMES
        ("ttl", np.uint8),
        ("ttl_delta", np.int16),  # TTL - sender's previous TTL in this flow (0 if none)
        ("ttl_known", np.bool_),
        ("ip_id_delta", np.int32),  # IPv4 ID - sender's previous ID, mod 2**16 as signed
        ("ip_id_known", np.bool_),
        ("continued", np.bool_),  # the sender sent more (non-RST) packets afterwards
        ("idle_sender_ns", np.int64),  # since the sender's previous packet (-1: none)
        ("idle_receiver_ns", np.int64),  # since the other side's last packet (-1: none)
        ("age_ns", np.int64),  # since the flow's first packet
        ("outstanding", np.int64, (2,)),  # unacknowledged bytes from initiator / responder
        ("rst_index", np.int32),  # 1 for the flow's first RST, 2 for the second ...
        ("payload_len", np.uint32),
    ]
)

# One row per RTT sample.
RTT_KIND_HANDSHAKE_RESPONDER = 0  # SYN -> SYN/ACK: capture point to responder and back
RTT_KIND_HANDSHAKE_INITIATOR = 1  # SYN/ACK -> ACK: capture point to initiator and back
RTT_KIND_DATA = 2  # data segment -> the ACK that covers it (Karn: never retransmitted data)
RTT_KIND_TIMESTAMP = 3  # TSval -> first echo of it in TSecr (RFC 7323)
RTT_KIND_NAMES = ("handshake_responder", "handshake_initiator", "data", "timestamp")

RTT_DTYPE = np.dtype(
    [
        ("ts_ns", np.int64),  # when the sample completed (the ACK / echo)
        ("flow_id", np.int64),
        ("kind", np.uint8),
        ("side", np.uint8),  # whose side of the capture point it measures (0 initiator, 1 responder)
        ("rtt_ns", np.int64),
        ("frame", np.int64),  # the frame that completed it
    ]
)


# Fill values of STATE_DTYPE fields that do not start at zero.
_STATE_FILL = {
    **dict.fromkeys(("first_ts", "last_ts", "syn_ts", "synack_ts", "hs_ack_ts", "last_ack_ts",
                     "next_seq_ts", "last_data_ts", "dir_first_ts", "dir_last_ts", "fin_ts",
                     "first_rst_ts"), NO_TIME),
    "next_seq": NO_SEQ, "max_ack": NO_SEQ, "min_seq": 2**62,
    **dict.fromkeys(("last_window", "wscale", "ttl_last", "ipid_last", "flow_id", "last_dir",
                     "last_iface"), -1),
}


class Columns:
    """A table as a struct of arrays, indexed like a structured array.

    Why not a structured array: a row of the flow state is ~660 bytes, so reading one field of
    many flows from rows touches a cache line per flow, and gathering whole rows copies fields
    nobody reads. Columns make each field access a dense array. `t["name"]` is that field's
    array (a view: writes go to the table), `t[rows]` a new table of those rows, `t[rows] =
    other` and `t["name"] = values` assign in place.
    """

    __slots__ = ("cols",)

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        self.cols = cols

    @classmethod
    def empty(cls, dtype: np.dtype, n: int = 0) -> Columns:
        return cls({name: np.zeros((n, *dtype.fields[name][0].shape), dtype.fields[name][0].base)
                    for name in dtype.names})

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    def __len__(self) -> int:
        return next(iter(self.cols.values())).shape[0]

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.cols[key]
        if isinstance(key, np.ndarray) and key.dtype == bool and len(self.cols) > 1:
            key = _mask_rows(key)
        return type(self)({name: take_rows(col, key) for name, col in self.cols.items()})

    def __setitem__(self, key, value) -> None:
        if isinstance(key, str):
            self.cols[key][...] = value
        else:
            for name, col in self.cols.items():
                rows_view(col)[key] = rows_view(np.ascontiguousarray(value.cols[name], col.dtype))

    def concatenate(self, other: Columns) -> Columns:
        return type(self)({name: np.concatenate((col, other.cols[name]))
                           for name, col in self.cols.items()})


_ROW_TYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64, 16: np.complex128}


def rows_view(col: np.ndarray) -> np.ndarray:
    """A C-contiguous column of pairs (n, k) seen as n single items, so that selecting rows
    moves one item per row: numpy's fancy indexing of 2-D rows is ~10x slower."""
    if col.ndim == 1:
        return col
    width = col.dtype.itemsize * math.prod(col.shape[1:])
    return col.view(_ROW_TYPES.get(width, np.dtype((np.void, width)))).reshape(col.shape[0])


def _mask_rows(mask: np.ndarray):
    """A row mask in the form that selects rows of several columns fastest: the mask itself
    when nearly every row is kept, else the kept rows' indices (numpy's masked selection
    branches per row, several times slower than a gather at middling densities)."""
    if np.count_nonzero(mask) > mask.shape[0] - (mask.shape[0] >> 4):
        return mask
    return np.flatnonzero(mask)


def take_rows(col: np.ndarray, key) -> np.ndarray:
    """Rows `key` (indices, a mask or a slice) of a column, 2-D columns moved as items."""
    if isinstance(key, np.ndarray) and key.dtype.kind in "iu":
        # ndarray.take: the same gather as col[key] without the indexing machinery (~20%)
        return col.take(key) if col.ndim == 1 else \
            rows_view(col).take(key).view(col.dtype).reshape(key.shape[0], *col.shape[1:])
    if col.ndim == 1:
        return col[key]
    rows = rows_view(col)[key]
    return rows.view(col.dtype).reshape(rows.shape[0], *col.shape[1:])


class StateTable(Columns):
    """The active-flow state (STATE_DTYPE's fields), one column per field."""

    __slots__ = ()

    def clear(self, rows: np.ndarray) -> None:
        """Make `rows` blank flows again."""
        for name, col in self.cols.items():
            blank_rows(col, name, rows)

    @classmethod
    def blank(cls, n: int) -> StateTable:
        cols = {}
        for name in STATE_DTYPE.names:
            dtype = STATE_DTYPE.fields[name][0]
            cols[name] = np.full((n, *dtype.shape), _STATE_FILL.get(name, 0), dtype.base)
        return cls(cols)


_BLANK_ITEMS: dict[str, np.ndarray] = {}


def blank_rows(col: np.ndarray, name: str, rows: np.ndarray) -> None:
    """Set `rows` of state column `name` to a blank flow's value, in place. A 2-D column is
    written as one item per row (numpy's fancy assignment of 2-D rows is ~6x slower)."""
    if col.ndim == 1:
        col[rows] = _STATE_FILL.get(name, 0)
        return
    item = _BLANK_ITEMS.get(name)
    if item is None:
        item = _BLANK_ITEMS[name] = rows_view(
            np.full((1, *col.shape[1:]), _STATE_FILL.get(name, 0), col.dtype))[0]
    rows_view(col)[rows] = item


class GatheredState(Columns):
    """Some rows of a StateTable, each column gathered when first used.

    The flow stage reads and writes a batch's flows' state column by column; in most batches
    many columns (rare counters, the handshake of flows long past it) are never touched, so
    gathering all ~65 of them up front, and writing them all back, moves state nobody looked
    at. `loaded` columns are the ones a caller may have changed. Rows in `blank_rows` (flows
    starting on a slot that held another flow) read as a blank flow, except the `kept`
    columns (the slot's endpoints and its own columns).
    """

    __slots__ = ("source", "rows", "blank_rows", "kept")

    def __init__(self, source: StateTable, rows: np.ndarray,
                 blank_rows: np.ndarray | None = None, kept: frozenset[str] = frozenset()
                 ) -> None:
        super().__init__({})
        self.source = source
        self.rows = rows
        self.blank_rows = np.zeros(0, np.int64) if blank_rows is None else blank_rows
        self.kept = kept

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def loaded(self) -> dict[str, np.ndarray]:
        return self.cols

    def __getitem__(self, key):
        if not isinstance(key, str):
            for name in self.source.cols:
                self[name]
            return StateTable({name: take_rows(col, key) for name, col in self.cols.items()})
        col = self.cols.get(key)
        if col is None:
            col = take_rows(self.source.cols[key], self.rows)
            if self.blank_rows.size and key not in self.kept:
                blank_rows(col, key, self.blank_rows)
            self.cols[key] = col
        return col

    def __setitem__(self, key, value) -> None:
        if not isinstance(key, str):
            raise TypeError("GatheredState assigns whole columns only")
        if key not in self.cols:
            source = self.source.cols[key]
            self.cols[key] = np.empty((len(self), *source.shape[1:]), source.dtype)
        self.cols[key][...] = value


def blank_state(n: int) -> StateTable:
    return StateTable.blank(n)


def segments_with_packets(packets: np.ndarray, segments: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The segment rows of a batch without capture duplicates and, row for row, the packets they
    describe (for stages that need both: attribution's timeline, the patterns). Both come in
    frame order within a batch; the packet rows are moved as opaque items (fast)."""
    from tracer.flows.vocab import A_DUPLICATE

    keep = np.flatnonzero((segments["flags"] & A_DUPLICATE) == 0)
    # Rows move as opaque items: numpy moves structured rows field by field otherwise.
    seg_items = np.ascontiguousarray(segments).view(np.dtype((np.void, segments.dtype.itemsize)))
    seg = seg_items[keep].view(segments.dtype).reshape(-1)
    frames = packets["frame"]
    increasing = frames.shape[0] < 2 or bool((frames[1:] > frames[:-1]).all())
    if increasing and segments.shape[0] == frames.shape[0] \
            and np.array_equal(segments["frame"], frames):
        pos = keep  # one segment row per packet, both in frame order (the usual batch)
    elif increasing:
        pos = np.searchsorted(frames, seg["frame"])
    else:
        order = np.argsort(frames, kind="stable")
        pos = order[np.searchsorted(frames, seg["frame"], sorter=order)]
    items = np.ascontiguousarray(packets).view(np.dtype((np.void, packets.dtype.itemsize)))
    return seg, items[pos].view(packets.dtype).reshape(-1)

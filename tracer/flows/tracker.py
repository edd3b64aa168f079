"""The flow stage (pure, stateful across batches): TCP flows, sequence analysis, RTT, RSTs.

Theory of operation, per packet batch (capture order):

0. **Packet-only work** (`prepare_packets`: dense copies of the fields read for every packet,
   endpoint keys grouped into the batch's distinct pairs, capture-copy fingerprints) depends
   on the packets alone, so the offline pipeline does it in its reader thread while the stage
   works on the previous batch; `add` does it itself otherwise.
1. **Identity.** Each endpoint (address, port) is hashed to 64 bits and a segment's key is the
   sum of its two endpoints' hashes, the same in both directions; an open-addressing table
   (tracer.flows.slots) maps keys to *slots* of the flow table (new keys take free slots),
   asked once per distinct pair of the batch (~10 packets each), not once per packet. A
   slot also keeps a check word (the lower endpoint hash), so two 4-tuples sharing a key are
   counted as a collision, not merged silently. A slot holds one flow at a time. The
   per-flow state is kept as columns (tables.StateTable); a batch gathers the columns it uses
   for its flows (tables.GatheredState), works on dense arrays, and writes back those.
2. **Port reuse.** A SYN without ACK whose sequence number differs from the sender's reference
   (its last SYN, else its first segment) starts a new flow on the slot, as Wireshark's
   tcp.analysis.reused_ports does; flow ids are numbered in order of first segment, like
   tcp.stream. The initiator is the SYN sender (the receiver of a SYN/ACK when the SYN was
   missed); for flows already open when the capture starts it is the side with the higher
   (ephemeral) port, and the flow is flagged `midstream`.
3. **Sequence space.** Segments are sorted by (flow, direction, frame); sequence and ACK
   numbers are made relative to the direction's base and unwrapped with cumulative sums of
   32-bit-wrapped deltas. Every rule of the form "the highest sequence seen before this
   segment" is a segmented exclusive scan seeded with the state carried from earlier batches
   (tracer.flows.segments). Rules that look at the *other* direction ("the last ACK the
   receiver sent before this segment") find, in the flow's frame order, the other
   direction's last earlier row with the property, and read its values.
4. **Classification** follows Wireshark's tcp_analyze_sequence_number (4.0), where it can be
   stated on arrays: lost segment, keep-alive, zero window, window full, duplicate ACK, ACK of
   unseen data, and the retransmission family (fast, out-of-order, spurious, plain). Capture
   duplicates (the very same packet twice, within 50 us, nothing from the other side between)
   are marked and kept out of every other count; identical RSTs on one interface are real
   packets (a middlebox or a kernel answers each segment of a burst), so RSTs count as copies
   only across interfaces or on a Linux "any" capture.
5. **RTT.** Handshake RTT split at the capture point; data RTT from a segment to the first ACK
   that acknowledges exactly its end (Karn: never from a retransmitted range); TCP timestamp
   echo RTT. Samples are kept with their time for later percentiles; past
   `max_rtt_samples` they are a uniform reservoir (Algorithm R), so memory stays bounded.
6. **RSTs.** Each RST is described at its own moment: sender side, sequence class against the
   receiver's RCV.NXT and window (RFC 5961), phase, idle times, age, outstanding bytes, TTL and
   IP ID against the sender's previous packet, and (filled in later) whether the sender went on.
7. **Eviction.** Flows closed by RST or FINs are finished after `closed_timeout_s` of quiet
   (default 10 s: late FINs and ACKs come within a few RTTs), other flows after
   `idle_timeout_s` (600 s); finished flows become rows of the flow table (or only counts,
   with `keep_flows=False`) and their slots are reused, so memory follows the active flows,
   not the capture's history. Quiet flows are finished before the next batch is analysed, so
   a packet after the timeout opens a new flow whatever the batching (within a batch flows are
   not cut); `advance()` moves the clock when no packets come (a quiet live link).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.decode.vocab import LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2
from tracer.flows import segments as sg
from tracer.flows import vocab as v
from tracer.flows.slots import SlotTable, usable
from tracer.flows.tables import (
    FLOW_DTYPE,
    NO_SEQ,
    NO_TIME,
    RST_DTYPE,
    RTT_DTYPE,
    RTT_KIND_DATA,
    RTT_KIND_HANDSHAKE_INITIATOR,
    RTT_KIND_HANDSHAKE_RESPONDER,
    RTT_KIND_TIMESTAMP,
    SEGMENT_DTYPE,
    Columns,
    GatheredState,
    blank_rows,
    blank_state,
    rows_view,
    take_rows,
)
from tracer.packet import OPT_TIMESTAMP, OPT_WSCALE, TH_ACK, TH_FIN, TH_RST, TH_SYN

MASK32 = np.int64(0xFFFFFFFF)
FAST_RETRANSMISSION_WINDOW_NS = 20_000_000  # Wireshark: within 20 ms of the last dup ACK
DEFAULT_OOO_THRESHOLD_NS = 3_000_000  # Wireshark: 3 ms when no initial RTT is known
# The same packet seen twice within this is a capture duplicate (two interfaces, `any`): copies
# carry the same timestamp to the microsecond, while a real resend waits for a timer or ACKs.
DUPLICATE_WINDOW_NS = 50_000
_ANY_LINKTYPES = np.array([LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2])
MAX_WSCALE = 14  # RFC 7323: larger shifts are treated as 14
# A responder that sent data less than this before an RST was still answering; after a longer
# quiet spell (keep-alive idle, application think time) the connection counts as idle.
RESPONSE_QUIET_NS = 1_000_000_000
# RTT samples kept in full before a uniform reservoir takes over (~40 bytes each).
DEFAULT_MAX_RTT_SAMPLES = 500_000


def _hash(*columns: np.ndarray, h: np.ndarray | None = None) -> np.ndarray:
    """64-bit mix of several integer columns (splitmix64 finalizer per step), continuing from
    `h` when given."""
    h = np.full(columns[0].shape, 0x9E3779B97F4A7C15, np.uint64) if h is None else h.copy()
    for col in columns:
        h ^= col.astype(np.uint64)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return h


_K_HI, _K_LO, _K_PORT = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F),
                         np.uint64(0x165667B19E3779F9))


def _endpoint_hash(hi: np.ndarray, lo: np.ndarray, port: np.ndarray) -> np.ndarray:
    """64-bit mix of one endpoint (address halves and port): a multiply-add of the three
    fields, then the splitmix64 finalizer."""
    h = hi * _K_HI
    h += lo * _K_LO
    h += port.astype(np.uint64) * _K_PORT
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(32)
    return h


def _pair_key(h_src: np.ndarray, h_dst: np.ndarray) -> np.ndarray:
    """The flow table's key of an endpoint pair: symmetric, so both directions agree."""
    return h_src + h_dst


def _endpoint_key(p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per packet: the 64-bit key of its endpoint pair (the same both ways), whether the
    source is the pair's endpoint *a* (the one whose endpoint hash is lower; "a" and "b" only
    name the two sides in the state, the initiator is decided apart), and a check word
    (endpoint a's hash) that two pairs sharing a key would have to share too."""
    h_src = _endpoint_hash(p["src_hi"], p["src_lo"], p["sport"])
    h_dst = _endpoint_hash(p["dst_hi"], p["dst_lo"], p["dport"])
    a_is_src = h_src <= h_dst
    return _pair_key(h_src, h_dst), a_is_src, np.minimum(h_src, h_dst)


def endpoint_shard(packets: np.ndarray, shards: int) -> np.ndarray:
    """Which of `shards` independent trackers each packet belongs to: every packet of a
    4-tuple (both directions, every flow reusing it) lands in the same one."""
    key = _endpoint_key(packets)[0]
    return (key % np.uint64(shards)).astype(np.int64)


def _flat(col: np.ndarray) -> np.ndarray:
    """A per-(slot, endpoint) state column seen as one flat array (a view: writes go to the
    state; setting the shape raises rather than silently copying a non-contiguous column)."""
    flat = col.view()
    flat.shape = (-1,)
    return flat


def _wrap32(delta: np.ndarray) -> np.ndarray:
    """A difference of 32-bit sequence numbers as a signed value in [-2**31, 2**31)."""
    return ((delta + 2**31) & MASK32) - 2**31


@dataclass
class FlowCounts:
    """Aggregates over all flows and segments, whatever the tables keep."""

    flows: int = 0
    midstream: int = 0
    reused: int = 0
    states: dict[str, int] = field(default_factory=dict)
    segment_flags: dict[str, int] = field(default_factory=dict)
    rsts: int = 0
    duplicates: int = 0
    data_segments: int = 0  # segments carrying payload (duplicates excluded)
    hash_collisions: int = 0  # packets whose 4-tuple hashed like another active flow's
    gaps_lost_upstream: int = 0  # gaps the sender filled again: lost before the capture point
    gaps_missed_by_capture: int = 0  # gaps acknowledged without a resend: the capture missed them
    gaps_unsettled: int = 0  # gaps still open when their flow finished


class FlowTracker:
    """Feed packet batches with `add`, then call `finish` once.

    Tables are appended to `self.flows`, `self.rsts`, `self.rtts` (and `self.segments` when
    `keep_segments`); see tracer.flows.tables for their layouts.
    """

    def __init__(self, *, idle_timeout_s: float = 600.0, closed_timeout_s: float = 10.0,
                 keep_segments: bool = False, keep_flows: bool = True,
                 max_rtt_samples: int = DEFAULT_MAX_RTT_SAMPLES,
                 report_new_flows: bool = False) -> None:
        # With report_new_flows, take_new_flows() hands over each new flow's first frame.
        self.report_new_flows = report_new_flows
        self.keep_flows = keep_flows
        self.max_rtt_samples = max_rtt_samples
        self.rtt_samples_seen = 0  # all samples taken; `rtts` holds a uniform subset past the cap
        self._rtt_rng = np.random.default_rng(0x7AC3)
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        self.closed_timeout_ns = int(closed_timeout_s * 1e9)
        self.keep_segments = keep_segments
        self.state = blank_state(1024)
        self.in_use = np.zeros(1024, bool)
        self._free = np.arange(1024)  # slots not in use (blank)
        self._table = SlotTable()  # endpoint key -> slot
        self._slot_key = np.zeros(1024, np.uint64)  # each slot's key in the table
        self.next_flow_id = 0
        self._new_flow_frames: list[np.ndarray] = []  # first frame of each new flow, by id
        self.counts = FlowCounts()
        self._flows: list[np.ndarray] = []
        self._rsts: list[np.ndarray] = []
        self._rtts: list[np.ndarray] = []
        self._segments: list[np.ndarray] = []
        # Data segments not yet acknowledged, carried for data RTT across batches.
        self._pending = Columns.empty(_PENDING_DTYPE)
        # Gaps in a sender's sequence numbers not yet settled (see _settle_holes).
        self._holes = np.zeros(0, _HOLE_DTYPE)
        # TSvals not yet echoed, carried for timestamp RTT across batches.
        self._tsvals = Columns.empty(_TSVAL_DTYPE)
        # RST events whose sender may still send: (flow_id, direction, index into RST rows).
        self._rst_watch = np.zeros(0, _WATCH_DTYPE)
        self._rst_rows = 0
        self._rst_continued: list[np.ndarray] = []  # indices of RST rows found continued
        self.latest_ts = NO_TIME
        self._last_eviction_ts = NO_TIME

    # -- public ----------------------------------------------------------------------------

    def add(self, packets: np.ndarray | PreparedPackets) -> None:
        """One batch of packets (capture order), as decoded or as `prepare_packets` made it."""
        columns = packets if isinstance(packets, PreparedPackets) else prepare_packets(packets)
        if columns.shape[0] == 0:
            return
        ts = columns["ts_ns"]
        # Flows that have been quiet past their timeout when this batch begins are finished
        # first, so a packet after such a quiet spell opens a new flow however the capture is
        # cut into batches (within a batch, flows are not cut).
        self.advance(int(ts.min()))
        slot, a_is_src = self._slots(columns)
        batch = _Batch(columns, slot, a_is_src)
        self._assign_flows(batch)
        self._analyze(batch)
        self.latest_ts = max(self.latest_ts, int(ts.max()))

    def advance(self, now_ns: int) -> None:
        """Move the stage's clock to `now_ns` (never back) and finish the flows quiet past
        their timeouts (looked at no more often than a tenth of the shorter timeout): between
        batches, or when a live link has been quiet."""
        self.latest_ts = max(self.latest_ts, now_ns)
        self._evict(finish=False)

    def finish(self) -> None:
        self._evict(finish=True)

    @property
    def flows(self) -> np.ndarray:
        """Finished flows (with `keep_flows`), by flow id."""
        rows = _concat(self._flows, FLOW_DTYPE)
        return _take_rows_as_items(rows, np.argsort(rows["flow_id"], kind="stable"))

    @property
    def rsts(self) -> np.ndarray:
        rows = _concat(self._rsts, RST_DTYPE)
        if self._rst_continued:
            rows["continued"][np.concatenate(self._rst_continued)] = True
        return rows

    def _keep_rtts(self, rows: np.ndarray) -> None:
        """Keep RTT samples; past `max_rtt_samples`, a uniform reservoir of them (Algorithm R,
        vectorized per batch), so memory stays bounded however long the capture."""
        seen = self.rtt_samples_seen
        self.rtt_samples_seen += rows.shape[0]
        held = sum(part.shape[0] for part in self._rtts)
        room = self.max_rtt_samples - held
        if room >= rows.shape[0]:
            self._rtts.append(rows)
            return
        if room > 0:
            self._rtts.append(rows[:room])
            rows, seen = rows[room:], seen + room
        pool = _concat(self._rtts, RTT_DTYPE) if len(self._rtts) > 1 else self._rtts[0]
        # Sample number seen+i+1 replaces a random held one with probability cap/(seen+i+1).
        index = seen + 1 + np.arange(rows.shape[0])
        slots = (self._rtt_rng.random(rows.shape[0]) * index).astype(np.int64)
        take = np.flatnonzero(slots < self.max_rtt_samples)
        # Whole rows as opaque items: numpy moves structured rows field by field otherwise.
        item = np.dtype((np.void, RTT_DTYPE.itemsize))
        pool.view(item)[slots[take]] = np.ascontiguousarray(rows).view(item)[take]
        self._rtts = [pool]

    @property
    def rtts(self) -> np.ndarray:
        return _concat(self._rtts, RTT_DTYPE)

    @property
    def segments(self) -> np.ndarray:
        return _concat(self._segments, SEGMENT_DTYPE)

    def open_flow_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """(flow ids, start times) of the flows still active: the SYN's time, else the first
        packet's."""
        st = self.state
        rows = np.flatnonzero(self.in_use & (st["flow_id"] >= 0))
        syn, first = st["syn_ts"][rows], st["first_ts"][rows]
        return st["flow_id"][rows], np.where(syn >= 0, syn, first)

    def take_new_flows(self) -> np.ndarray:
        """First frame of each flow started since the last call, in flow id order (ids run on
        from the previous call's). Lets a caller number flows of several trackers as one."""
        frames = _concat(self._new_flow_frames, np.int64)
        self._new_flow_frames.clear()
        return frames.astype(np.int64, copy=False)

    def take_segments(self) -> np.ndarray:
        """The segment rows (with `keep_segments`) produced since the last call, handed over
        and forgotten, so a consumer can process them batch by batch in flat memory."""
        rows = self.segments
        self._segments.clear()
        return rows

    # -- 1. identity -----------------------------------------------------------------------

    def _slots(self, p: PreparedPackets) -> tuple[np.ndarray, np.ndarray]:
        key, a_is_src, check = p.endpoints
        # The table is asked once per distinct pair of the batch (a batch holds ~10 packets of
        # each): prepare_packets grouped the keys.
        pair_keys, pair_first, pair_of_row = p.pairs
        pair_slot = self._table.lookup(pair_keys)
        st = self.state
        missing = np.flatnonzero(pair_slot < 0)
        if missing.size:
            fresh = self._allocate(missing.size)
            st = self.state  # _allocate may have grown it; free slots are blank (see _evict)
            rows = pair_first[missing]
            src_a = a_is_src[rows]
            for field, src_name, dst_name in (("hi", "src_hi", "dst_hi"), ("lo", "src_lo", "dst_lo"),
                                              ("port", "sport", "dport")):
                src, dst = p.at(src_name, rows), p.at(dst_name, rows)
                st["a_" + field][fresh] = np.where(src_a, src, dst)
                st["b_" + field][fresh] = np.where(src_a, dst, src)
            st["pair_check"][fresh] = check[rows]
            self._table.insert(pair_keys[missing], fresh)
            self._slot_key[fresh] = pair_keys[missing]
            pair_slot[missing] = fresh
        slot = pair_slot.take(pair_of_row)
        # Two 4-tuples with one 64-bit key (odds ~ flows**2 / 2**65) would share a slot: their
        # check words differ (unless both 64-bit endpoint hashes collide too), so such packets
        # are counted rather than merged silently.
        same = st["pair_check"].take(slot) == check
        if not same.all():
            self.counts.hash_collisions += int(np.count_nonzero(~same))
        return slot, a_is_src

    def _allocate(self, n: int) -> np.ndarray:
        if self._free.size < n:
            size = self.state.shape[0]
            grow = max(size, n)
            self.state = self.state.concatenate(blank_state(grow))
            self.in_use = np.concatenate((self.in_use, np.zeros(grow, bool)))
            self._slot_key = np.concatenate((self._slot_key, np.zeros(grow, np.uint64)))
            self._free = np.concatenate((self._free, np.arange(size, size + grow)))
        chosen, self._free = self._free[:n], self._free[n:]
        self.in_use[chosen] = True
        return chosen

    # -- 2. flows and port reuse -----------------------------------------------------------

    def _assign_flows(self, b: _Batch) -> None:
        p, st = b.p, self.state
        n = p.shape[0]
        endpoint = np.where(b.a_is_src, 0, 1)  # which canonical endpoint sent it
        flags = p["flags"]
        syn = (flags & TH_SYN) != 0
        # Only slots where something can happen need the work below: a SYN (port reuse, new
        # reference), no flow yet, or an endpoint without a reference. Elsewhere the packet
        # belongs to its slot's flow and no reference changes.
        flow_of_slot = st["flow_id"].take(b.slot)
        # (slot, endpoint) pairs as flat indices: numpy's 2-D fancy indexing is much slower.
        involved = syn | (flow_of_slot < 0) | ~_flat(st["ref_valid"])[b.slot * 2 + endpoint]
        flow_id = flow_of_slot
        reused = np.zeros(n, bool)
        if involved.any():
            marked = np.zeros(st.shape[0], bool)
            marked[b.slot[involved]] = True
            rows = np.flatnonzero(marked.take(b.slot))
            sub_flow, sub_reused = self._assign_rows(b.slot[rows], endpoint[rows], flags[rows],
                                                     p["seq"][rows], p["frame"][rows])
            flow_id[rows] = sub_flow
            reused[rows] = sub_reused
        b.flow_id = flow_id
        b.reuse = reused & ((flags & (TH_SYN | TH_ACK)) == TH_SYN)
        b.reused_flag = reused

    def _assign_rows(self, slot, endpoint, flags, seq_raw, frame) -> tuple[np.ndarray, np.ndarray]:
        """Flow ids and reused-ports flags of rows (in capture order) covering whole slots."""
        st = self.state
        n = slot.shape[0]
        syn_only = (flags & (TH_SYN | TH_ACK)) == TH_SYN
        # Per (slot, endpoint), in frame order: the sender's reference sequence number.
        se = slot * 2 + endpoint
        order = sg.stable_argsort(se)
        se_sorted = se[order]
        seg = sg.Segments(np.cumsum(sg.starts_of(se_sorted)) - 1)
        nseg = seg.nseg
        seg_key = sg.first_of(se_sorted, seg, nseg, 0)
        seq = seq_raw[order].astype(np.int64)
        has_state = _flat(st["ref_valid"])[seg_key]
        init_ref = np.where(has_state, _flat(st["ref_seq"])[seg_key].astype(np.int64),
                            sg.first_of(seq, seg, nseg, 0))
        is_syn = (flags[order] & TH_SYN) != 0
        ref = sg.ffill_before(seq, is_syn, seg, init_ref)
        earlier = ~seg.starts | has_state[seg.seg]
        # Wireshark flags any SYN (SYN/ACK too) that disagrees with the sender's reference as
        # reused ports, but only a SYN without ACK opens a new conversation.
        reused_sorted = is_syn & earlier & (seq != ref)
        reused = np.zeros(n, bool)
        reused[order] = reused_sorted
        reuse = reused & syn_only
        # Update the references for the next batch: last SYN's seq, else first packet's.
        last_syn = np.maximum.reduceat(np.where(is_syn, np.arange(n), -1), seg.first_rows)
        new_ref = np.where(last_syn >= 0, seq[np.maximum(last_syn, 0)], init_ref)
        _flat(st["ref_seq"])[seg_key] = (new_ref & MASK32).astype(np.uint32)
        _flat(st["ref_valid"])[seg_key] = True

        # Flow starts: a slot's first packet when it has no flow yet, and every reusing SYN.
        by_slot = sg.stable_argsort(slot)
        slot_sorted = slot[by_slot]
        first_in_slot = sg.starts_of(slot_sorted)
        starts_sorted = reuse[by_slot] | (first_in_slot & (st["flow_id"][slot_sorted] < 0))
        start_rows = by_slot[starts_sorted]  # rows (capture order within a slot)
        start_rows = np.sort(start_rows)  # flow ids in order of first segment, like tcp.stream
        new_ids = self.next_flow_id + np.arange(start_rows.size, dtype=np.int64)
        self.next_flow_id += start_rows.size
        if self.report_new_flows:
            self._new_flow_frames.append(frame[start_rows])
        start_id = np.full(n, -1, np.int64)
        start_id[start_rows] = new_ids
        sseg = sg.Segments(np.cumsum(first_in_slot) - 1)
        init_id = st["flow_id"][sg.first_of(slot_sorted, sseg, sseg.nseg, 0)]
        ids_sorted = start_id[by_slot]
        has_start = ids_sorted >= 0
        filled = sg.ffill_before(ids_sorted, has_start, sseg, init_id)
        flow_sorted = np.where(has_start, ids_sorted, filled)
        flow_id = np.empty(n, np.int64)
        flow_id[by_slot] = flow_sorted
        return flow_id, reused

    # -- 3..6. analysis --------------------------------------------------------------------

    def _analyze(self, b: _Batch) -> None:
        p, st = b.p, self.state
        n = p.shape[0]
        uniq_flow, dense = sg.dense_ids(b.flow_id)
        nf = uniq_flow.shape[0]
        # Slot of each dense flow, and the initial state of each: the slot's state for the flow
        # that continues from earlier batches, a blank one for flows that start here.
        flow_slot = np.zeros(nf, np.int64)
        flow_slot[dense] = b.slot
        prev_flow = st["flow_id"][flow_slot]
        continuing = prev_flow == uniq_flow
        fresh = ~continuing
        if fresh.any():
            # A flow reusing the slot of one with no packets in this batch: that one is over.
            _, here = _find(uniq_flow, prev_flow)
            over = fresh & (prev_flow >= 0) & ~here
            if over.any():
                self._emit_flows(GatheredState(st, np.unique(flow_slot[over])))
        # Flows starting here begin blank, on their slot's endpoints.
        init = GatheredState(st, flow_slot, np.flatnonzero(fresh), self._KEPT_ON_BLANK)
        init["flow_id"] = uniq_flow
        first_row = np.full(nf, n, np.int64)
        first_row[dense[::-1]] = np.arange(n)[::-1]  # the last write of each flow is its first row
        if fresh.any():
            self._initiators(init, fresh, first_row, b)
        sender_is_a = b.a_is_src
        direction = np.where(sender_is_a == init["init_is_a"].take(dense), 0, 1).astype(np.int64)
        b.direction = direction
        flags = p["flags"].astype(np.int64, copy=False)
        syn = (flags & TH_SYN) != 0
        fin = (flags & TH_FIN) != 0
        rst = (flags & TH_RST) != 0
        ackf = (flags & TH_ACK) != 0
        payload = p["payload_len"].astype(np.int64, copy=False)
        ts = p["ts_ns"]
        frame = p["frame"]
        seq_raw = p["seq"].astype(np.int64, copy=False)
        ack_raw = p["ack"].astype(np.int64, copy=False)
        win_raw = p["window"].astype(np.int64, copy=False)

        # Flow-direction order.
        fd = dense * 2 + direction
        o = sg.stable_argsort(fd)
        fd_s = fd.take(o)
        seg = fd_s  # segments numbered by fd directly (2 per dense flow)
        nseg = 2 * nf
        S = sg.Segments(fd_s, nseg)
        ts_o, frame_o, ack_o, seq_o = ts.take(o), frame.take(o), ack_raw.take(o), seq_raw.take(o)
        init_fd = lambda name: init[name].reshape(-1)  # noqa: E731 - (nf, 2) -> per fd

        # Bases: the state's, else the earlier of this direction's first segment and the other
        # direction's first ACK (which names this direction's sequence space too).
        base = init_fd("base").astype(np.int64)
        base_valid = init_fd("base_valid").copy()
        first_seq = np.full(nseg, -1, np.int64)
        first_seq_frame = np.full(nseg, np.iinfo(np.int64).max)
        firsts = sg.starts_of(fd_s)
        first_seq[fd_s[firsts]] = seq_o[firsts]
        first_seq_frame[fd_s[firsts]] = frame_o[firsts]
        ack_rows = np.flatnonzero(ackf)
        first_ack = np.full(nseg, -1, np.int64)
        first_ack_frame = np.full(nseg, np.iinfo(np.int64).max)
        if ack_rows.size:
            # The first ACK sent *in* direction fd names the sequence space of fd ^ 1.
            target = fd[ack_rows] ^ 1
            ordr = sg.stable_argsort(target)  # ACK rows are in frame order already
            t_sorted = target[ordr]
            firsts_t = sg.starts_of(t_sorted)
            first_ack[t_sorted[firsts_t]] = ack_raw[ack_rows][ordr][firsts_t]
            first_ack_frame[t_sorted[firsts_t]] = frame[ack_rows][ordr][firsts_t]
        use_seq = ~base_valid & (first_seq_frame <= first_ack_frame) & (first_seq >= 0)
        use_ack = ~base_valid & ~use_seq & (first_ack >= 0)
        base[use_seq] = first_seq[use_seq]
        base[use_ack] = first_ack[use_ack]
        base_valid |= use_seq | use_ack

        # Unwrapped sequence numbers, per direction in frame order.
        rel = (seq_o - base.take(fd_s)) & MASK32
        prev_rel = np.where(init_fd("base_valid") & (init_fd("packets") > 0),
                            init_fd("seq_last_rel").astype(np.int64), 0)
        prev_rel_row = sg.previous_in(rel, S, prev_rel)
        start_unw = np.where(init_fd("packets") > 0, init_fd("seq_last"), 0)
        seq_unw = sg.cumsum_in(_wrap32(rel - prev_rel_row), S, start_unw)
        flags_o = flags.take(o)
        syn_s, fin_s = (flags_o & TH_SYN) != 0, (flags_o & TH_FIN) != 0
        rst_s, ack_s = (flags_o & TH_RST) != 0, (flags_o & TH_ACK) != 0
        pay_s = payload.take(o)
        seg_len = pay_s + syn_s + fin_s
        end = np.where(rst_s, seq_unw, seq_unw + seg_len)
        # Unwrapped ACK numbers (relative to the other direction's base), over ACK rows only.
        ack_unw_s = np.full(n, NO_SEQ, np.int64)
        ar = np.flatnonzero(ack_s)
        if ar.size:
            aseg = seg[ar]
            AS = sg.Segments(aseg, nseg)
            arel = (ack_o[ar] - base[aseg ^ 1]) & MASK32
            had = init_fd("acked_once")
            prev_arel = np.where(had, init_fd("ack_last_rel").astype(np.int64), 0)
            prev_arel_row = sg.previous_in(arel, AS, prev_arel)
            ack_unw_s[ar] = sg.cumsum_in(_wrap32(arel - prev_arel_row), AS,
                                         np.where(had, init_fd("ack_last"), 0))

        # Flow order (dense flow, frame), and where each flow-direction row sits in it.
        fo = sg.stable_argsort(dense)
        fseg = dense.take(fo)
        FS = sg.Segments(fseg, nf)
        ts_fo, frame_fo = ts.take(fo), frame.take(fo)
        inv_o = np.empty(n, np.int64)
        inv_o[o] = np.arange(n)
        at_o = inv_o.take(fo)  # position in flow-direction order of each flow-order row
        fo_pos = np.empty(n, np.int64)
        fo_pos[at_o] = np.arange(n)  # position in flow order of each flow-direction row

        # Capture duplicates: the very same packet as the previous one of the flow, with
        # nothing from the other side in between (a resend follows ACKs or a timer). The
        # flow's last packet of the previous batch is remembered by its fingerprint.
        dir_fo, ts_f = direction.take(fo), ts_fo
        first_f = FS.starts
        prev_dir = np.empty(n, np.int64)
        prev_ts = np.empty(n, np.int64)
        prev_dir[1:], prev_ts[1:] = dir_fo[:-1], ts_f[:-1]
        prev_dir[first_f] = init["last_dir"][FS.first_seg]
        prev_ts[first_f] = init["last_ts"][FS.first_seg]
        # Fingerprints only where they can decide something: rows close enough in time to the
        # previous one of their flow and direction, those previous rows, and each flow's last
        # row (remembered for the next batch).
        near = (prev_dir == dir_fo) & (np.abs(ts_f - prev_ts) <= DUPLICATE_WINDOW_NS)
        near_rows = np.flatnonzero(near)
        if near_rows.size:
            # A copy repeats its predecessor's sequence, ACK, flags and length: rows that
            # differ there are not copies, whatever the rest of their headers.
            inner = ~first_f[near_rows]
            r_now, r_prev = fo[near_rows[inner]], fo[near_rows[inner] - 1]
            same = ((seq_raw[r_now] == seq_raw[r_prev]) & (ack_raw[r_now] == ack_raw[r_prev])
                    & (flags[r_now] == flags[r_prev]) & (payload[r_now] == payload[r_prev]))
            keep_near = np.ones(near_rows.size, bool)
            keep_near[inner] = same
            near_rows = near_rows[keep_near]
        need = np.zeros(n, bool)
        need[near_rows] = True
        need[near_rows[~first_f[near_rows]] - 1] = True
        need[FS.last_rows] = True
        need_rows = np.flatnonzero(need)
        fp_f = np.zeros(n, np.uint64)
        fp_f[need_rows] = p.fingerprints.take(fo.take(need_rows))
        dup_f = np.zeros(n, bool)
        if near_rows.size:
            prev_fp = np.where(first_f[near_rows], init["last_fp"][fseg[near_rows]],
                               fp_f[np.maximum(near_rows - 1, 0)])
            dup_f[near_rows] = prev_fp == fp_f[near_rows]
            # Identical RSTs on one interface are real packets, not one packet seen twice: a
            # middlebox or a kernel answers each segment of a burst with the same RST. Only a
            # Linux "any" capture records a packet once per device it crosses on one interface.
            rst_near = near_rows[dup_f[near_rows] & rst_s[at_o[near_rows]]]
            if rst_near.size:
                iface = p["iface"][fo[rst_near]].astype(np.int64)
                prev_iface = np.where(first_f[rst_near], init["last_iface"][fseg[rst_near]],
                                      p["iface"][fo[np.maximum(rst_near - 1, 0)]])
                any_capture = np.isin(p["linktype"][fo[rst_near]], _ANY_LINKTYPES)
                dup_f[rst_near[(iface == prev_iface) & ~any_capture]] = False
        dup = np.empty(n, bool)
        dup[at_o] = dup_f
        live = ~dup  # rows that count for sequence analysis

        # Highest sequence end seen before each segment (this direction).
        ends_live = np.where(live & ~rst_s, end, NO_SEQ)
        next_before = sg.exclusive_max(ends_live, S, init_fd("next_seq"))
        has_next = next_before > NO_SEQ
        # Previous live segment of this direction: its ACK, window, time.
        prev_idx = sg.last_index_before(live, S)
        has_prev = (prev_idx >= 0) | (init_fd("packets").take(seg) > 0)
        prev_ack_raw = np.where(prev_idx >= 0, ack_o[np.maximum(prev_idx, 0)],
                                init_fd("last_ack_raw").take(seg).astype(np.int64))
        win_s = win_raw.take(o)
        prev_win = np.where(prev_idx >= 0, win_s[np.maximum(prev_idx, 0)],
                            init_fd("last_window").take(seg))
        # When the highest sequence end was last raised (Wireshark's nextseqtime).
        advanced = live & ~rst_s & (end > next_before)
        next_seq_ts = sg.ffill_before(ts_o, advanced, S, init_fd("next_seq_ts"))

        pure = ~(syn_s | fin_s | rst_s)
        dupack = (live & (pay_s == 0) & (win_s != 0) & (win_s == prev_win) & has_prev
                  & (seq_unw == next_before) & (ack_o == prev_ack_raw) & pure & ack_s)
        # Position in the current run of duplicate ACKs: a new ACK value resets it (Wireshark).
        resets = live & ~dupack & (~has_prev | (ack_o != prev_ack_raw))
        last_reset = sg.last_index_before(resets, S)
        dup_total = sg.cumsum_in(dupack.astype(np.int64), S, np.zeros(nseg, np.int64))
        dup_count = np.where(
            last_reset >= 0,
            dup_total - dup_total[np.maximum(last_reset, 0)],
            dup_total + init_fd("dupacks").take(seg),
        )
        dup_count = np.where(dupack, dup_count, 0)

        # Window scale: from the direction's SYN (only if both SYNs carried the option).
        wscale_fd = init_fd("wscale").astype(np.int64).copy()
        opt_o = p["opt_present"].take(o)
        syn_ws = syn_s & ((opt_o & OPT_WSCALE) != 0)
        if syn_ws.any():
            wscale_fd[seg[syn_ws]] = np.minimum(p.at("wscale", o[syn_ws]).astype(np.int64),
                                                MAX_WSCALE)
        syn_seen_fd = np.zeros(nseg, bool)
        syn_seen_fd[seg[syn_s]] = True
        syn_no_ws = syn_s & ~syn_ws
        wscale_fd[seg[syn_no_ws]] = -2  # SYN without the option: no scaling this direction
        both = (wscale_fd.reshape(nf, 2) >= 0).all(axis=1)
        no_scaling = ((wscale_fd.reshape(nf, 2) == -2).any(axis=1))
        shift_fd = np.where(np.repeat(both, 2), wscale_fd, np.where(np.repeat(no_scaling, 2), 0, -1))
        shift_row = shift_fd.take(seg)
        # SYN segments are never scaled.
        win_scaled = np.where(syn_s, win_s, np.where(shift_row >= 0, win_s << np.maximum(shift_row, 0), win_s))

        # Handshake times.
        hs = self._handshake(init, nf, dense, direction, syn, ackf, rst, ts, frame, seq_raw,
                             ack_raw)
        initial_rtt = np.where((hs["syn_ts"] >= 0) & (hs["hs_ack_ts"] >= 0),
                               hs["hs_ack_ts"] - hs["syn_ts"], -1)

        # The other direction's view at each segment: flow order (dense, frame).
        dir_f = direction.take(fo)
        live_f = live.take(at_o)
        # What the other direction had done by each segment: the values at its last row
        # before this one (flow order) with some property, else the flow's carried state. The
        # highest sequence end it had sent is the inclusive running max at its last such row.
        other_fd = fd_s ^ 1  # the other direction's (flow, direction) index

        def at_other(rows_o: np.ndarray, values_o: np.ndarray, start_fd: np.ndarray) -> np.ndarray:
            return np.where(rows_o >= 0, values_o[rows_o], start_fd[other_fd])

        def narrowed(j_any: np.ndarray, has: np.ndarray) -> np.ndarray:
            """Per row (flow-direction order): the flow-direction position of the other
            direction's last earlier row with property `has` (-1: none), from `j_any`, the
            same for a wider property: where j_any's row has the property too (nearly
            everywhere: the exceptions are capture copies, SYNs without ACK and RSTs), it is
            the answer; elsewhere one binary search among that direction's rows with it."""
            j = j_any.copy()
            bad = np.flatnonzero((j >= 0) & ~has[np.maximum(j, 0)])
            if bad.size:
                has_f = has.take(at_o)
                where_f = fo_pos[bad]
                wanted = 1 - dir_f[where_f]
                found = np.full(bad.size, -1, np.int64)
                for d in (0, 1):
                    sel = np.flatnonzero(wanted == d)
                    if not sel.size:
                        continue
                    candidates = np.flatnonzero(has_f & (dir_f == d))
                    k = np.searchsorted(candidates, where_f[sel]) - 1
                    jf = candidates[np.maximum(k, 0)] if candidates.size else np.zeros(sel.size, np.int64)
                    ok = (k >= 0) & (fseg[jf] == fseg[where_f[sel]]) if candidates.size \
                        else np.zeros(sel.size, bool)
                    found[sel] = np.where(ok, at_o[jf], -1)
                j[bad] = found
            return j

        # The other direction's last earlier row is the row before this row's run of one
        # direction (flow order); `narrowed` then steps past capture copies to a live one.
        run_start = np.ones(n, bool)
        if n > 1:
            run_start[1:] = dir_f[1:] != dir_f[:-1]
        run_start |= FS.starts
        run_first = np.maximum.accumulate(np.where(run_start, np.arange(n), 0))
        before_run = np.where(run_first > FS.start_row, run_first - 1, -1)
        j_any = np.empty(n, np.int64)
        j_any[at_o] = np.where(before_run >= 0, at_o[np.maximum(before_run, 0)], -1)
        j_live = narrowed(j_any, live)
        j_sent = narrowed(j_live, live & ~rst_s)
        j_ack = narrowed(j_live, live & ack_s)
        sent_through = np.maximum(next_before, np.where(live & ~rst_s, end, NO_SEQ))
        rev_next = at_other(j_sent, sent_through, init_fd("next_seq"))
        rev_last_ack = at_other(j_ack, ack_unw_s, np.where(init_fd("acked_once"), init_fd("ack_last"), NO_SEQ))
        rev_window = at_other(j_live, win_scaled, np.where(init_fd("last_window") >= 0,
                                                           _scale(init_fd("last_window"), shift_fd), -1))

        # Classification (Wireshark's order where it matters).
        flags_out = np.zeros(n, np.int64)
        zero_window = live & (win_s == 0) & pure
        lost = live & has_next & (seq_unw > next_before) & ~rst_s
        keep_alive = live & (seg_len <= 1) & pure & has_next & (seq_unw == next_before - 1)
        window_full = (live & (seg_len > 0) & (rev_window >= 0) & (rev_last_ack > NO_SEQ)
                       & (end == rev_last_ack + rev_window) & ~syn_s)
        ack_lost = live & ack_s & (rev_next > NO_SEQ) & (ack_unw_s > rev_next) & ~syn_s
        retrans_like = (live & ((seg_len > 0) | syn_s | fin_s) & has_next & (seq_unw < next_before)
                        & ~keep_alive & ~rst_s)
        # The retransmission family is told apart on its (few) rows only.
        fast, ooo, spurious, plain = (np.zeros(n, bool) for _ in range(4))
        rr = np.flatnonzero(retrans_like)
        if rr.size:
            j_rr = j_ack[rr]
            known = j_rr >= 0
            other_rr = other_fd[rr]
            rev_dupacks = np.where(known, dup_count[np.maximum(j_rr, 0)],
                                   init_fd("dupacks")[other_rr])
            rev_last_ack_ts = np.where(known, ts_o[np.maximum(j_rr, 0)],
                                       init_fd("last_ack_ts")[other_rr])
            last_ack_rr, seq_rr, end_rr, ts_rr = rev_last_ack[rr], seq_unw[rr], end[rr], ts_o[rr]
            initial = initial_rtt[fd_s[rr] // 2]
            ooo_threshold = np.where(initial > 0, initial, DEFAULT_OOO_THRESHOLD_NS)
            raised_ts = next_seq_ts[rr]
            f = ((rev_dupacks >= 2) & (last_ack_rr == seq_rr)
                 & ((ts_rr - rev_last_ack_ts) < FAST_RETRANSMISSION_WINDOW_NS))
            oo = (~f & (raised_ts >= 0) & (ts_rr - raised_ts < ooo_threshold)
                  & (next_before[rr] != end_rr))
            sp = ~f & ~oo & (pay_s[rr] > 0) & (last_ack_rr > NO_SEQ) & (end_rr <= last_ack_rr)
            fast[rr], ooo[rr], spurious[rr], plain[rr] = f, oo, sp, ~f & ~oo & ~sp
        for mask, bit in ((zero_window, v.A_ZERO_WINDOW), (lost, v.A_LOST_SEGMENT),
                          (keep_alive, v.A_KEEP_ALIVE), (window_full, v.A_WINDOW_FULL),
                          (ack_lost, v.A_ACK_LOST_SEGMENT), (dupack, v.A_DUPLICATE_ACK),
                          (fast, v.A_FAST_RETRANSMISSION | v.A_RETRANSMISSION),
                          (ooo, v.A_OUT_OF_ORDER),
                          (spurious, v.A_SPURIOUS_RETRANSMISSION | v.A_RETRANSMISSION),
                          (plain, v.A_RETRANSMISSION), (dup, v.A_DUPLICATE)):
            flags_out[mask] |= bit
        flags_out[inv_o[np.flatnonzero(b.reused_flag)]] |= v.A_REUSED_PORTS
        self._settle_holes(uniq_flow, fd_s, frame_o, seq_unw, end, live, ack_s, ack_unw_s,
                           retrans_like, lost, next_before, flags_out)
        for bit, name in enumerate(v.SEGMENT_FLAG_NAMES):
            hits = int(np.count_nonzero(flags_out & (1 << bit)))
            if hits:
                self.counts.segment_flags[name] = self.counts.segment_flags.get(name, 0) + hits
        self.counts.duplicates += int(dup.sum())
        self.counts.data_segments += int(np.count_nonzero(live & (pay_s > 0)))

        # RTT samples.
        own_max_ack = sg.exclusive_max(np.where(live & ack_s, ack_unw_s, NO_SEQ), S,
                                       init_fd("max_ack"))
        ack_rtt = self._data_rtt(uniq_flow, fd_s, live, ack_s, ack_unw_s, end, pay_s,
                                 rst_s, retrans_like, ts_o, frame_o, own_max_ack)
        self._handshake_rtt(hs, uniq_flow, init)
        p_o = {"opt_present": opt_o, "tsval": p["tsval"].take(o), "tsecr": p["tsecr"].take(o)}
        self._timestamp_rtt(p_o, uniq_flow, fd_s, live, ack_s, ts_o, frame_o)

        # RST events.
        rst_rows = np.flatnonzero(rst_s & live)
        if rst_rows.size:
            # Facts only RSTs need, looked up at the RST rows instead of scanned for all rows:
            # each is "the last earlier segment of one direction with some property".
            positions = fo_pos[rst_rows]
            rst_f = rst.take(fo)
            # Each fact: (which flow-order rows j have the property, its value at j, carried
            # start per direction).
            specs = {
                "max_ack": (lambda j: live_f[j] & ack_s[at_o[j]], lambda j: ack_unw_s[at_o[j]],
                            init["max_ack"]),
                "last_ts": (lambda j: np.ones(j.shape, bool), lambda j: ts[fo[j]],
                            init["dir_last_ts"]),
                "fin_seen": (lambda j: live_f[j] & fin[fo[j]], lambda j: np.ones(j.shape, np.int64),
                             (init["fin_ts"] >= 0).astype(np.int64)),
                "last_data_frame": (lambda j: live_f[j] & (payload[fo[j]] > 0),
                                    lambda j: frame[fo[j]], init["last_data_frame"]),
                "last_data_ts": (lambda j: live_f[j] & (payload[fo[j]] > 0), lambda j: ts[fo[j]],
                                 init["last_data_ts"]),
                "ttl": (lambda j: ~rst_f[j], lambda j: p.at("ttl", fo[j]).astype(np.int64),
                        init["ttl_last"].astype(np.int64)),
                "ipid": (lambda j: ~rst_f[j],
                         lambda j: np.where(p.at("ip_version", fo[j]) == 4,
                                            p.at("ip_id", fo[j]).astype(np.int64), -1),
                         init["ipid_last"].astype(np.int64)),
            }
            found = _last_before_rsts(specs, positions, FS.start_row[positions], dir_f, fseg, n)
            rdir = dir_f[positions]

            def at_rst(name: str, own_side: bool) -> np.ndarray:
                mine, theirs = found[(name, 0)], found[(name, 1)]
                return np.where((rdir == 0) == own_side, mine, theirs)

            b.flow_first = (sg.first_of(ts_fo, FS, nf, NO_TIME),
                            sg.first_of(frame_fo, FS, nf, 0))
            b.flow_order = (fo_pos, fseg, dir_f, ~rst_f)
            self._rst_events(b, uniq_flow, init, hs, o, rst_rows, seq_unw, next_before,
                             rev_window, rev_next, at_rst)
        self._watch_continuations(uniq_flow, S, rst_s, frame_o)

        if self.keep_segments:
            rows = np.zeros(n, SEGMENT_DTYPE)
            rows["frame"] = frame_o
            rows["flow_id"] = uniq_flow[fd_s // 2]
            rows["direction"] = fd_s % 2
            rows["flags"] = flags_out
            rows["seq"] = seq_unw
            rows["next_seq"] = seq_unw + seg_len
            rows["ack"] = ack_unw_s
            rows["window"] = np.where(syn_s | (shift_row >= 0), win_scaled, -1)  # SYNs: unscaled
            rows["window_raw"] = win_s
            rows["ack_rtt_ns"] = ack_rtt
            rows["dupack_count"] = dup_count
            order = np.argsort(rows["frame"], kind="stable")
            self._segments.append(_take_rows_as_items(rows, order))

        # New state per dense flow, then back into the slots.
        fin_state = init
        fin_state["base"] = (base.reshape(nf, 2) & MASK32).astype(np.uint32)
        fin_state["base_valid"] = base_valid.reshape(nf, 2)
        seg_count = np.bincount(fd_s, minlength=nseg)
        present = seg_count > 0
        last_rel = sg.last_of(rel, S, nseg, 0)
        last_unw = sg.last_of(seq_unw, S, nseg, 0)
        _set_fd(fin_state, "seq_last_rel", present, (last_rel & MASK32).astype(np.uint32))
        _set_fd(fin_state, "seq_last", present, last_unw)
        if ar.size:
            acked = np.zeros(nseg, bool)
            acked[aseg] = True
            _set_fd(fin_state, "ack_last_rel", acked,
                    (sg.last_of(arel, AS, nseg, 0) & MASK32).astype(np.uint32))
            _set_fd(fin_state, "ack_last", acked, sg.last_of(ack_unw_s[ar], AS, nseg, 0))
            _set_fd(fin_state, "last_ack_raw", acked,
                    sg.last_of(ack_o[ar], AS, nseg, 0).astype(np.uint32))
            _set_fd(fin_state, "acked_once", acked, np.ones(nseg, bool))
            lat = sg.reduce_by(np.maximum, ts_o[ar], AS, nseg, NO_TIME)
            fin_state["last_ack_ts"] = np.maximum(fin_state["last_ack_ts"], lat.reshape(nf, 2))
        # Running maxima carried from the state: their inclusive value at each segment's last row.
        lr, ls = S.last_rows, S.last_seg
        at_last = np.zeros(nseg, bool)
        at_last[ls] = True
        last_values = np.zeros(nseg, np.int64)
        last_values[ls] = np.maximum(own_max_ack[lr], np.where(live[lr] & ack_s[lr],
                                                               ack_unw_s[lr], NO_SEQ))
        _set_fd(fin_state, "max_ack", at_last, last_values)
        last_values[ls] = np.maximum(next_before[lr], ends_live[lr])
        _set_fd(fin_state, "next_seq", at_last, last_values)
        last_values[ls] = np.where(advanced[lr], ts_o[lr], next_seq_ts[lr])
        _set_fd(fin_state, "next_seq_ts", at_last, last_values)
        mins = sg.reduce_by(np.minimum, np.where(live & ~rst_s, seq_unw, 2**62), S, nseg, 2**62)
        fin_state["min_seq"] = np.minimum(fin_state["min_seq"], mins.reshape(nf, 2))
        _set_fd(fin_state, "last_window", present, sg.last_of(win_s, S, nseg, 0))
        fin_state["wscale"] = wscale_fd.reshape(nf, 2).astype(np.int8)
        last_dup = sg.last_of(dup_count, S, nseg, 0)
        _set_fd(fin_state, "dupacks", present, last_dup)
        firsts_ts = sg.first_of(ts_o, S, nseg, NO_TIME)
        dft = fin_state["dir_first_ts"].reshape(-1)
        dft[present & (dft < 0)] = firsts_ts[present & (dft < 0)]
        fin_state["dir_first_ts"] = dft.reshape(nf, 2)
        dlt = sg.reduce_by(np.maximum, ts_o, S, nseg, NO_TIME)
        fin_state["dir_last_ts"] = np.maximum(fin_state["dir_last_ts"], dlt.reshape(nf, 2))
        ldf = sg.reduce_by(np.maximum, np.where(live & (pay_s > 0), frame_o, 0), S, nseg, 0)
        ldt = sg.reduce_by(np.maximum, np.where(live & (pay_s > 0), ts_o, NO_TIME), S, nseg,
                           NO_TIME)
        fin_state["last_data_ts"] = np.maximum(fin_state["last_data_ts"], ldt.reshape(nf, 2))
        fin_state["last_data_frame"] = np.maximum(fin_state["last_data_frame"], ldf.reshape(nf, 2))
        counters = (
            ("retransmissions", (flags_out & v.A_RETRANSMISSION) != 0),
            ("fast_retransmissions", fast),
            ("spurious_retransmissions", spurious),
            ("out_of_order", ooo),
            ("lost_segments", lost),
            ("ack_lost_segments", ack_lost),
            ("duplicate_acks", dupack),
            ("zero_windows", zero_window),
            ("duplicates", dup),
            ("keep_alives", keep_alive),
            ("rst_count", rst_s & live),
        )
        # Most of these events are rare: count each over its own rows (fd_s is sorted).
        for name, mask in counters:
            hits = np.flatnonzero(mask)
            if hits.size:
                fin_state[name] += np.bincount(fd_s[hits], minlength=nseg).reshape(nf, 2)
        fin_state["packets"] += seg_count.reshape(nf, 2)
        fin_state["payload_bytes"] += sg.reduce_by(np.add, np.where(live, pay_s, 0), S, nseg,
                                                   0).reshape(nf, 2)
        never = np.iinfo(np.int64).max
        fts = sg.reduce_where(np.minimum, ts_o, fin_s & live, S, nseg, never)
        fts = np.where(fts == np.iinfo(np.int64).max, NO_TIME, fts).reshape(nf, 2)
        fin_state["fin_ts"] = np.where(fin_state["fin_ts"] >= 0, fin_state["fin_ts"], fts)
        rts = sg.reduce_where(np.minimum, ts_o, rst_s & live, S, nseg, never)
        rts = np.where(rts == np.iinfo(np.int64).max, NO_TIME, rts).reshape(nf, 2)
        fin_state["first_rst_ts"] = np.where(fin_state["first_rst_ts"] >= 0,
                                             fin_state["first_rst_ts"], rts)
        last_nonrst = sg.reduce_by(np.maximum, np.where(~rst_s, np.arange(n), -1), S, nseg, -1)
        has_ttl = last_nonrst >= 0
        at_last = o[np.maximum(last_nonrst, 0)]  # packet rows (meaningful where has_ttl)
        _set_fd(fin_state, "ttl_last", has_ttl, p.at("ttl", at_last).astype(np.int16))
        ipid = np.where(p.at("ip_version", at_last) == 4, p.at("ip_id", at_last).astype(np.int64), -1)
        _set_fd(fin_state, "ipid_last", has_ttl, ipid.astype(np.int32))
        for name in ("syn_ts", "synack_ts", "hs_ack_ts", "synack_seq", "synack_valid",
                     "syn_count", "synack_count", "hs_ambiguous"):
            fin_state[name] = hs[name]
        last_f, last_flow = FS.last_rows, FS.last_seg
        fin_state["last_fp"][last_flow] = fp_f[last_f]
        fin_state["last_dir"][last_flow] = dir_fo[last_f]
        fin_state["last_iface"][last_flow] = p.at("iface", fo[last_f])
        fft = sg.reduce_by(np.minimum, ts_fo, FS, nf, np.iinfo(np.int64).max)
        fin_state["first_ts"] = np.where(fin_state["first_ts"] >= 0, fin_state["first_ts"], fft)
        flt = sg.reduce_by(np.maximum, ts_fo, FS, nf, NO_TIME)
        fin_state["last_ts"] = np.maximum(fin_state["last_ts"], flt)
        ffr = sg.first_of(frame_fo, FS, nf, np.iinfo(np.int64).max)
        fin_state["first_frame"] = np.where(fin_state["first_frame"] > 0, fin_state["first_frame"], ffr)
        lfr = sg.last_of(frame_fo, FS, nf, 0)
        fin_state["last_frame"] = np.maximum(fin_state["last_frame"], lfr)

        # The last flow of each slot stays active; earlier ones (replaced by reuse) finish.
        last_of_slot = np.zeros(nf, bool)
        order_slot = sg.stable_argsort(flow_slot)  # then by flow id: uniq_flow is sorted
        slot_sorted = flow_slot[order_slot]
        ends_slot = np.ones(nf, bool)
        ends_slot[:-1] = slot_sorted[1:] != slot_sorted[:-1]
        last_of_slot[order_slot[ends_slot]] = True
        replaced = ~last_of_slot
        if replaced.any():
            self._emit_flows(fin_state[replaced])
        self._write_back(flow_slot, fin_state, last_of_slot, fresh, fresh & (prev_flow >= 0))
        # Data still waiting for its ACK: drop what the receiver has acknowledged by now.
        pending = self._pending
        if pending.size:
            flow_of_key, direction_of_key = _range_key_parts(pending["key"])
            at, hit = _find(uniq_flow, flow_of_key)
            receiver = 1 - direction_of_key
            acked_to = np.where(hit, fin_state["max_ack"][at, receiver], NO_SEQ)
            self._pending = pending[~hit | (pending["end"] > acked_to)]

    # Columns kept in the slot itself rather than per flow: the sender references for port
    # reuse, which _assign_rows maintains in place for every (slot, endpoint).
    _SLOT_COLUMNS = frozenset(("ref_seq", "ref_valid"))
    # Columns a flow sets when it starts and never changes.
    _START_COLUMNS = frozenset(("flow_id", "a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port",
                                "init_is_a", "midstream", "reused"))

    # Columns a flow starting on a slot keeps from it: the endpoints _slots wrote, and the
    # slot's own columns.
    _KEPT_ON_BLANK = (frozenset(("a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port", "pair_check"))
                      | _SLOT_COLUMNS)

    def _write_back(self, flow_slot, fin_state: GatheredState, keep, fresh, on_used_slot) -> None:
        """Store the batch's final state of the flows that stay active in their slots: the
        columns the batch loaded (the others did not change), and for flows that started on a
        slot another flow had used, blank values in the columns it never loaded."""
        st = self.state
        rows = None if keep.all() else np.flatnonzero(keep)
        slots = flow_slot if rows is None else flow_slot[rows]
        # START columns are written for every flow that started here (blank on a used slot).
        started = np.flatnonzero(fresh if rows is None else fresh[rows])
        for name, col in fin_state.loaded.items():
            if name in self._SLOT_COLUMNS:
                continue
            if rows is not None:
                col = take_rows(col, rows)
            if name in self._START_COLUMNS:
                if started.size:
                    rows_view(st[name])[slots[started]] = rows_view(take_rows(col, started))
            else:
                rows_view(st[name])[slots] = rows_view(np.ascontiguousarray(col))
        reused = np.flatnonzero(on_used_slot if rows is None else on_used_slot[rows])
        if reused.size:
            targets = slots[reused]
            for name in st.cols:
                if name not in fin_state.loaded and name not in self._KEPT_ON_BLANK:
                    blank_rows(st[name], name, targets)

    def _settle_holes(self, uniq_flow, fd_s, frame_o, seq_unw, end, live, ack_s, ack_unw_s,
                      retrans_like, lost, next_before, flags_out) -> None:
        """Decide for each gap in a sender's sequence numbers where its data went.

        A gap opens when a segment starts above the highest sequence seen (`lost_segment`).
        If the sender then sends the missing range again before the receiver acknowledges
        past it, the data was lost upstream of the capture point. If the receiver
        acknowledges past the gap first, the data did arrive: the capture missed it, and that
        ACK is flagged `ack_lost_segment` (as Wireshark's "ACKed unseen segment"). Gaps still
        open are carried to the next batch. All rows are in flow-direction order.
        """
        n = fd_s.shape[0]
        new = np.zeros(int(lost.sum()), _HOLE_DTYPE)
        new["flow_id"] = uniq_flow[fd_s[lost] // 2]
        new["direction"] = fd_s[lost] % 2
        new["start"] = next_before[lost]
        new["end"] = seq_unw[lost]
        new["frame"] = frame_o[lost]
        holes = np.concatenate((self._holes, new))
        if holes.size == 0:
            return
        at, in_batch = _find(uniq_flow, holes["flow_id"])
        hseg = at * 2 + holes["direction"].astype(np.int64)
        never = np.iinfo(np.int64).max
        fill_frame = np.full(holes.size, never)
        cover_row = np.full(holes.size, -1, np.int64)
        idx = np.flatnonzero(in_batch)
        if idx.size:
            # Resends (segments below the highest sequence) overlapping each gap, after it.
            order = np.lexsort((holes["start"][idx], hseg[idx]))
            hidx = idx[order]
            key_start = _seg_key(hseg[hidx], holes["start"][hidx])
            key_end = _seg_key(hseg[hidx], holes["end"][hidx])
            resend = np.flatnonzero(live & retrans_like)
            if resend.size:
                first = np.searchsorted(key_end, _seg_key(fd_s[resend], seq_unw[resend]), "right")
                last = np.searchsorted(key_start, _seg_key(fd_s[resend], end[resend]), "left")
                count = np.maximum(last - first, 0)
                pair_resend = np.repeat(resend, count)
                step = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
                pair_hole = hidx[np.repeat(first, count) + step]
                later = frame_o[pair_resend] > holes["frame"][pair_hole]
                np.minimum.at(fill_frame, pair_hole[later], frame_o[pair_resend][later])
            # The first ACK of the other direction at or past each gap's end, after the gap.
            acks = live & ack_s
            reach = sg.running_max(np.where(acks, ack_unw_s, NO_SEQ), fd_s)
            other = hseg[idx] ^ 1
            after = np.searchsorted(_seg_key(fd_s, frame_o), _seg_key(other, holes["frame"][idx]),
                                    "right")
            reached = np.searchsorted(_seg_key(fd_s, reach), _seg_key(other, holes["end"][idx]),
                                      "left")
            row = np.minimum(np.maximum(after, reached), n - 1)
            ok = (np.maximum(after, reached) < n) & (fd_s[row] == other) & (reach[row] >= holes["end"][idx])
            cover_row[idx[ok]] = row[ok]
        cover_frame = np.where(cover_row >= 0, frame_o[np.maximum(cover_row, 0)], never)
        missed = (cover_row >= 0) & (cover_frame < fill_frame)
        upstream = ~missed & (fill_frame < never)
        flags_out[cover_row[missed]] |= v.A_ACK_LOST_SEGMENT
        self.counts.gaps_lost_upstream += int(upstream.sum())
        self.counts.gaps_missed_by_capture += int(missed.sum())
        self._holes = holes[~missed & ~upstream]

    def _initiators(self, init, fresh, first_row, b: _Batch) -> None:
        """Who initiated each flow that starts in this batch."""
        p = b.p
        rows = first_row[fresh]
        flags = p["flags"][rows]
        sender_a = b.a_is_src[rows]
        syn_only = (flags & (TH_SYN | TH_ACK)) == TH_SYN
        syn_ack = (flags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)
        # Midstream: the ephemeral (higher) port's side; the first sender on a tie.
        sport, dport = p["sport"][rows], p["dport"][rows]
        sender_ephemeral = np.where(sport == dport, True, sport > dport)
        init_is_sender = np.where(syn_only, True, np.where(syn_ack, False, sender_ephemeral))
        init["init_is_a"][fresh] = np.where(init_is_sender, sender_a, ~sender_a)
        init["midstream"][fresh] = ~syn_only & ~syn_ack
        reused = b.reuse[rows]
        init["reused"][fresh] = reused
        self.counts.flows += int(fresh.sum())
        self.counts.midstream += int(init["midstream"][fresh].sum())
        self.counts.reused += int(reused.sum())

    def _handshake(self, init, nf, dense, direction, syn, ackf, rst, ts, frame, seq_raw, ack_raw):
        """First SYN (initiator), SYN/ACK (responder) and the ACK completing the handshake."""
        # One dense column per fact (a structured array's fields would be strided).
        hs = {name: init[name].copy() for name in (
            "syn_ts", "synack_ts", "hs_ack_ts", "synack_seq", "synack_valid", "syn_count",
            "synack_count", "hs_ambiguous")}
        hs["syn_frame"] = np.zeros(nf, np.int64)
        hs["synack_frame"] = np.zeros(nf, np.int64)
        big = np.iinfo(np.int64).max
        # SYNs are few: work on their rows (indices) rather than on whole-batch masks.
        syn_any = np.flatnonzero(syn)
        syn_rows = syn_any[~ackf[syn_any] & (direction[syn_any] == 0)]
        sa_rows = syn_any[ackf[syn_any] & (direction[syn_any] == 1)]
        for rows, name, fr in ((syn_rows, "syn_ts", "syn_frame"), (sa_rows, "synack_ts", "synack_frame")):
            first = _first_frame_of(dense, rows, frame, nf, big)
            got = first < big
            pos = np.searchsorted(frame, first[got])  # frames are increasing within a batch
            hs[fr][got] = first[got]
            need = got & (hs[name] < 0)
            t = np.full(nf, NO_TIME, np.int64)
            t[got] = ts[pos]
            hs[name][need] = t[need]
            if name == "synack_ts":
                s = np.zeros(nf, np.int64)
                s[got] = seq_raw[pos]
                new_sa = got & ~hs["synack_valid"]
                hs["synack_seq"][new_sa] = s[new_sa]
                hs["synack_valid"] |= new_sa
        # Karn's rule for the handshake: a SYN resent before the SYN/ACK (or a SYN/ACK resent
        # before the ACK) makes that half of the handshake RTT ambiguous.
        sa_frame = np.where(hs["synack_frame"] > 0, hs["synack_frame"], big)
        d_syn = dense[syn_rows]
        syn_before_sa = np.bincount(d_syn[frame[syn_rows] < sa_frame[d_syn]], minlength=nf)
        new_sa = (hs["synack_frame"] > 0) & (init["synack_ts"] < 0)
        hs["hs_ambiguous"][:, 1] |= new_sa & ((init["syn_count"] + syn_before_sa) > 1)
        hs["syn_count"] += np.bincount(dense[syn_rows], minlength=nf)
        hs["synack_count"] += np.bincount(dense[sa_rows], minlength=nf)
        # Only flows still waiting for the handshake's ACK can complete it here.
        waiting = hs["synack_valid"] & (hs["hs_ack_ts"] < 0)
        cand = np.flatnonzero(waiting[dense])
        dc = dense[cand]
        completing = cand[~syn[cand] & ackf[cand] & ~rst[cand] & (direction[cand] == 0)
                          & (ack_raw[cand] == ((hs["synack_seq"][dc].astype(np.int64) + 1) & MASK32))]
        first = _first_frame_of(dense, completing, frame, nf, big)
        got = first < big
        pos = np.searchsorted(frame, first[got])
        t = np.full(nf, NO_TIME, np.int64)
        t[got] = ts[pos]
        need = got & (hs["hs_ack_ts"] < 0) & (hs["synack_ts"] >= 0)
        hs["hs_ack_ts"][need] = t[need]
        ack_frame = np.where(got, first, big)
        d_sa = dense[sa_rows]
        sa_before_ack = np.bincount(d_sa[frame[sa_rows] < ack_frame[d_sa]], minlength=nf)
        hs["hs_ambiguous"][:, 0] |= need & ((init["synack_count"] + sa_before_ack) > 1)
        return hs

    def _handshake_rtt(self, hs, uniq_flow, init) -> None:
        new_resp = ((hs["synack_ts"] > 0) & (init["synack_ts"] < 0) & (hs["syn_ts"] > 0)
                    & ~hs["hs_ambiguous"][:, 1])
        new_init = ((hs["hs_ack_ts"] > 0) & (init["hs_ack_ts"] < 0) & (hs["synack_ts"] > 0)
                    & ~hs["hs_ambiguous"][:, 0])
        rows = []
        for mask, kind, side, start, stop in (
            (new_resp, RTT_KIND_HANDSHAKE_RESPONDER, 1, "syn_ts", "synack_ts"),
            (new_init, RTT_KIND_HANDSHAKE_INITIATOR, 0, "synack_ts", "hs_ack_ts"),
        ):
            if mask.any():
                r = np.zeros(int(mask.sum()), RTT_DTYPE)
                r["ts_ns"] = hs[stop][mask]
                r["flow_id"] = uniq_flow[mask]
                r["kind"] = kind
                r["side"] = side
                r["rtt_ns"] = hs[stop][mask] - hs[start][mask]
                r["frame"] = hs["synack_frame"][mask] if kind == RTT_KIND_HANDSHAKE_RESPONDER else 0
                rows.append(r)
        if rows:
            self._keep_rtts(np.concatenate(rows))

    def _data_rtt(self, uniq_flow, fd_s, live, ack_s, ack_unw_s, end, payload, rst_s,
                  retrans_like, ts_o, frame_o, own_max_ack):
        """Data RTT: segment -> first ACK acknowledging exactly its end (Karn's rule).

        Data segments wait in `self._pending`, sorted by (flow, direction, end, frame). Rows of
        a batch arrive in flow-direction order with ends mostly rising, so sorting them and
        merging them in are near-linear (timsort finds the runs). An ACK that advances its
        direction's cumulative ACK then finds the latest data segment with exactly its end,
        sent before it, with one binary search.
        """
        n = fd_s.shape[0]
        ack_rtt = np.full(n, -1, np.int64)
        flow_of = uniq_flow[fd_s >> 1]
        direction = fd_s & 1
        # Payload only: the handshake has its own samples, and a FIN's ACK often waits for the
        # other application's close.
        di = np.flatnonzero(live & (payload > 0) & ~rst_s)
        new = Columns({
            "key": _range_key(flow_of[di], direction[di], end[di]),
            "end": end[di], "ts_ns": ts_o[di], "frame": frame_o[di],
            "retransmitted": retrans_like[di],
        })
        pending = self._pending.concatenate(new) if self._pending.size else new
        if pending.size:
            # Carried rows come first and are older: a stable sort keeps (key, frame) order.
            pending = pending[np.argsort(pending["key"], kind="stable")]
        self._pending = pending  # pruned once the batch's ACKs are in the state
        # Queries: ACKs that advance the cumulative ACK of their direction.
        qi = np.flatnonzero(live & ack_s & (ack_unw_s > own_max_ack))
        if not (pending.size and qi.size):
            return ack_rtt
        qf, qd, qe = flow_of[qi], direction[qi] ^ 1, ack_unw_s[qi]
        qkey = _range_key(qf, qd, qe)
        qframe = frame_o[qi]
        pkey, pframe = pending["key"], pending["frame"]
        # The last pending row with this key; step back past rows sent after the ACK (a resend
        # of the same range after it: rare, so a few vectorized steps).
        pos = np.searchsorted(pkey, qkey, "right") - 1
        same = (pos >= 0) & (pkey[np.maximum(pos, 0)] == qkey)
        later = same & (pframe[np.maximum(pos, 0)] > qframe)
        while later.any():
            pos = np.where(later, pos - 1, pos)
            same &= (pos >= 0) & (pkey[np.maximum(pos, 0)] == qkey)
            later = same & (pframe[np.maximum(pos, 0)] > qframe)
        q_idx = np.flatnonzero(same)
        data_idx = pos[q_idx]
        good = ~pending["retransmitted"][data_idx]
        # Karn, for cumulative ACKs: no sample from an ACK that also covers resent data,
        # since it may answer the resend and its delay includes the recovery.
        resent_rows = np.flatnonzero(pending["retransmitted"])
        if resent_rows.size and q_idx.size:
            rk, rframe = pkey[resent_rows], pframe[resent_rows]  # sorted by key
            lo_key = _range_key(qf[q_idx], qd[q_idx], own_max_ack[qi][q_idx])
            first = np.searchsorted(rk, lo_key, "right")
            last = np.searchsorted(rk, qkey[q_idx], "right")
            ack_frames = qframe[q_idx]
            # Only resends sent before the ACK count; ranges holding one are rare (one per
            # recovery episode), so they are checked one by one.
            for k in np.flatnonzero(last > first):
                if (rframe[first[k]:last[k]] < ack_frames[k]).any():
                    good[k] = False
        # Records without a capture time (pcapng Simple Packet Blocks read as 0) give no RTT.
        good &= (pending["ts_ns"][data_idx] > 0) & (ts_o[qi][q_idx] > 0)
        rows_q = qi[q_idx[good]]
        rtt = ts_o[rows_q] - pending["ts_ns"][data_idx[good]]
        ack_rtt[rows_q] = rtt
        if rows_q.size:
            r = np.zeros(rows_q.size, RTT_DTYPE)
            r["ts_ns"] = ts_o[rows_q]
            r["flow_id"] = flow_of[rows_q]
            r["kind"] = RTT_KIND_DATA
            r["side"] = direction[rows_q]  # the ACKer's side of the capture point
            r["rtt_ns"] = rtt
            r["frame"] = frame_o[rows_q]
            self._keep_rtts(r)
        return ack_rtt

    def _timestamp_rtt(self, p_o, uniq_flow, fd_s, live, ack_s, ts_o, frame_o) -> None:
        """TSval -> the first segment of the other direction echoing it in TSecr.

        `self._tsvals` holds, per (flow, direction), the first sending of each TSval not yet
        superseded by a later echo: runs sorted by (flow, direction, TSval), one key at most
        once. Only the entries of this batch's flows take part: the table follows every
        active flow (closed ones linger for `closed_timeout_s`), so the others are set aside
        untouched. Rows come in flow-direction order, where TSvals and TSecrs mostly rise, so
        the sorts below are near-linear merges of runs.
        """
        opt = p_o["opt_present"]
        has_ts = live & ((opt & OPT_TIMESTAMP) != 0)
        if not has_ts.any():
            return  # no TSval sent or echoed here: the table stays as it is
        flow = uniq_flow[fd_s >> 1]
        direction = fd_s & 1
        tsval, tsecr = p_o["tsval"], p_o["tsecr"]
        rows = np.flatnonzero(has_ts)
        new_keys = _compound(flow[rows], direction[rows], tsval[rows])
        # A sender repeats a TSval for every segment of a burst (the clock ticks in ms): in
        # flow-direction order only the first of each run is a first sending.
        run_start = sg.starts_of(new_keys)
        if not run_start.all():
            rows, new_keys = rows[run_start], new_keys[run_start]
        new = Columns({"key": new_keys, "ts_ns": ts_o[rows], "frame": frame_o[rows],
                       "echoed": np.zeros(rows.size, bool)})
        carried, aside = self._tsvals, None
        if carried.size:
            here = _present(uniq_flow, carried["key"] >> np.int64(33))
            if not here.all():
                aside, carried = carried[~here], carried[here]
        t = carried.concatenate(new) if carried.size else new
        # Stable: for equal keys the carried (older) sending stays first and wins.
        t = t[np.argsort(t["key"], kind="stable")]
        keys = t["key"]
        first = np.ones(keys.size, bool)
        first[1:] = keys[1:] != keys[:-1]
        if not first.all():
            t = t[first]
            keys = t["key"]
        # Echoes: segments with ACK whose TSecr is set; only the first echo of each value
        # counts (later ones measure delayed ACKs).
        er = np.flatnonzero(has_ts & ack_s & (tsecr != 0))
        if er.size and keys.size:
            ekeys = _compound(flow[er], direction[er] ^ 1, tsecr[er])
            run_start = sg.starts_of(ekeys)  # runs of one echoed value: the first is earliest
            if not run_start.all():
                er, ekeys = er[run_start], ekeys[run_start]
            eo = np.argsort(ekeys, kind="stable")  # frame order within a key: first echo first
            ef = np.ones(er.size, bool)
            ef[1:] = ekeys[eo][1:] != ekeys[eo][:-1]
            er, ekeys = er[eo[ef]], ekeys[eo[ef]]
            pos_c, hit = _find(keys, ekeys)
            src = pos_c[hit]
            erh = er[hit]
            valid = t["frame"][src] < frame_o[erh]
            # A value echoed before (in an earlier batch) gives no second sample.
            fresh = valid & ~t["echoed"][src] & (t["ts_ns"][src] > 0) & (ts_o[erh] > 0)
            done_rows = erh[fresh]
            if done_rows.size:
                r = np.zeros(done_rows.size, RTT_DTYPE)
                r["ts_ns"] = ts_o[done_rows]
                r["flow_id"] = flow[done_rows]
                r["kind"] = RTT_KIND_TIMESTAMP
                r["side"] = direction[done_rows]
                r["rtt_ns"] = ts_o[done_rows] - t["ts_ns"][src[fresh]]
                r["frame"] = frame_o[done_rows]
                self._keep_rtts(r)
            # Forget what is older than the last echoed value; keep that one, marked, so a
            # later echo of it is recognised as a repeat.
            t["echoed"][src[valid]] = True
            keep = _after_last_echo(t["echoed"], t["frame"], keys)
            if not keep.all():
                t = t[keep]
        if aside is not None:
            t = aside.concatenate(t)  # disjoint flows: one more sorted run
        if t.size > 4 * max(int(self.in_use.sum()), 1024):
            # Entries of finished flows: dropped now and then, not on every batch.
            alive = np.concatenate((self.state["flow_id"][self.in_use], uniq_flow))
            t = t[np.isin(t["key"] >> np.int64(33), alive)]
        self._tsvals = t

    def _rst_events(self, b, uniq_flow, init, hs, o, rst_rows, seq_unw, next_before,
                    rev_window, rev_next, at_rst):
        p = b.p
        prow = o[rst_rows]  # packet rows
        n_r = rst_rows.size
        uniq_index = np.searchsorted(uniq_flow, b.flow_id[prow])
        side = b.direction[prow]
        r = np.zeros(n_r, RST_DTYPE)
        r["frame"] = p.at("frame", prow)
        r["ts_ns"] = p.at("ts_ns", prow)
        r["flow_id"] = b.flow_id[prow]
        for name in ("src_hi", "src_lo", "sport", "dst_hi", "dst_lo", "dport", "ttl", "payload_len"):
            r[name] = p.at(name, prow)
        r["sender_side"] = side
        r["with_ack"] = (p.at("flags", prow) & TH_ACK) != 0
        established = ((hs["hs_ack_ts"][uniq_index] >= 0)
                       | init["midstream"][uniq_index]
                       | ((at_rst("last_data_frame", True) > 0) & (at_rst("last_data_frame", False) > 0)))
        # The receiver's RCV.NXT: the highest ACK it sent, else what the sender sends next.
        rev_max_ack = at_rst("max_ack", False)
        rcv_nxt = np.where(rev_max_ack > NO_SEQ, rev_max_ack, next_before[rst_rows])
        window = np.where(rev_window[rst_rows] >= 0, rev_window[rst_rows], 65535)
        seq = seq_unw[rst_rows]
        known = established & (rcv_nxt > NO_SEQ)
        offset = np.where(known, seq - rcv_nxt, 0)
        cls = np.where(~known, v.SEQ_NO_STATE,
                       np.where(offset == 0, v.SEQ_EXACT,
                                np.where((offset > 0) & (offset < window), v.SEQ_IN_WINDOW,
                                         v.SEQ_OUT_OF_WINDOW)))
        r["seq_class"] = cls
        r["seq_offset"] = offset
        ttl_prev = at_rst("ttl", True)
        r["ttl_known"] = ttl_prev >= 0
        r["ttl_delta"] = np.where(ttl_prev >= 0, p.at("ttl", prow).astype(np.int64) - ttl_prev, 0)
        ipid_prev = at_rst("ipid", True)
        ipid_now = np.where(p.at("ip_version", prow) == 4, p.at("ip_id", prow).astype(np.int64), -1)
        ipid_ok = (ipid_prev >= 0) & (ipid_now >= 0)
        r["ip_id_known"] = ipid_ok
        r["ip_id_delta"] = np.where(ipid_ok, ((ipid_now - ipid_prev + 32768) & 0xFFFF) - 32768, 0)
        t = p.at("ts_ns", prow)
        own_last = at_rst("last_ts", True)
        rev_last = at_rst("last_ts", False)
        r["idle_sender_ns"] = np.where(own_last >= 0, t - own_last, -1)
        r["idle_receiver_ns"] = np.where(rev_last >= 0, t - rev_last, -1)
        first_ts = np.where(init["first_ts"][uniq_index] >= 0, init["first_ts"][uniq_index],
                            b.flow_first[0][uniq_index])
        r["age_ns"] = t - first_ts
        # Outstanding bytes each way at the RST.
        nxt0 = np.where(side == 0, next_before[rst_rows], rev_next[rst_rows])
        nxt1 = np.where(side == 1, next_before[rst_rows], rev_next[rst_rows])
        ack_of0 = np.where(side == 0, rev_max_ack, at_rst("max_ack", True))
        ack_of1 = np.where(side == 1, rev_max_ack, at_rst("max_ack", True))
        out0 = np.where((nxt0 > NO_SEQ) & (ack_of0 > NO_SEQ), np.maximum(nxt0 - ack_of0, 0), 0)
        out1 = np.where((nxt1 > NO_SEQ) & (ack_of1 > NO_SEQ), np.maximum(nxt1 - ack_of1, 0), 0)
        r["outstanding"][:, 0] = out0
        r["outstanding"][:, 1] = out1
        # Phase.
        fin_before = (at_rst("fin_seen", True) > 0) | (at_rst("fin_seen", False) > 0)
        first_packet = (p.at("frame", prow) == b.flow_first[1][uniq_index]) & (
            init["first_ts"][uniq_index] < 0)
        syn_seen = hs["syn_ts"][uniq_index] >= 0
        synack_seen_before = (hs["synack_frame"][uniq_index] > 0) & (
            hs["synack_frame"][uniq_index] < p.at("frame", prow)) | (init["synack_ts"][uniq_index] >= 0)
        init_data = np.where(side == 0, at_rst("last_data_frame", True), at_rst("last_data_frame", False))
        resp_data = np.where(side == 1, at_rst("last_data_frame", True), at_rst("last_data_frame", False))
        phase = np.full(n_r, v.PHASE_ESTABLISHED_IDLE, np.int64)
        phase[(init_data > resp_data)] = v.PHASE_REQUEST_IN_FLIGHT
        # The responder spoke last: a response is under way while some of it is unacknowledged,
        # or when the responder itself resets moments after sending (it aborts its answer). An
        # initiator resetting after everything it received was acknowledged closes an idle
        # connection (e.g. a proxy ending a server connection after a complete answer).
        resp_data_ts = np.where(side == 1, at_rst("last_data_ts", True), at_rst("last_data_ts", False))
        aborting = (side == 1) & (resp_data_ts >= 0) & (t - resp_data_ts < RESPONSE_QUIET_NS)
        phase[(resp_data > init_data) & ((out1 > 0) | aborting)] = v.PHASE_RESPONSE_IN_FLIGHT
        phase[~established] = v.PHASE_HANDSHAKE
        phase[~established & (side == 1) & syn_seen & ~synack_seen_before] = v.PHASE_REFUSED
        phase[fin_before] = v.PHASE_CLOSING
        phase[first_packet & ~syn_seen] = v.PHASE_NO_STATE
        r["phase"] = phase
        order_frame = np.argsort(r["frame"], kind="stable")
        r, prow, side, rst_rows = r[order_frame], prow[order_frame], side[order_frame], rst_rows[order_frame]
        # Index of each RST within its flow: RSTs of earlier batches, then order in this one.
        prior = init["rst_count"][np.searchsorted(uniq_flow, r["flow_id"])].sum(axis=1)
        order = np.lexsort((r["frame"], r["flow_id"]))
        first_of_flow = sg.starts_of(r["flow_id"][order])
        pos_in = np.arange(n_r) - np.maximum.accumulate(np.where(first_of_flow, np.arange(n_r), 0))
        idx = np.empty(n_r, np.int64)
        idx[order] = pos_in + 1
        r["rst_index"] = prior + idx
        # Continued: a later non-RST packet from the same sender in this batch.
        later = _later_from_sender(b, rst_rows)
        r["continued"] = later
        base_index = self._rst_rows
        self._rsts.append(r)
        self._rst_rows += n_r
        self.counts.rsts += n_r
        watch = np.zeros(n_r, _WATCH_DTYPE)
        watch["flow_id"] = r["flow_id"]
        watch["direction"] = side
        watch["row"] = base_index + np.arange(n_r)
        watch["frame"] = r["frame"]
        self._rst_watch = np.concatenate((self._rst_watch, watch[~later]))

    def _watch_continuations(self, uniq_flow, S, rst_s, frame_o) -> None:
        """RSTs from earlier batches whose sender sends again in this one."""
        if self._rst_watch.size == 0:
            return
        # Last non-RST frame of each (flow, direction) present; rows are in that order.
        last = sg.reduce_by(np.maximum, np.where(rst_s, 0, frame_o), S, S.nseg, 0)
        fd = np.arange(S.nseg, dtype=np.int64)
        keys = uniq_flow[fd >> 1] * 2 + (fd & 1)  # sorted, as uniq_flow is
        wk = self._rst_watch["flow_id"] * 2 + self._rst_watch["direction"].astype(np.int64)
        pos_c, hit = _find(keys, wk)
        hit &= last[pos_c] > self._rst_watch["frame"]
        if hit.any():
            self._rst_continued.append(self._rst_watch["row"][hit])
        self._rst_watch = self._rst_watch[~hit]

    # -- 7. eviction -----------------------------------------------------------------------

    def _evict(self, finish: bool) -> None:
        st = self.state
        if not finish:
            # Timeouts are in seconds; looking again before a tenth of the shortest has passed
            # finds nothing new worth the scan of every active flow.
            step = min(self.closed_timeout_ns, self.idle_timeout_ns) // 10
            if self.latest_ts - self._last_eviction_ts < step:
                return
            self._last_eviction_ts = self.latest_ts
        active = np.flatnonzero(self.in_use & (st["flow_id"] >= 0))
        if active.size == 0:
            return
        if finish:
            done = np.ones(active.size, bool)
        else:
            quiet = self.latest_ts - st["last_ts"].take(active)
            # Whole columns first, then one gather: numpy's fancy indexing of 2-D rows is slow.
            rsts, fins = st["rst_count"], st["fin_ts"]
            closed = ((rsts[:, 0] > 0) | (rsts[:, 1] > 0)
                      | ((fins[:, 0] >= 0) & (fins[:, 1] >= 0))).take(active)
            done = (closed & (quiet > self.closed_timeout_ns)) | (quiet > self.idle_timeout_ns)
        if not done.any():
            return
        gone = active[done]
        self._emit_flows(GatheredState(st, gone))  # the columns emission reads
        self.in_use[gone] = False
        self._free = np.concatenate((self._free, gone))
        self._table.delete(self._slot_key[gone])
        st.clear(gone)
        alive_ids = st["flow_id"][self.in_use]
        if self._rst_watch.size:
            self._rst_watch = self._rst_watch[np.isin(self._rst_watch["flow_id"], alive_ids)]
        if self._pending.size:
            self._pending = self._pending[np.isin(_range_key_parts(self._pending["key"])[0],
                                                  alive_ids)]
        if self._holes.size:
            open_ = np.isin(self._holes["flow_id"], alive_ids)
            self.counts.gaps_unsettled += int((~open_).sum())
            self._holes = self._holes[open_]

    def _emit_flows(self, s: np.ndarray) -> None:
        rst_any = s["rst_count"].sum(axis=1) > 0
        fin_both = (s["fin_ts"] >= 0).all(axis=1)
        fin_one = (s["fin_ts"] >= 0).any(axis=1)
        established = (s["hs_ack_ts"] >= 0) | s["midstream"] | (s["packets"] > 0).all(axis=1) & (s["synack_ts"] >= 0)
        refused = rst_any & (s["syn_ts"] >= 0) & (s["synack_ts"] < 0) & (s["rst_count"][:, 1] > 0)
        state = np.full(s.shape[0], v.FLOW_OPEN, np.uint8)
        state[fin_one & ~rst_any] = v.FLOW_HALF_CLOSED
        state[fin_both & ~rst_any] = v.FLOW_CLOSED_FIN
        state[~established & ~rst_any & (s["syn_ts"] >= 0)] = v.FLOW_HANDSHAKE_ONLY
        state[rst_any] = v.FLOW_CLOSED_RST
        state[refused] = v.FLOW_REFUSED
        names, counts = np.unique(state, return_counts=True)
        for code, count in zip(names.tolist(), counts.tolist(), strict=True):
            name = v.FLOW_STATE_NAMES[code]
            self.counts.states[name] = self.counts.states.get(name, 0) + count
        if not self.keep_flows:
            return  # counted, not kept: no rows to build
        rows = np.zeros(s.shape[0], FLOW_DTYPE)
        rows["flow_id"] = s["flow_id"]
        ia = s["init_is_a"]
        rows["initiator_hi"] = np.where(ia, s["a_hi"], s["b_hi"])
        rows["initiator_lo"] = np.where(ia, s["a_lo"], s["b_lo"])
        rows["initiator_port"] = np.where(ia, s["a_port"], s["b_port"])
        rows["responder_hi"] = np.where(ia, s["b_hi"], s["a_hi"])
        rows["responder_lo"] = np.where(ia, s["b_lo"], s["a_lo"])
        rows["responder_port"] = np.where(ia, s["b_port"], s["a_port"])
        for name in ("midstream", "reused", "first_ts", "last_ts", "first_frame", "last_frame",
                     "syn_ts", "synack_ts", "hs_ack_ts", "packets", "payload_bytes",
                     "retransmissions", "fast_retransmissions", "spurious_retransmissions",
                     "out_of_order", "lost_segments", "ack_lost_segments", "duplicate_acks",
                     "zero_windows", "duplicates", "keep_alives", "wscale", "fin_ts",
                     "rst_count", "first_rst_ts"):
            rows[name] = s[name]
        seen = s["next_seq"] > NO_SEQ
        rows["seq_bytes"] = np.where(seen, np.maximum(s["next_seq"] - np.maximum(s["min_seq"], 0), 0), 0)
        rows["state"] = state
        self._flows.append(rows)


# -- helpers --------------------------------------------------------------------------------

_HOLE_DTYPE = np.dtype([("flow_id", np.int64), ("direction", np.uint8), ("start", np.int64),
                        ("end", np.int64), ("frame", np.int64)])
_PENDING_DTYPE = np.dtype([("key", np.int64),  # _range_key(flow, direction, end)
                           ("end", np.int64),
                           ("ts_ns", np.int64), ("frame", np.int64), ("retransmitted", np.bool_)])
_TSVAL_DTYPE = np.dtype([("key", np.int64),  # _compound(flow, direction, TSval)
                         ("ts_ns", np.int64), ("frame", np.int64), ("echoed", np.bool_)])
_WATCH_DTYPE = np.dtype([("flow_id", np.int64), ("direction", np.uint8), ("row", np.int64),
                         ("frame", np.int64)])


class _Columns:
    """Dense copies of a packet batch's fields, each made on first use.

    A field read straight from the packet rows (~140 bytes each) is a strided pass over the
    whole batch, many times slower than a dense one (a gather `p["seq"][order]` touches a cache
    line per row), and the flow stage reads most fields more than once.
    """

    __slots__ = ("packets", "cache")

    def __init__(self, packets: np.ndarray) -> None:
        self.packets = packets
        self.cache: dict[str, np.ndarray] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return self.packets.shape

    def __getitem__(self, name: str) -> np.ndarray:
        col = self.cache.get(name)
        if col is None:
            col = self.cache[name] = np.ascontiguousarray(self.packets[name])
        return col

    def at(self, name: str, rows: np.ndarray) -> np.ndarray:
        """One field at some rows, without copying the whole field when it is not cached."""
        col = self.cache.get(name)
        return col[rows] if col is not None else self.packets[name][rows]


# Fields the flow stage reads for (nearly) every packet: copied dense once per batch, the
# ones it computes with as int64 (never changed in place: the batch's copy is shared).
_DENSE_FIELDS = ("frame", "ts_ns", "opt_present", "tsval", "tsecr", "src_hi", "src_lo", "sport",
                 "dst_hi", "dst_lo", "dport", "ttl", "ip_version", "ip_id", "iface")
_WIDE_FIELDS = ("flags", "seq", "ack", "window", "payload_len")


class PreparedPackets(_Columns):
    """A packet batch with the flow stage's per-packet work that needs no flow state done:
    dense copies of the fields it reads, and the endpoint keys (see `prepare_packets`)."""

    __slots__ = ("endpoints", "pairs", "fingerprints")

    def __init__(self, packets: np.ndarray) -> None:
        super().__init__(packets)
        # Per packet: the flow table key of its endpoint pair, whether its source is the
        # pair's endpoint a, the pair's check word (see _endpoint_key).
        self.endpoints: tuple[np.ndarray, np.ndarray, np.ndarray] = ()
        # The batch's distinct keys (sorted), the first row of each, each row's key among them.
        self.pairs: tuple[np.ndarray, np.ndarray, np.ndarray] = ()
        # Per packet: the fingerprint capture copies are recognised by (see _fingerprint).
        self.fingerprints = np.zeros(0, np.uint64)


def prepare_packets(packets: np.ndarray) -> PreparedPackets:
    """Pure and thread-safe: the part of FlowTracker.add that depends on the packets alone, so
    a reader thread can do it for the next batch while the flow stage works on this one."""
    prepared = PreparedPackets(packets)
    if packets.shape[0]:
        for name in _DENSE_FIELDS:
            prepared[name]
        for name in _WIDE_FIELDS:
            prepared.cache[name] = packets[name].astype(np.int64)
        key, a_is_src, check = _endpoint_key(prepared)
        key = usable(key)
        prepared.endpoints = key, a_is_src, check
        prepared.pairs = _distinct(key)
        prepared.fingerprints = _fingerprint(prepared)
    return prepared


def _distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`np.unique(keys, return_index=True, return_inverse=True)` with one unstable sort: the
    first row of a key is the lowest row among its equals, whatever order the sort left them."""
    order = np.argsort(keys)
    ordered = keys.take(order)
    starts = sg.starts_of(ordered)
    first_pos = np.flatnonzero(starts)
    rank = np.cumsum(starts, dtype=np.int64)
    rank -= 1
    inverse = np.empty(keys.shape[0], np.int64)
    inverse[order] = rank
    return ordered.take(first_pos), np.minimum.reduceat(order, first_pos), inverse


class _Batch:
    def __init__(self, packets: _Columns, slot: np.ndarray, a_is_src: np.ndarray) -> None:
        self.p = packets
        self.slot = slot
        self.a_is_src = a_is_src
        self.flow_id = np.empty(0, np.int64)
        self.reuse = np.empty(0, bool)  # SYNs that start a new flow on a known 4-tuple
        self.reused_flag = np.empty(0, bool)  # SYNs Wireshark marks as reused ports
        self.flow_first: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.int64),) * 2
        self.flow_order: tuple = ()  # flow-order positions, segments, directions, non-RST mask
        self.direction = np.empty(0, np.int64)


def _fingerprint(p: _Columns, rows: np.ndarray | None = None) -> np.ndarray:
    """At `rows` (default: every row): a hash of every header field a resend would change (not
    the capture time). Fields are packed into 64-bit words first, so the hash mixes four words
    (eight with SACK blocks), not 20 fields."""
    if rows is None:
        rows = np.arange(p.shape[0])

        def u64(name: str) -> np.ndarray:
            return p[name].astype(np.uint64)
    else:
        def u64(name: str) -> np.ndarray:
            return p.at(name, rows).astype(np.uint64)

    words = [
        (u64("seq") << np.uint64(32)) | u64("ack"),
        (u64("flags") << np.uint64(48)) | (u64("window") << np.uint64(32))
        | (u64("payload_len") << np.uint64(16)) | u64("ip_id"),
        (u64("tsval") << np.uint64(32)) | u64("tsecr"),
        (u64("ttl") << np.uint64(56)) | (u64("opt_present") << np.uint64(48))
        | (u64("sack_count") << np.uint64(40)) | u64("wirelen"),
    ]
    h = _hash(*words)
    sack = p.at("sack_count", rows) > 0
    if sack.any():  # SACK blocks mixed in only where there are some
        left, right = p.at("sack_left", rows[sack]), p.at("sack_right", rows[sack])
        blocks = [(left[:, i].astype(np.uint64) << np.uint64(32)) | right[:, i]
                  for i in range(left.shape[1])]
        h[sack] = _hash(*blocks, h=h[sack])
    return h


def _last_before(mask: np.ndarray, values, start: np.ndarray, seg: np.ndarray,
                 positions: np.ndarray) -> np.ndarray:
    """At each position: `values` of the last earlier row of its segment where `mask`, else
    `start[segment]`. Costs one pass over `mask` and a search per position."""
    rows = np.flatnonzero(mask)
    k = np.searchsorted(rows, positions) - 1
    j = rows[np.maximum(k, 0)] if rows.size else np.zeros(positions.shape, np.int64)
    ok = (k >= 0) & (seg[j] == seg[positions]) if rows.size else np.zeros(positions.shape, bool)
    out = start[seg[positions]].astype(np.int64)
    if ok.any():
        out[ok] = values(j[ok])
    return out


def _last_before_rsts(specs: dict, positions: np.ndarray, starts: np.ndarray,
                     dir_f: np.ndarray, fseg: np.ndarray, n: int) -> dict:
    """For each fact of `specs` (name -> (property of rows, value at rows, carried start per
    (flow, direction))) and each direction d: at each RST's flow-order position, the value at
    the last earlier row of its flow from direction d with the property, else the carried
    start. RSTs are few, so only the rows of their flows before them are looked at (a ragged
    window per RST); when those windows add up to more than the batch, one pass per fact over
    the batch is cheaper."""
    lens = positions - starts
    total = int(lens.sum())
    seg_at = fseg[positions]
    found: dict[tuple[str, int], np.ndarray] = {}
    if total > n:
        every = np.arange(n)
        for name, (has, values, start) in specs.items():
            mask = has(every)
            for d in (0, 1):
                found[(name, d)] = _last_before(mask & (dir_f == d), values, start[:, d],
                                                fseg, positions)
        return found
    owner_first = np.cumsum(lens) - lens
    owner = np.repeat(np.arange(positions.size), lens)
    rows = starts[owner] + (np.arange(total) - owner_first[owner])
    nonempty = lens > 0
    dir_w = dir_f[rows]
    index = np.arange(total)
    for name, (has, values, start) in specs.items():
        mask = has(rows)
        for d in (0, 1):
            last = np.full(positions.size, -1, np.int64)
            if total:
                candidate = np.where(mask & (dir_w == d), index, -1)
                last[nonempty] = np.maximum.reduceat(candidate, owner_first[nonempty])
            out = start[seg_at, d].astype(np.int64)
            ok = last >= 0
            if ok.any():
                out[ok] = values(rows[last[ok]])
            found[(name, d)] = out
    return found


def _first_frame_of(dense: np.ndarray, rows: np.ndarray, frame: np.ndarray, nf: int,
                    none: int) -> np.ndarray:
    """Per dense flow, the first frame among `rows` (increasing row indices; `none` if none).
    Rows are in capture order, so writing them in reverse leaves each flow's first."""
    first = np.full(nf, none, np.int64)
    rows = rows[::-1]
    first[dense[rows]] = frame[rows]
    return first


def _find(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each query in a sorted array, and whether it is there."""
    if sorted_keys.shape[0] == 0:
        return np.zeros(queries.shape[0], np.int64), np.zeros(queries.shape[0], bool)
    pos = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.shape[0] - 1)
    return pos, sorted_keys[pos] == queries


def _take_rows_as_items(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`table[rows]` for a structured table, moving whole rows as opaque items (numpy moves a
    structured row field by field otherwise, ~8x slower)."""
    item = np.dtype((np.void, table.dtype.itemsize))
    return np.ascontiguousarray(table).view(item)[rows].view(table.dtype)


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    """A new table of the parts' rows; structured rows move as opaque items (numpy copies a
    structured array field by field, ~4x slower)."""
    dtype = np.dtype(dtype)
    if not parts:
        return np.zeros(0, dtype)
    if dtype.names is None:
        return np.concatenate(parts)
    item = np.dtype((np.void, dtype.itemsize))
    return np.concatenate([np.ascontiguousarray(part).view(item) for part in parts]).view(dtype)


def _scale(window: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return np.where(shift >= 0, window << np.maximum(shift, 0), window)


def _set_fd(state: np.ndarray, name: str, mask: np.ndarray, values: np.ndarray) -> None:
    """Assign per-(flow, direction) values where `mask`, for a (nf, 2) state field."""
    flat = state[name].reshape(-1).copy()
    flat[mask] = np.asarray(values)[mask] if np.ndim(values) else values
    state[name] = flat.reshape(state[name].shape)


def _range_key(flow: np.ndarray, direction: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Sortable key for (flow, direction, unwrapped sequence); sequences clipped to +-2**39."""
    bounded = np.clip(seq, -(2**39), 2**39 - 1) + 2**39
    return (((flow.astype(np.int64) << 1) | direction.astype(np.int64)) << 40) | bounded


def _range_key_parts(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flow, direction) of _range_key values."""
    return key >> np.int64(41), (key >> np.int64(40)) & 1


def _seg_key(seg: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Sortable key for (segment number < 2**21, value clipped to +-2**41)."""
    bounded = np.clip(value, -(2**41), 2**41 - 1) + 2**41
    return (seg.astype(np.int64) << 42) | bounded


def _compound(flow: np.ndarray, direction: np.ndarray, value: np.ndarray) -> np.ndarray:
    """One sortable int key for (flow, direction, 32-bit value)."""
    return (flow.astype(np.int64) << 33) | (direction.astype(np.int64) << 32) | value.astype(np.int64)


def _present(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether each of `ids` is among `sorted_ids` (distinct, sorted): a mark table over the
    ids' range when it is small (flow ids are numbered densely), else binary searches."""
    lo = int(min(sorted_ids[0], ids.min()))
    span = int(max(sorted_ids[-1], ids.max())) - lo + 1
    if span > 4 * (ids.size + sorted_ids.size):
        return _find(sorted_ids, ids)[1]
    mark = np.zeros(span, bool)
    mark[sorted_ids - lo] = True
    return mark[ids - lo]


def _after_last_echo(echoed: np.ndarray, frame: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rows to keep of a table sorted by `keys`: per (flow, direction), drop the TSvals sent
    before the last one echoed."""
    if keys.size == 0:
        return np.ones(0, bool)
    group = keys >> np.int64(32)  # (flow, direction), contiguous in key order
    firsts = np.flatnonzero(sg.starts_of(group))
    last_echo = np.maximum.reduceat(np.where(echoed, frame, 0), firsts)
    return frame >= np.repeat(last_echo, np.diff(np.append(firsts, keys.size)))


def _later_from_sender(b: _Batch, rst_rows: np.ndarray) -> np.ndarray:
    """For RST rows (flow-direction order): does the same sender send a non-RST packet later in
    this batch? One search per RST in the flow-ordered rows of its direction."""
    fo_pos, fseg, dir_f, nonrst_f = b.flow_order
    positions = fo_pos[rst_rows]
    out = np.zeros(rst_rows.shape[0], bool)
    for d in (0, 1):
        rows = np.flatnonzero(nonrst_f & (dir_f == d))
        mine = dir_f[positions] == d
        if not rows.size or not mine.any():
            continue
        k = np.searchsorted(rows, positions[mine], "right")
        nxt = rows[np.minimum(k, rows.size - 1)]
        out[mine] = (k < rows.size) & (fseg[nxt] == fseg[positions[mine]])
    return out

"""Per-flow timing facts that the flow stage's tables do not carry (pure, stateful per batch).

Rules: fed, batch by batch in capture order, the packet batch and the flow stage's segment rows
for it (frame, flow id, direction, analysis flags); keeps one row per flow id (ids are dense,
so the table is an array indexed by id) and a per-address TTL histogram. Capture duplicates
are left out. Nothing here loops over packets: every update is a sort and a few segmented
reductions per batch.

Facts kept per flow (TIMELINE_DTYPE):
- the first close (FIN or RST from either side): time, frame, direction;
- the *quiet before the close*: the last silence of at least QUIET_MIN_NS (no packet either
  way) that ended at or before the first close, with the packet that ended it. A timeout
  HAProxy enforces shows as a silence as long as the timeout, ended by HAProxy's own packet
  (its 408/504, FIN or RST); a close after a complete exchange has no such silence just before;
- first and last payload time per direction, first FIN frame per direction;
- *turns*: each time the payload changes direction (a request after a response, a response
  after a request), the time and direction of the first payload packet of the new run. A
  proxied exchange shows up as turns on both legs a fraction of a millisecond apart (HAProxy
  connects right after a request's turn, and forwards a server's response turn to its client
  at once); the leg join (tracer.attribution.join) matches them. Retransmitted payload does
  not start a turn. Memory: one row per request or response, not per packet.

Per flow and direction, the TTL / hop limit of the latest non-RST packet; over the flows of
an address, that gives the sender's baseline against which an RST's TTL is compared when the RST's own flow has no packet of the
sender to compare with (a middlebox forging that address sits at another distance, so its
RSTs arrive with another TTL); only addresses that keep one TTL have a baseline.
"""

from __future__ import annotations

import numpy as np

from tracer.flows import vocab as fv
from tracer.flows.segments import stable_argsort
from tracer.packet import TH_FIN, TH_RST

# HAProxy timeouts are whole milliseconds and in practice 100 ms or more; shorter silences are
# round trips and think time, not timeouts.
QUIET_MIN_NS = 100_000_000
# An address is a TTL baseline when this share of its packets carry its most common TTL (one
# host's kernel uses one initial TTL; a route change or a shared NAT address does not).
TTL_CONSISTENT_SHARE = 0.95
BASELINE_MIN_FLOWS = 2  # one other flow is no baseline: it may be another host behind NAT

TIMELINE_DTYPE = np.dtype(
    [
        ("seen", np.bool_),
        ("last_ts", np.int64),
        ("first_close_ts", np.int64), ("first_close_frame", np.int64),
        ("first_close_dir", np.int8),
        ("quiet_ns", np.int64),  # 0: no silence >= QUIET_MIN_NS before the first close
        ("quiet_end_ts", np.int64), ("quiet_end_frame", np.int64), ("quiet_end_dir", np.int8),
        ("first_data_ts", np.int64, (2,)), ("last_data_ts", np.int64, (2,)),
        ("fin_frame", np.int64, (2,)),
        ("last_data_dir", np.int8),  # direction of the latest payload (-1: none yet)
        ("ttl", np.int16, (2,)),  # TTL / hop limit of the latest non-RST packet per direction
    ]
)


TURN_DTYPE = np.dtype([("flow_id", np.int64), ("ts_ns", np.int64), ("direction", np.int8)])


def blank_timeline(n: int) -> np.ndarray:
    t = np.zeros(n, TIMELINE_DTYPE)
    for name in ("last_ts", "first_close_ts", "quiet_end_ts", "first_data_ts", "last_data_ts"):
        t[name] = -1
    t["first_close_dir"] = -1
    t["quiet_end_dir"] = -1
    t["last_data_dir"] = -1
    t["ttl"] = -1
    return t


def address_key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A 56-bit hash of an address (both halves), shifted left by 8 bits so that a TTL fits in
    the low byte: one uint64 per (address, ttl), sortable at integer speed."""
    h = hi.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= lo.astype(np.uint64)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    return h & ~np.uint64(0xFF)


class Timeline:
    def __init__(self) -> None:
        self.rows = blank_timeline(1024)
        self._turns: list[np.ndarray] = []  # per batch: TURN_DTYPE rows

    def add(self, seg: np.ndarray, pk: np.ndarray) -> None:
        """One batch: segment rows without capture duplicates and their packets, row for row
        (tracer.flows.tables.segments_with_packets)."""
        if seg.shape[0] == 0:
            return
        flow = seg["flow_id"]
        need = int(flow.max()) + 1
        if need > self.rows.shape[0]:
            grow = max(need, 2 * self.rows.shape[0])
            self.rows = np.concatenate((self.rows, blank_timeline(grow - self.rows.shape[0])))
        o = stable_argsort(flow)  # segment rows come in frame order
        flow, frame = flow[o], seg["frame"][o]
        direction = seg["direction"][o].astype(np.int8)
        ts = pk["ts_ns"][o]
        tcp = pk["flags"][o]
        payload = pk["payload_len"][o]
        n = flow.shape[0]
        start = np.ones(n, bool)
        start[1:] = flow[1:] != flow[:-1]
        group = np.cumsum(start) - 1
        firsts = np.flatnonzero(start)
        uniq = flow[firsts]
        st = self.rows
        prev = np.empty(n, np.int64)
        prev[1:] = ts[:-1]
        prev[firsts] = st["last_ts"][uniq]
        gap = np.where(prev >= 0, ts - prev, 0)
        # rows up to and including each flow's first close, unless it closed in an earlier batch
        is_close = (tcp & (TH_FIN | TH_RST)) != 0
        closes = np.cumsum(is_close)
        closes_before = closes - is_close - (closes - is_close)[firsts][group]
        open_before = st["first_close_ts"][uniq][group] < 0
        upto_close = open_before & (closes_before == 0)
        long_gap = upto_close & (gap >= QUIET_MIN_NS)
        rows = _last_per_group(long_gap, group)
        f = flow[rows]
        st["quiet_ns"][f] = gap[rows]
        st["quiet_end_ts"][f] = ts[rows]
        st["quiet_end_frame"][f] = frame[rows]
        st["quiet_end_dir"][f] = direction[rows]
        first_close = upto_close & is_close
        rows = _first_per_group(first_close, group)
        f = flow[rows]
        st["first_close_ts"][f] = ts[rows]
        st["first_close_frame"][f] = frame[rows]
        st["first_close_dir"][f] = direction[rows]
        ttl = pk["ttl"][o]
        not_rst = (tcp & TH_RST) == 0
        for d in (0, 1):
            rows = _last_per_group(not_rst & (direction == d), group)
            st["ttl"][flow[rows], d] = ttl[rows]
            data = (payload > 0) & (direction == d)
            rows = _first_per_group(data, group)
            f = flow[rows]
            fresh = st["first_data_ts"][f, d] < 0
            st["first_data_ts"][f[fresh], d] = ts[rows[fresh]]
            rows = _last_per_group(data, group)
            st["last_data_ts"][flow[rows], d] = ts[rows]
            fin = ((tcp & TH_FIN) != 0) & (direction == d)
            rows = _first_per_group(fin, group)
            f = flow[rows]
            fresh = st["fin_frame"][f, d] == 0
            st["fin_frame"][f[fresh], d] = frame[rows[fresh]]
        # turns: payload (not retransmitted) whose previous payload in the flow went the other way
        fresh_data = (payload > 0) & ((seg["flags"][o] & fv.A_RETRANSMISSION) == 0)
        idx = np.flatnonzero(fresh_data)
        if idx.size:
            prev_dir = np.empty(idx.size, np.int8)
            prev_dir[1:] = direction[idx[:-1]]
            new_flow = np.ones(idx.size, bool)
            new_flow[1:] = flow[idx[1:]] != flow[idx[:-1]]
            prev_dir[new_flow] = st["last_data_dir"][flow[idx[new_flow]]]
            turn = idx[prev_dir != direction[idx]]
            if turn.size:
                rows_t = np.zeros(turn.size, TURN_DTYPE)
                rows_t["flow_id"] = flow[turn]
                rows_t["ts_ns"] = ts[turn]
                rows_t["direction"] = direction[turn]
                self._turns.append(rows_t)
            last_of_flow = np.ones(idx.size, bool)
            last_of_flow[:-1] = flow[idx[1:]] != flow[idx[:-1]]
            st["last_data_dir"][flow[idx[last_of_flow]]] = direction[idx[last_of_flow]]
        last = np.append(firsts[1:], n) - 1
        st["last_ts"][uniq] = ts[last]
        st["seen"][uniq] = True

    def table(self, max_flow_id: int) -> np.ndarray:
        """Rows for flow ids 0..max_flow_id (blank where a flow left no segment)."""
        n = max_flow_id + 1
        if n <= self.rows.shape[0]:
            return self.rows[:n]
        return np.concatenate((self.rows, blank_timeline(n - self.rows.shape[0])))

    def turns(self) -> np.ndarray:
        """Every turn kept so far (TURN_DTYPE), in capture order within each flow."""
        if not self._turns:
            return np.zeros(0, TURN_DTYPE)
        if len(self._turns) > 1:
            self._turns = [np.concatenate(self._turns)]
        return self._turns[0]

    @property
    def turn_rows(self) -> int:
        return sum(part.shape[0] for part in self._turns)

    def prune_turns(self, query_ts: np.ndarray, horizon_ns: int) -> int:
        """Forget the turns the leg join can no longer ask about (`needed_turns`): the join
        asks, per flow and direction, for the turns around each flow's start and first
        response (`query_ts`), and flows not seen yet start after `horizon_ns`. Keep-alive
        traffic makes a turn per request and per response, so without this the turns grow with
        the capture. Returns how many turns are kept."""
        turns = self.turns()
        if turns.shape[0] == 0:
            return 0
        keep = needed_turns(turns, query_ts, horizon_ns)
        if not keep.all():
            self._turns = [turns[keep]]
        return int(np.count_nonzero(keep))


def ttl_baseline(flows: np.ndarray, timeline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per address (as `address_key`, sorted): the TTL its flows carry, for the addresses that
    keep one (TTL_CONSISTENT_SHARE of their flows, at least BASELINE_MIN_FLOWS of them). An
    address several hosts share (NAT, a client population behind one gateway) carries their
    different initial TTLs: it has no baseline, and an RST from it is compared with its own
    flow's packets only. `timeline` is aligned with `flows`."""
    keys, ttls = [], []
    for d, side in ((0, "initiator"), (1, "responder")):
        seen = timeline["ttl"][:, d] >= 0
        keys.append(address_key(flows[f"{side}_hi"][seen], flows[f"{side}_lo"][seen]))
        ttls.append(timeline["ttl"][seen, d].astype(np.uint64))
    k = np.concatenate(keys) | np.concatenate(ttls)
    if k.shape[0] == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int16)
    k, c = np.unique(k, return_counts=True)  # flows per (address, ttl)
    addr = k & ~np.uint64(0xFF)
    addr_start = np.ones(k.shape[0], bool)
    addr_start[1:] = addr[1:] != addr[:-1]
    group = np.cumsum(addr_start) - 1
    total = np.bincount(group, weights=c)
    best = np.lexsort((-c, group))
    first = np.ones(best.shape[0], bool)
    first[1:] = group[best][1:] != group[best][:-1]
    chosen = best[first]
    consistent = (c[chosen] >= BASELINE_MIN_FLOWS) & (c[chosen] >= TTL_CONSISTENT_SHARE * total)
    chosen = chosen[consistent]
    return addr[chosen], (k[chosen] & np.uint64(0xFF)).astype(np.int16)


def _first_per_group(mask: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Row index of the first True per group (rows are grouped contiguously)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return idx
    keep = np.ones(idx.size, bool)
    keep[1:] = group[idx[1:]] != group[idx[:-1]]
    return idx[keep]


def _last_per_group(mask: np.ndarray, group: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return idx
    keep = np.ones(idx.size, bool)
    keep[:-1] = group[idx[:-1]] != group[idx[1:]]
    return idx[keep]


_NEVER = np.iinfo(np.int64).max


def needed_turns(turns: np.ndarray, query_ts: np.ndarray, horizon_ns: int) -> np.ndarray:
    """Which turns (TURN_DTYPE rows) can answer the leg join's questions, per (flow,
    direction): the latest turn at or before t, and the first at or after t, for t in
    `query_ts` (negative: none) or any t >= `horizon_ns`. A turn answers the first question for
    t in [its time, the next turn's time), the second for t in (the previous turn's time, its
    time]; it is needed when such an interval holds a time asked about. Answers are times, so
    of turns at the same time one is enough."""
    n = turns.shape[0]
    group = turns["flow_id"].astype(np.int64) * 2 + turns["direction"].astype(np.int64)
    order = np.lexsort((turns["ts_ns"], group))
    g, t = group[order], turns["ts_ns"][order]
    same = g[1:] == g[:-1]
    later = np.full(n, _NEVER, np.int64)
    later[:-1] = np.where(same, t[1:], _NEVER)
    earlier = np.full(n, -_NEVER, np.int64)
    earlier[1:] = np.where(same, t[:-1], -_NEVER)
    q = np.sort(query_ts[query_ts >= 0])
    keep = (later > horizon_ns) | (t >= horizon_ns)
    keep |= np.searchsorted(q, later, "left") > np.searchsorted(q, t, "left")
    keep |= np.searchsorted(q, t, "right") > np.searchsorted(q, earlier, "right")
    out = np.empty(n, bool)
    out[order] = keep
    return out

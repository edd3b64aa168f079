"""One row of facts per flow, joined from the flow table, the attribution, the timeline and
the per-segment facts (pure, vectorized).

Rules: rows are aligned with `Attribution.flows` (sorted by flow id) so that attribution's
per-flow arrays (roles, join) index them directly. Loss is localized against the capture
point, per direction of a flow (the sender's side):
- `lost_before`: gaps the sender resent (the segment never reached the capture point);
- `missed`: gaps the receiver acknowledged without a resend (it arrived; the capture missed it);
- `lost_after`: retransmissions of data the capture had seen, minus spurious ones and the
  resends that filled gaps: the segment passed the capture point and was lost beyond it.
  (A sender may resend a gap more than once; such extra resends count here too, so this is an
  upper bound, exact when each loss is resent once.)
"""

from __future__ import annotations

import numpy as np

from tracer.attribution import Attribution
from tracer.attribution import vocab as av
from tracer.flows import vocab as fv
from tracer.flows.tables import (
    RTT_KIND_DATA,
    RTT_KIND_HANDSHAKE_INITIATOR,
    RTT_KIND_HANDSHAKE_RESPONDER,
)
from tracer.patterns.events import SegmentFacts

TCP_SYN, TCP_ACK = 0x02, 0x10

FLOWFACT_DTYPE = np.dtype([
    ("flow_id", np.int64),
    ("leg", np.uint8), ("frontend", np.int32), ("server", np.int32), ("check", np.bool_),
    ("peer", np.int64),  # backend flow: the frontend flow row it served (-1)
    ("backends", np.int32),  # frontend flow: server connections joined to it
    ("state", np.uint8),
    ("first_ts", np.int64), ("last_ts", np.int64), ("first_frame", np.int64),
    ("duration_ns", np.int64),
    ("data_segments", np.int64, (2,)),
    ("retransmissions", np.int64, (2,)), ("spurious", np.int64, (2,)),
    ("lost_before", np.int64, (2,)), ("lost_after", np.int64, (2,)), ("missed", np.int64, (2,)),
    ("zero_windows", np.int64, (2,)),
    ("syn_retries", np.int64),  # SYNs resent by the initiator
    ("unanswered_syn", np.bool_),  # no SYN/ACK ever came
    ("hs_rtt_responder_ns", np.int64), ("hs_rtt_initiator_ns", np.int64),  # -1: none
    ("data_rtt_p50_ns", np.int64, (2,)),  # per side (0 initiator, 1 responder); -1: none
    ("rsts_fault", np.int32), ("rsts_routine", np.int32),
    ("first_close_dir", np.int8), ("quiet_ns", np.int64), ("quiet_end_dir", np.int8),
    ("quiet_end_frame", np.int64), ("first_close_frame", np.int64),
    ("client_data", np.bool_), ("server_data", np.bool_),  # initiator / responder sent payload
])


def flow_facts(a: Attribution, rtts: np.ndarray, timeline: np.ndarray, facts: SegmentFacts) -> np.ndarray:
    """`timeline` is the timeline table indexed by flow id (tracer.attribution.timeline)."""
    flows = a.flows
    n = flows.shape[0]
    out = np.zeros(n, FLOWFACT_DTYPE)
    if n == 0:
        return out
    ids = flows["flow_id"]
    out["flow_id"] = ids
    out["leg"] = a.roles.leg
    out["frontend"] = a.roles.frontend
    out["server"] = a.roles.server
    out["check"] = a.roles.check
    out["peer"] = a.join.front_of
    served = a.join.front_of[a.join.front_of >= 0]
    out["backends"] = np.bincount(served, minlength=n)[:n]
    out["state"] = flows["state"]
    for name in ("first_ts", "last_ts", "first_frame"):
        out[name] = flows[name]
    out["duration_ns"] = flows["last_ts"] - flows["first_ts"]
    row_of = _row_lookup(ids)

    fid, _, direction, count = facts.data_segments()
    rows = row_of(fid)
    ok = rows >= 0
    np.add.at(out["data_segments"], (rows[ok], direction[ok].astype(np.int64)), count[ok])

    retrans = flows["retransmissions"]
    spurious = flows["spurious_retransmissions"]
    gaps = flows["lost_segments"]
    missed = np.minimum(flows["ack_lost_segments"], gaps)
    lost_before = gaps - missed
    out["retransmissions"] = retrans
    out["spurious"] = spurious
    out["missed"] = missed
    out["lost_before"] = lost_before
    out["zero_windows"] = flows["zero_windows"]

    ev = facts.events
    syn_retry = ((ev["tcp_flags"] & (TCP_SYN | TCP_ACK)) == TCP_SYN) & (
        (ev["flags"] & fv.A_RETRANSMISSION) != 0)
    rows = row_of(ev["flow_id"][syn_retry])
    np.add.at(out["syn_retries"], rows[rows >= 0], 1)
    # A resent SYN is a connection attempt waiting (a full accept queue drops SYNs), not data
    # loss: it is counted as a SYN retry and left out of the loss figures.
    handshake_resends = np.zeros_like(retrans)
    handshake_resends[:, 0] = out["syn_retries"]
    out["lost_after"] = np.maximum(retrans - spurious - lost_before - handshake_resends, 0)
    out["unanswered_syn"] = (flows["syn_ts"] >= 0) & (flows["synack_ts"] < 0) & (
        flows["state"] == fv.FLOW_HANDSHAKE_ONLY)

    out["hs_rtt_responder_ns"] = -1
    out["hs_rtt_initiator_ns"] = -1
    out["data_rtt_p50_ns"] = -1
    rows = row_of(rtts["flow_id"])
    for kind, name in ((RTT_KIND_HANDSHAKE_RESPONDER, "hs_rtt_responder_ns"),
                       (RTT_KIND_HANDSHAKE_INITIATOR, "hs_rtt_initiator_ns")):
        sel = (rtts["kind"] == kind) & (rows >= 0)
        out[name][rows[sel]] = rtts["rtt_ns"][sel]
    for side in (0, 1):
        sel = (rtts["kind"] == RTT_KIND_DATA) & (rtts["side"] == side) & (rows >= 0)
        r, v = rows[sel], rtts["rtt_ns"][sel]
        if r.size:
            o = np.lexsort((v, r))
            r, v = r[o], v[o]
            starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
            ends = np.r_[starts[1:], r.size]
            out["data_rtt_p50_ns"][r[starts], side] = v[(starts + ends - 1) // 2]

    t = a.result.table
    if t.shape[0]:
        fault = ~t["routine"]
        out["rsts_fault"] = np.bincount(t["flow_row"][fault], minlength=n)[:n]
        out["rsts_routine"] = np.bincount(t["flow_row"][~fault], minlength=n)[:n]

    tl = timeline[ids] if timeline.shape[0] > int(ids.max()) else _pad(timeline, int(ids.max()) + 1)[ids]
    out["first_close_dir"] = tl["first_close_dir"]
    out["quiet_ns"] = tl["quiet_ns"]
    out["quiet_end_dir"] = tl["quiet_end_dir"]
    out["quiet_end_frame"] = tl["quiet_end_frame"]
    out["first_close_frame"] = tl["first_close_frame"]
    out["client_data"] = tl["first_data_ts"][:, 0] >= 0
    out["server_data"] = tl["first_data_ts"][:, 1] >= 0
    return out


def _pad(timeline: np.ndarray, n: int) -> np.ndarray:
    from tracer.attribution.timeline import blank_timeline

    return np.concatenate((timeline, blank_timeline(n - timeline.shape[0])))


def _row_lookup(sorted_ids: np.ndarray):
    """flow id -> row in a table sorted by flow id (-1 where absent)."""
    def lookup(query: np.ndarray) -> np.ndarray:
        query = np.asarray(query, np.int64)
        pos = np.searchsorted(sorted_ids, query)
        pos = np.minimum(pos, sorted_ids.shape[0] - 1)
        return np.where(sorted_ids[pos] == query, pos, -1)
    return lookup


def is_frontend(ff: np.ndarray) -> np.ndarray:
    return ff["leg"] == av.LEG_FRONTEND


def is_backend(ff: np.ndarray) -> np.ndarray:
    return ff["leg"] == av.LEG_BACKEND

# Deterministic generator of large, realistic Ethernet/TCP captures for the decode benchmarks.
#
# Rules:
# - Same arguments (seed included) -> byte-identical file. The chunk size is not part of the
#   content; the numpy version may be (its random streams and float functions).
# - No per-packet Python loop: flows are planned as arrays, expanded into packet rows by index
#   arithmetic, and each chunk of rows is rendered into one byte buffer by scattered writes.
# - Memory is bounded by the chunk size and the number of concurrent flows, never by file size.
# - The traffic is what tshark dissects without complaint: complete handshakes with options,
#   exact seq/ack progression, and analysis flags only where we put them (retransmissions).
#
# Theory of operation:
#   Flows get consecutive ids g and start at a steady rate, one every `flow_interval_ns`, so that
#   `concurrency` flows are open at any time. Flows whose ids fall before `prestart_flows` start
#   before the capture does (warm start): the capture opens in the middle of ~`concurrency`
#   conversations, as a real one does, and the open-flow count is flat from the first packet.
#   Identity attributes (addresses, ports, VLANs, MSS, TTL ...) are pure hashes of (seed, g), so
#   the renderer recomputes them per packet instead of carrying them; conversation structure
#   (exchanges, sizes, RTT, close kind) is drawn from a generator seeded by (seed, block).
#   Flows are planned in blocks of ids; a block's packets are merged with the packets still
#   pending from earlier blocks, sorted by time, and everything earlier than the next block's
#   first start time is final and written out. The rest is carried to the next block.
#
#   One flow: SYN, SYN/ACK, ACK; then exchanges (a request segment, a response of full-size
#   segments sent in bursts of 32 per RTT, a pure ACK every two segments); then a close: FIN
#   from either side, an RST from either side, or nothing for a refused SYN (answered RST/ACK).
#   Retransmissions are tail losses the sender repairs after its retransmission timeout
#   (>= 200 ms + RTT) and before any ACK covers them, so tshark calls them plain retransmissions.
#   The capture point is on the server (the HAProxy host): server packets are seen as sent,
#   client packets as they arrive.

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracer.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN

# Bump when the same arguments start producing different bytes (benchmarks cache by it).
GENERATOR_VERSION = 2
EPOCH_NS = 1_704_067_200 * 1_000_000_000  # 2024-01-01T00:00:00Z: the capture's first instant
LINKTYPE_ETHERNET = 1
MS = 1_000_000
BLOCK_PACKETS = 200_000  # flows are planned in blocks expected to hold about this many packets
U32 = 0xFFFF_FFFF

# Close kinds and their shares of flows.
FIN_CLIENT, FIN_SERVER, RST_CLIENT, RST_SERVER, REFUSED = range(5)
KIND_SHARES = np.array([0.44, 0.36, 0.07, 0.09, 0.04])
CLOSE_PACKETS = np.array([3, 3, 1, 1, 0])
BARE_RST_SHARE = 0.25  # RST closes sent without ACK (seq only)

MEAN_EXCHANGES = 1.5  # requests per connection (geometric, >= 1)
MAX_EXCHANGES = 40
REQUEST_BYTES = (60, 1000)  # one segment, uniform
RESPONSE_SIGMA = 1.0  # log-normal spread of response sizes in segments
MAX_RESPONSE_SEGMENTS = 400
BURST_SEGMENTS = 32  # in flight per RTT: 46 kB, below every receive window we announce
LAST_SEGMENT_MIN = 16  # a 1-byte retransmission would be read as a keep-alive by tshark
RETX_REQUEST_SHARE = 0.003
RETX_TAIL_SHARE = 0.01
RTO_MIN_NS = 200 * MS  # Linux TCP_RTO_MIN
RTT_NS = (200_000, 80 * MS)  # log-uniform per flow
SERVER_DELAY_NS = (20_000, 80_000)  # kernel turnaround for SYN/ACK, FIN/ACK, pure ACK
SERVICE_NS = (50_000, 20 * MS)  # server think time before a response, log-uniform
SEGMENT_GAP_NS = 12_000  # 1500 bytes at 1 Gbit/s
MIN_THINK_NS = 1 * MS
DURATION_SPREAD = (0.3, 1.7)  # flow lifetime as a multiple of the mean

IPV6_SHARE = 20  # percent of flows
VLAN_SHARE, QINQ_SHARE = 13, 2  # percent of flows with one 802.1Q tag, with 802.1ad + 802.1Q
TIMESTAMPS_SHARE = 90  # percent of flows negotiating RFC 7323 timestamps (the rest: Windows-like)
# Linux's ephemeral range 32768..60999: ids g and g+28232 share a port, never a client address
CLIENT_PORT_BASE, CLIENT_PORTS = 32768, 28232
SERVER_PORTS = np.array([443, 443, 443, 443, 443, 80, 80, 80, 8080, 8080])

# TCP option layouts (RFC 9293, RFC 7323, RFC 2018), by template id.
OPT_NONE, OPT_SYN_LINUX, OPT_TS, OPT_SYN_WINDOWS = range(4)
OPT_LEN = np.array([0, 20, 12, 12])

PKT_DTYPE = np.dtype(
    [
        ("t", np.int64),  # ns since capture start
        ("flow", np.int64),  # flow id g
        ("ord", np.uint32),  # position within the flow, breaks time ties
        ("dir", np.uint8),  # 0 client -> server, 1 server -> client
        ("flags", np.uint16),
        ("seq", np.uint32),
        ("ack", np.uint32),
        ("plen", np.uint32),
        ("opt", np.uint8),
        ("tsval", np.uint32),
        ("tsecr", np.uint32),
        ("win", np.uint16),
        ("ip_id", np.uint16),
        ("retx", np.bool_),
    ]
)


# ---------------------------------------------------------------- identity by hashing (seed, g)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a bijective scramble of uint64 values."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, flow: np.ndarray, salt: int) -> np.ndarray:
    key = (seed * 0x100000001B3 + salt * 0xD6E8FEB86659FD93) & 0xFFFF_FFFF_FFFF_FFFF
    return _mix64(flow.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key))


def _pick(seed: int, flow: np.ndarray, salt: int, n: int) -> np.ndarray:
    return (_hash(seed, flow, salt) % np.uint64(n)).astype(np.int64)


def flow_identity(seed: int, flow: np.ndarray) -> dict[str, np.ndarray]:
    """Everything about a flow that does not change during it, as arrays aligned with `flow`."""
    v6 = _pick(seed, flow, 1, 100) < IPV6_SHARE
    tag_roll = _pick(seed, flow, 2, 100)
    ntags = np.where(tag_roll < VLAN_SHARE, 1, np.where(tag_roll < VLAN_SHARE + QINQ_SHARE, 2, 0))
    has_ts = _pick(seed, flow, 3, 100) < TIMESTAMPS_SHARE
    port_slot = flow % CLIENT_PORTS
    client_idx = ((flow // CLIENT_PORTS) * 0x9E3779B1 + _pick(seed, port_slot, 4, 1 << 20)) & (
        (1 << 20) - 1
    )
    mss_cut = np.array([0, 0, 0, 0, 0, 0, 0, 8, 60, 80])[_pick(seed, flow, 5, 10)]
    mss_base = np.where(v6, 1440, 1460)
    windows_like = ~has_ts
    ws_c = np.array([7, 7, 7, 8, 8, 9, 10, 6])[_pick(seed, flow, 16, 8)]
    return {
        "v6": v6,
        "ntags": ntags,
        "vid_outer": 100 + 10 * _pick(seed, flow, 6, 8),
        "vid_inner": 1000 + _pick(seed, flow, 7, 64),
        "has_ts": has_ts,
        "client_idx": client_idx,
        "cport": CLIENT_PORT_BASE + port_slot,
        "server_idx": _pick(seed, flow, 8, 8),
        "sport": SERVER_PORTS[_pick(seed, flow, 9, len(SERVER_PORTS))],
        "router_idx": _pick(seed, flow, 10, 3),
        "ttl_c": np.where(windows_like, 128, 64) - 1 - _pick(seed, flow, 11, 14),
        "ttl_s": np.full(flow.shape, 64),
        "label_c": _pick(seed, flow, 12, 1 << 20),
        "label_s": _pick(seed, flow, 13, 1 << 20),
        "ipid_c": _pick(seed, flow, 14, 1 << 16),
        "ipid_s": _pick(seed, flow, 15, 1 << 16),
        "mss_c": mss_base - mss_cut,
        "mss_s": mss_base,
        "ws_c": ws_c,
        "ws_s": np.full(flow.shape, 7),
        # scaled receive windows stay above the 46 kB a burst puts in flight
        "win_c": (96 * 1024 >> ws_c) + _pick(seed, flow, 17, 1500),
        "win_s": 509 + _pick(seed, flow, 18, 1500),
        "synwin_c": np.where(windows_like, 65535, 64240),
        "synwin_s": np.where(v6, 64800, 65160),
    }


# ---------------------------------------------------------------- conversation plans


@dataclass
class Shape:
    """Traffic shape fixed once per run (after calibration)."""

    response_segments: float  # mean response size in segments, calibrated to --avg-payload
    packets_per_flow: float
    payload_per_packet: float  # the --avg-payload target the calibration met
    concurrency: int
    flow_interval_ns: int
    mean_duration_ns: int
    prestart_flows: int


@dataclass
class Plan:
    """A block of flows: per-flow arrays (length n) and per-exchange arrays (length X)."""

    flow: np.ndarray
    kind: np.ndarray
    n_exch: np.ndarray
    t0: np.ndarray
    rtt: np.ndarray
    srv_delay: np.ndarray
    duration: np.ndarray
    isn_c: np.ndarray
    isn_s: np.ndarray
    tsbase_c: np.ndarray
    tsbase_s: np.ndarray
    rst_bare: np.ndarray
    close_w: np.ndarray
    ex_flow: np.ndarray  # index into the per-flow arrays
    req_len: np.ndarray
    segs: np.ndarray
    seg_len: np.ndarray  # full-size server segment payload for the flow
    last_len: np.ndarray
    retx_req: np.ndarray
    retx_tail: np.ndarray
    service: np.ndarray
    think_w: np.ndarray


def _log_uniform(rng: np.random.Generator, bounds: tuple[int, int], n: int) -> np.ndarray:
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    return np.exp(rng.uniform(lo, hi, n)).astype(np.int64)


def plan_flows(
    rng: np.random.Generator,
    seed: int,
    flow: np.ndarray,
    response_segments: float,
    t0: np.ndarray,
    mean_duration_ns: int,
) -> Plan:
    n = len(flow)
    ident = flow_identity(seed, flow)
    kind = rng.choice(len(KIND_SHARES), size=n, p=KIND_SHARES)
    n_exch = np.minimum(rng.geometric(1 / MEAN_EXCHANGES, n), MAX_EXCHANGES)
    n_exch[kind == REFUSED] = 0
    ex_flow = np.repeat(np.arange(n), n_exch)
    x = len(ex_flow)
    # the server's full segments carry the client's MSS less the timestamp option
    seg_len = (ident["mss_c"] - 12 * ident["has_ts"])[ex_flow]
    z = rng.standard_normal(x)
    mean_shift = np.exp(RESPONSE_SIGMA * z - RESPONSE_SIGMA**2 / 2)
    segs = np.clip(np.rint(response_segments * mean_shift), 1, MAX_RESPONSE_SEGMENTS)
    return Plan(
        flow=flow,
        kind=kind,
        n_exch=n_exch,
        t0=t0,
        rtt=_log_uniform(rng, RTT_NS, n),
        srv_delay=rng.integers(*SERVER_DELAY_NS, n),
        duration=(rng.uniform(*DURATION_SPREAD, n) * mean_duration_ns).astype(np.int64),
        isn_c=rng.integers(0, 1 << 32, n),
        isn_s=rng.integers(0, 1 << 32, n),
        tsbase_c=rng.integers(0, 1 << 32, n),
        tsbase_s=rng.integers(0, 1 << 32, n),
        rst_bare=rng.random(n) < BARE_RST_SHARE,
        close_w=rng.uniform(0.5, 1.5, n),
        ex_flow=ex_flow,
        req_len=rng.integers(REQUEST_BYTES[0], REQUEST_BYTES[1] + 1, x),
        segs=segs.astype(np.int64),
        seg_len=seg_len,
        last_len=rng.integers(LAST_SEGMENT_MIN, seg_len + 1),
        retx_req=rng.random(x) < RETX_REQUEST_SHARE,
        retx_tail=rng.random(x) < RETX_TAIL_SHARE,
        service=_log_uniform(rng, SERVICE_NS, x),
        think_w=rng.uniform(0.5, 1.5, x),
    )


def _exchange_packets(plan: Plan) -> np.ndarray:
    return 1 + plan.retx_req + plan.segs + plan.retx_tail + (plan.segs + 1) // 2


def _response_bytes(plan: Plan) -> np.ndarray:
    return (plan.segs - 1) * plan.seg_len + plan.last_len


def _totals(plan: Plan) -> tuple[int, int]:
    """(packets, payload bytes) the plan expands to, without expanding it."""
    handshake = np.where(plan.kind == REFUSED, 2, 3)
    packets = handshake.sum() + CLOSE_PACKETS[plan.kind].sum() + _exchange_packets(plan).sum()
    payload = (
        (plan.req_len * (1 + plan.retx_req)).sum()
        + _response_bytes(plan).sum()
        + (plan.retx_tail * plan.last_len).sum()
    )
    return int(packets), int(payload)


def calibrate(seed: int, avg_payload: float, sample_flows: int = 20_000) -> tuple[float, float]:
    """Mean response size (segments) giving `avg_payload` bytes per packet; packets per flow."""
    flow = np.arange(sample_flows, dtype=np.int64)
    zeros = np.zeros(sample_flows, dtype=np.int64)

    def measure(response_segments: float) -> tuple[float, float]:
        rng = np.random.default_rng([seed, 0xCA11B])  # same draws for every candidate
        plan = plan_flows(rng, seed, flow, response_segments, zeros, 1)
        packets, payload = _totals(plan)
        return payload / packets, packets / sample_flows

    lo, hi = 1.0, float(MAX_RESPONSE_SEGMENTS)
    if measure(hi)[0] < avg_payload:
        raise ValueError(f"--avg-payload {avg_payload} is more than this traffic mix can carry")
    for _ in range(40):
        mid = (lo + hi) / 2
        if measure(mid)[0] < avg_payload:
            lo = mid
        else:
            hi = mid
    return hi, measure(hi)[1]


# ---------------------------------------------------------------- expansion into packet rows


def _group_exclusive_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For values grouped in runs of `counts`: the sum of the earlier values in the same run."""
    running = np.cumsum(values) - values
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    return running - running[run_start] if len(values) else running


def _group_sum(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    # float64 sums stay exact below 2**53, far above any ns or byte total here
    return np.bincount(groups, weights=values, minlength=n).astype(np.int64)


def expand(plan: Plan, seed: int) -> np.ndarray:
    """All packets of the planned flows, flow-major (sorted by flow, then position in flow)."""
    n = len(plan.flow)
    ident = flow_identity(seed, plan.flow)
    refused = plan.kind == REFUSED
    ef = plan.ex_flow
    rtt_x = plan.rtt[ef]
    rto_x = RTO_MIN_NS + rtt_x

    # -- timing of exchanges, relative to the exchange start
    req_done = rto_x * plan.retx_req
    first_seg_t = req_done + plan.service
    last_seg_t = (
        first_seg_t + ((plan.segs - 1) // BURST_SEGMENTS) * rtt_x + (plan.segs - 1) * SEGMENT_GAP_NS
    )
    tail_t = last_seg_t + rto_x * plan.retx_tail
    ex_dur = tail_t + rtt_x  # the final ACK closes the exchange

    handshake_ns = plan.srv_delay + plan.rtt
    busy = handshake_ns + _group_sum(ex_dur, ef, n) + plan.rtt + plan.srv_delay
    gaps = plan.n_exch + 1
    think = np.maximum(plan.duration - busy, MIN_THINK_NS * gaps) // gaps
    ex_gap = (think[ef] * plan.think_w).astype(np.int64)
    ex_start = (
        plan.t0[ef]
        + handshake_ns[ef]
        + _group_exclusive_cumsum(ex_gap + ex_dur, plan.n_exch)
        + ex_gap
    )
    close_t = (
        plan.t0
        + handshake_ns
        + _group_sum(ex_gap + ex_dur, ef, n)
        + (think * plan.close_w).astype(np.int64)
    )

    # -- byte offsets of each exchange in each direction's sequence space
    resp_len = _response_bytes(plan)
    client_off = _group_exclusive_cumsum(plan.req_len, plan.n_exch)
    server_off = _group_exclusive_cumsum(resp_len, plan.n_exch)
    client_total = _group_sum(plan.req_len, ef, n)
    server_total = _group_sum(resp_len, ef, n)
    ex_pkts = _exchange_packets(plan)
    ex_ord0 = 3 + _group_exclusive_cumsum(ex_pkts, plan.n_exch)
    flow_ex_pkts = _group_sum(ex_pkts, ef, n)

    sections = [
        _handshake_rows(plan, ident, refused),
        _exchange_rows(
            plan,
            ident,
            ex_start,
            ex_pkts,
            ex_ord0,
            client_off,
            server_off,
            first_seg_t,
            tail_t,
            rtt_x,
        ),
        _close_rows(plan, ident, close_t, client_total, server_total, 3 + flow_ex_pkts),
    ]
    pk = np.concatenate(sections)
    pk = pk[np.lexsort((pk["ord"], pk["flow"]))]
    _fill_ip_ids_and_timestamps(pk, plan, ident)
    return pk


def _rows(n: int) -> np.ndarray:
    return np.zeros(n, dtype=PKT_DTYPE)


def _handshake_rows(plan: Plan, ident: dict, refused: np.ndarray) -> np.ndarray:
    n = len(plan.flow)
    syn_opt = np.where(ident["has_ts"], OPT_SYN_LINUX, OPT_SYN_WINDOWS)
    data_opt = np.where(ident["has_ts"], OPT_TS, OPT_NONE)
    syn, answer, ack = _rows(n), _rows(n), _rows(n)
    for r, position in ((syn, 0), (answer, 1), (ack, 2)):
        r["flow"] = plan.flow
        r["ord"] = position
    syn["t"] = plan.t0
    syn["flags"] = TH_SYN
    syn["seq"] = plan.isn_c
    syn["opt"] = syn_opt
    syn["win"] = ident["synwin_c"]

    answer["t"] = plan.t0 + plan.srv_delay
    answer["dir"] = 1
    answer["ack"] = (plan.isn_c + 1) & U32
    answer["flags"] = np.where(refused, TH_RST | TH_ACK, TH_SYN | TH_ACK)
    answer["seq"] = np.where(refused, 0, plan.isn_s)
    answer["opt"] = np.where(refused, OPT_NONE, syn_opt)
    answer["win"] = np.where(refused, 0, ident["synwin_s"])

    ack["t"] = plan.t0 + plan.srv_delay + plan.rtt
    ack["flags"] = TH_ACK
    ack["seq"] = (plan.isn_c + 1) & U32
    ack["ack"] = (plan.isn_s + 1) & U32
    ack["opt"] = data_opt
    ack["win"] = ident["win_c"]
    return np.concatenate([syn, answer, ack[~refused]])


def _exchange_rows(
    plan: Plan,
    ident: dict,
    ex_start: np.ndarray,
    ex_pkts: np.ndarray,
    ex_ord0: np.ndarray,
    client_off: np.ndarray,
    server_off: np.ndarray,
    first_seg_t: np.ndarray,
    tail_t: np.ndarray,
    rtt_x: np.ndarray,
) -> np.ndarray:
    """Request, optional request retransmission, then the response in pairs of segments each
    followed by the client's ACK; the last pair holds the tail retransmission, if any."""
    ex = np.repeat(np.arange(len(ex_pkts)), ex_pkts)
    j = np.arange(len(ex)) - np.repeat(np.cumsum(ex_pkts) - ex_pkts, ex_pkts)
    fl = plan.ex_flow[ex]
    segs, seg_len, last_len = plan.segs[ex], plan.seg_len[ex], plan.last_len[ex]
    retx_req, retx_tail = plan.retx_req[ex], plan.retx_tail[ex]
    rtt = rtt_x[ex]
    req_len = plan.req_len[ex]
    isn_c, isn_s = plan.isn_c[fl], plan.isn_s[fl]
    c_seq = isn_c + 1 + client_off[ex]
    s_seq = isn_s + 1 + server_off[ex]

    req_part = 1 + retx_req
    is_req = j < req_part
    p = np.maximum(j - req_part, 0)
    pairs = (segs + 1) // 2
    k = np.minimum(p // 3, pairs - 1)
    q = p - 3 * k
    in_last_pair = k == pairs - 1
    segs_in_pair = np.where(in_last_pair, segs - 2 * k, 2)
    is_seg = ~is_req & (q < segs_in_pair)
    is_tail_retx = ~is_req & ~is_seg & in_last_pair & retx_tail & (q == segs_in_pair)
    is_ack = ~is_req & ~is_seg & ~is_tail_retx

    seg_index = np.where(is_tail_retx, segs - 1, 2 * k + q)
    last = seg_index == segs - 1
    seg_t = first_seg_t[ex] + (seg_index // BURST_SEGMENTS) * rtt + seg_index * SEGMENT_GAP_NS
    acked_seg = np.minimum(2 * k + 1, segs - 1)
    acked_t = first_seg_t[ex] + (acked_seg // BURST_SEGMENTS) * rtt + acked_seg * SEGMENT_GAP_NS
    acked_bytes = np.where(
        acked_seg == segs - 1, (segs - 1) * seg_len + last_len, (acked_seg + 1) * seg_len
    )
    ack_t = np.where(in_last_pair, tail_t[ex], acked_t) + rtt
    rto = RTO_MIN_NS + rtt

    r = _rows(len(ex))
    r["flow"] = plan.flow[fl]
    r["ord"] = ex_ord0[ex] + j
    r["t"] = ex_start[ex] + np.select(
        [is_req, is_seg, is_tail_retx], [j * rto, seg_t, tail_t[ex]], ack_t
    )
    r["dir"] = is_seg | is_tail_retx
    r["flags"] = np.where(is_req | ((is_seg | is_tail_retx) & last), TH_PSH | TH_ACK, TH_ACK)
    r["seq"] = (
        np.where(is_req | is_ack, c_seq + is_ack * req_len, s_seq + seg_index * seg_len) & U32
    )
    r["ack"] = np.where(is_req, s_seq, np.where(is_ack, s_seq + acked_bytes, c_seq + req_len)) & U32
    r["plen"] = np.select([is_req, is_ack, last], [req_len, 0, last_len], seg_len)
    r["opt"] = np.where(ident["has_ts"][fl], OPT_TS, OPT_NONE)
    r["win"] = np.where(r["dir"] == 1, ident["win_s"][fl], ident["win_c"][fl])
    r["retx"] = is_tail_retx | (is_req & (j == 1))
    return r


def _close_rows(
    plan: Plan,
    ident: dict,
    close_t: np.ndarray,
    client_total: np.ndarray,
    server_total: np.ndarray,
    ord0: np.ndarray,
) -> np.ndarray:
    counts = CLOSE_PACKETS[plan.kind]
    fl = np.repeat(np.arange(len(plan.flow)), counts)
    k = np.arange(len(fl)) - np.repeat(np.cumsum(counts) - counts, counts)
    kind = plan.kind[fl]
    by_server = (kind == FIN_SERVER) | (kind == RST_SERVER)
    is_fin = (kind == FIN_CLIENT) | (kind == FIN_SERVER)
    c_next = plan.isn_c[fl] + 1 + client_total[fl]
    s_next = plan.isn_s[fl] + 1 + server_total[fl]
    own_next = np.where(by_server, s_next, c_next)  # the initiator's next sequence number
    peer_next = np.where(by_server, c_next, s_next)
    rtt, delay = plan.rtt[fl], plan.srv_delay[fl]
    # the second packet comes from the peer; the client is an RTT away, the server is not
    first_gap = np.where(by_server, rtt, delay)
    second_gap = np.where(by_server, delay, rtt)
    bare = plan.rst_bare[fl] & ~is_fin
    has_ts = ident["has_ts"][fl]

    r = _rows(len(fl))
    r["flow"] = plan.flow[fl]
    r["ord"] = ord0[fl] + k
    r["t"] = close_t[fl] + (k >= 1) * first_gap + (k >= 2) * second_gap
    from_peer = k == 1
    r["dir"] = by_server ^ from_peer
    r["flags"] = np.select(
        [~is_fin & bare, ~is_fin, k < 2], [TH_RST, TH_RST | TH_ACK, TH_FIN | TH_ACK], TH_ACK
    )
    r["seq"] = np.select([k == 0, k == 1], [own_next, peer_next], own_next + 1) & U32
    r["ack"] = np.select([bare, k == 0, k == 1], [0, peer_next, own_next + 1], peer_next + 1) & U32
    r["opt"] = np.where(has_ts & ~bare, OPT_TS, OPT_NONE)
    r["win"] = np.where(~is_fin, 0, np.where(r["dir"] == 1, ident["win_s"][fl], ident["win_c"][fl]))
    return r


def _fill_ip_ids_and_timestamps(pk: np.ndarray, plan: Plan, ident: dict) -> None:
    """IP ID counts up per direction; TSval follows each side's ms clock; TSecr echoes the
    latest TSval that side has received (client: sent by the server at least one RTT ago)."""
    local = pk["flow"] - plan.flow[0]  # plan ids are consecutive
    is_server = pk["dir"] == 1
    for side, base in ((~is_server, ident["ipid_c"]), (is_server, ident["ipid_s"])):
        rows = np.flatnonzero(side)
        flows = local[rows]
        rank = np.arange(len(rows)) - np.searchsorted(flows, flows, side="left")
        pk["ip_id"][rows] = (base[flows] + rank) & 0xFFFF

    t0, rtt = plan.t0[local], plan.rtt[local]
    client_clock = (pk["t"] - rtt // 2 - t0) // MS  # when the client sent it, in its clock
    server_clock = (pk["t"] - t0) // MS
    pk["tsval"] = (
        np.where(
            is_server, plan.tsbase_s[local] + server_clock, plan.tsbase_c[local] + client_clock
        )
        & U32
    )

    carries_ts = (pk["opt"] == OPT_TS) | (pk["opt"] == OPT_SYN_LINUX)
    t_min = int(pk["t"].min()) if len(pk) else 0
    span = int(pk["t"].max()) - t_min if len(pk) else 0
    if span >= 1 << 40:
        raise ValueError("a block of flows spans more than 2**40 ns; use a higher --pps")
    key = (local << 40) + (pk["t"] - t_min)
    echo = np.zeros(len(pk), dtype=np.int64)
    for receiver, sender, lag in ((is_server, ~is_server, 0), (~is_server, is_server, rtt)):
        senders = np.flatnonzero(sender & carries_ts)  # flow-major order: keys ascend
        receivers = np.flatnonzero(receiver & carries_ts)
        lag_r = lag[receivers] if isinstance(lag, np.ndarray) else lag
        hit = np.searchsorted(key[senders], key[receivers] - lag_r, side="right") - 1
        found = hit >= 0
        hit = np.maximum(hit, 0)
        found &= local[senders[hit]] == local[receivers] if len(senders) else False
        echo[receivers] = np.where(found, pk["tsval"][senders[hit]] if len(senders) else 0, 0)
    pk["tsecr"] = echo
    pk["tsval"][~carries_ts] = 0


# ---------------------------------------------------------------- rendering into file bytes

_PATTERN = np.frombuffer(
    b"tracer benchmark payload, repeated to fill the segment. " * 64, dtype=np.uint8
)
_ARANGE = {size: np.arange(size, dtype=np.int64) for size in (1, 2, 4, 8)}


def _put(buf: np.ndarray, pos: np.ndarray, values, dtype: str) -> None:
    """Write one fixed-size field at every position in `pos` (scalars broadcast)."""
    dt = np.dtype(dtype)
    raw = np.ascontiguousarray(np.broadcast_to(np.asarray(values).astype(dt), pos.shape))
    buf[pos[:, None] + _ARANGE[dt.itemsize]] = raw.view(np.uint8).reshape(-1, dt.itemsize)


class _Scratch:
    """One output buffer reused for every chunk: fresh pages cost more than the bytes."""

    def __init__(self) -> None:
        self.buf = np.zeros(0, dtype=np.uint8)

    def filled(self, total: int, file_offset: int) -> np.ndarray:
        """`total` bytes of payload pattern, in phase with the file offset they will land at
        (so chunk boundaries do not show in the file)."""
        if total > len(self.buf):
            self.buf = np.empty(int(total * 1.1), dtype=np.uint8)
        buf = self.buf[:total]
        step = len(_PATTERN)
        pattern = np.roll(_PATTERN, -(file_offset % step))
        whole = total // step
        buf[: whole * step].reshape(whole, step)[:] = pattern
        buf[whole * step :] = pattern[: total - whole * step]
        return buf


def file_header(fmt: str, ts_ns: bool, snaplen: int) -> bytes:
    snap = snaplen or 262144
    if fmt == "pcap":
        magic = 0xA1B23C4D if ts_ns else 0xA1B2C3D4
        return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snap, LINKTYPE_ETHERNET)
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    options = (
        struct.pack("<HH", 2, 6)
        + b"bench0\0\0"  # if_name
        + struct.pack("<HHB3x", 9, 1, 9 if ts_ns else 6)  # if_tsresol
        + struct.pack("<HH", 0, 0)
    )
    body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snap) + options
    length = 12 + len(body)
    idb = struct.pack("<II", 1, length) + body + struct.pack("<I", length)
    return shb + idb


def render(
    pk: np.ndarray,
    seed: int,
    fmt: str,
    ts_ns: bool,
    snaplen: int,
    scratch: _Scratch | None = None,
    file_offset: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Capture records (record header + frame) for the rows of `pk`, in order, and the flows'
    identity arrays. The buffer belongs to `scratch` and is overwritten by the next call."""
    n = len(pk)
    ident = flow_identity(seed, pk["flow"])
    c2s = pk["dir"] == 0
    v6 = ident["v6"]
    ntags = ident["ntags"]
    eth_len = 14 + 4 * ntags
    ip_len = np.where(v6, 40, 20)
    opt_len = OPT_LEN[pk["opt"]]
    tcp_len = 20 + opt_len
    frame_len = eth_len + ip_len + tcp_len + pk["plen"]
    caplen = np.minimum(frame_len, snaplen) if snaplen else frame_len
    if fmt == "pcap":
        rec_hdr = 16
        rec_len = rec_hdr + caplen
    else:
        rec_hdr = 28
        rec_len = rec_hdr + ((caplen + 3) & ~3) + 4
    rec_off = np.cumsum(rec_len) - rec_len
    buf = (scratch or _Scratch()).filled(int(rec_len.sum()), file_offset)

    # -- record header
    abs_ns = EPOCH_NS + pk["t"]
    if fmt == "pcap":
        _put(buf, rec_off, abs_ns // 1_000_000_000, "<u4")
        frac = abs_ns % 1_000_000_000
        _put(buf, rec_off + 4, frac if ts_ns else frac // 1000, "<u4")
        _put(buf, rec_off + 8, caplen, "<u4")
        _put(buf, rec_off + 12, frame_len, "<u4")
    else:
        units = abs_ns if ts_ns else abs_ns // 1000
        _put(buf, rec_off, 6, "<u4")
        _put(buf, rec_off + 4, rec_len, "<u4")
        _put(buf, rec_off + 8, 0, "<u4")
        _put(buf, rec_off + 12, units >> 32, "<u4")
        _put(buf, rec_off + 16, units & U32, "<u4")
        _put(buf, rec_off + 20, caplen, "<u4")
        _put(buf, rec_off + 24, frame_len, "<u4")
        _put(buf, rec_off + rec_len - 4, rec_len, "<u4")
        pad_end = rec_off + rec_len - 4
        for extra in range(3):  # zero the padding after the frame
            at = rec_off + rec_hdr + caplen + extra
            rows = at < pad_end
            _put(buf, at[rows], 0, "u1")

    # -- Ethernet, 802.1ad/802.1Q tags
    eth = rec_off + rec_hdr
    router_mac = 0x0200_0000_FE00 + ident["router_idx"]
    server_mac = 0x0200_0000_0100 + ident["server_idx"]
    dst_mac = np.where(c2s, server_mac, router_mac)
    src_mac = np.where(c2s, router_mac, server_mac)
    for at, mac in ((eth, dst_mac), (eth + 6, src_mac)):
        _put(buf, at, mac >> 32, ">u2")
        _put(buf, at + 2, mac & U32, ">u4")
    one, two = ntags == 1, ntags == 2
    _put(buf, eth[one] + 12, 0x8100, ">u2")
    _put(buf, eth[one] + 14, ident["vid_outer"][one], ">u2")
    _put(buf, eth[two] + 12, 0x88A8, ">u2")
    _put(buf, eth[two] + 14, ident["vid_outer"][two], ">u2")
    _put(buf, eth[two] + 16, 0x8100, ">u2")
    _put(buf, eth[two] + 18, ident["vid_inner"][two], ">u2")
    _put(buf, eth + eth_len - 2, np.where(v6, 0x86DD, 0x0800), ">u2")

    # -- IPv4 / IPv6
    ip = eth + eth_len
    ttl = np.where(c2s, ident["ttl_c"], ident["ttl_s"])
    client_v4 = (10 << 24) | (16 << 16) + ident["client_idx"]  # 10.16.0.0/12
    server_v4 = (10 << 24) | (1 << 16) | (1 + ident["server_idx"])  # 10.1.0.1-8
    seg_len = tcp_len + pk["plen"]
    r4 = np.flatnonzero(~v6)
    if len(r4):
        total_len = 20 + seg_len[r4]
        src = np.where(c2s[r4], client_v4[r4], server_v4[r4])
        dst = np.where(c2s[r4], server_v4[r4], client_v4[r4])
        ip_id = pk["ip_id"][r4].astype(np.int64)
        ttl_proto = (ttl[r4] << 8) | 6
        words = (
            0x4500
            + total_len
            + ip_id
            + 0x4000
            + ttl_proto
            + (src >> 16)
            + (src & 0xFFFF)
            + (dst >> 16)
            + (dst & 0xFFFF)
        )
        words = (words & 0xFFFF) + (words >> 16)
        words = (words & 0xFFFF) + (words >> 16)
        at = ip[r4]
        _put(buf, at, 0x4500, ">u2")
        _put(buf, at + 2, total_len, ">u2")
        _put(buf, at + 4, ip_id, ">u2")
        _put(buf, at + 6, 0x4000, ">u2")  # DF
        _put(buf, at + 8, ttl_proto, ">u2")
        _put(buf, at + 10, ~words & 0xFFFF, ">u2")
        _put(buf, at + 12, src, ">u4")
        _put(buf, at + 16, dst, ">u4")
    r6 = np.flatnonzero(v6)
    if len(r6):
        c = c2s[r6]
        client_hi = np.uint64(0xFD00_0000_0000_0100)
        client_lo = _mix64(ident["client_idx"][r6].astype(np.uint64) + np.uint64(1))
        server_hi = np.uint64(0xFD00_0000_0000_0001)
        server_lo = (1 + ident["server_idx"][r6]).astype(np.uint64)
        label = np.where(c, ident["label_c"][r6], ident["label_s"][r6])
        at = ip[r6]
        _put(buf, at, (6 << 28) | label, ">u4")
        _put(buf, at + 4, seg_len[r6], ">u2")
        _put(buf, at + 6, (6 << 8) | ttl[r6], ">u2")  # next header TCP, hop limit
        _put(buf, at + 8, np.where(c, client_hi, server_hi), ">u8")
        _put(buf, at + 16, np.where(c, client_lo, server_lo), ">u8")
        _put(buf, at + 24, np.where(c, server_hi, client_hi), ">u8")
        _put(buf, at + 32, np.where(c, server_lo, client_lo), ">u8")

    # -- TCP
    tcp = ip + ip_len
    sport = np.where(c2s, ident["cport"], ident["sport"])
    dport = np.where(c2s, ident["sport"], ident["cport"])
    _put(buf, tcp, (sport << 16) | dport, ">u4")
    _put(buf, tcp + 4, pk["seq"], ">u4")
    _put(buf, tcp + 8, pk["ack"], ">u4")
    _put(buf, tcp + 12, ((tcp_len // 4) << 12) | pk["flags"], ">u2")
    _put(buf, tcp + 14, pk["win"], ">u2")
    _put(buf, tcp + 16, 0, ">u4")  # checksum left to offload, as on the capturing host; urgent
    mss = np.where(c2s, ident["mss_c"], ident["mss_s"])
    ws = np.where(c2s, ident["ws_c"], ident["ws_s"])
    opt = tcp + 20
    rows = np.flatnonzero(pk["opt"] == OPT_TS)
    _put(buf, opt[rows], 0x0101080A, ">u4")
    _put(buf, opt[rows] + 4, pk["tsval"][rows], ">u4")
    _put(buf, opt[rows] + 8, pk["tsecr"][rows], ">u4")
    rows = np.flatnonzero(pk["opt"] == OPT_SYN_LINUX)  # MSS, SACK-perm, TS, NOP, WS
    _put(buf, opt[rows], (0x0204 << 16) | mss[rows], ">u4")
    _put(buf, opt[rows] + 4, 0x0402080A, ">u4")
    _put(buf, opt[rows] + 8, pk["tsval"][rows], ">u4")
    _put(buf, opt[rows] + 12, pk["tsecr"][rows], ">u4")
    _put(buf, opt[rows] + 16, (0x010303 << 8) | ws[rows], ">u4")
    rows = np.flatnonzero(pk["opt"] == OPT_SYN_WINDOWS)  # MSS, NOP, WS, NOP, NOP, SACK-perm
    _put(buf, opt[rows], (0x0204 << 16) | mss[rows], ">u4")
    _put(buf, opt[rows] + 4, (0x010303 << 8) | ws[rows], ">u4")
    _put(buf, opt[rows] + 8, 0x01010402, ">u4")
    assert n == 0 or int(rec_off[-1] + rec_len[-1]) == len(buf)
    return buf, ident


# ---------------------------------------------------------------- the streaming pipeline


def make_shape(packets: int, flows: int, seed: int, avg_payload: float, pps: float) -> Shape:
    response_segments, per_flow = calibrate(seed, avg_payload)
    # at least a full generation of flows must fit in the file, or none would start and end in it
    concurrency = max(1, min(flows, int(packets / per_flow)))
    interval = max(1, round(per_flow / pps * 1e9))
    mean_duration = concurrency * interval
    longest = DURATION_SPREAD[1] * mean_duration + 2 * RTO_MIN_NS + 2_000 * MS
    return Shape(
        response_segments=response_segments,
        packets_per_flow=per_flow,
        payload_per_packet=avg_payload,
        concurrency=concurrency,
        flow_interval_ns=interval,
        mean_duration_ns=mean_duration,
        prestart_flows=int(np.ceil(longest / interval)),
    )


@dataclass
class Summary:
    packets: int = 0
    bytes: int = 0
    flows: int = 0  # flows with at least one packet in the file
    retransmissions: int = 0
    syn: int = 0
    fin: int = 0
    rst: int = 0
    ipv6_packets: int = 0
    vlan_packets: int = 0
    duration_s: float = 0.0
    mean_open_flows: float = 0.0  # time-averaged flows between their first and last packet
    seconds: float = 0.0


class _FlowsSeen:
    """Which flow ids have a packet in the file; ids are dense, so a growing bitmap does."""

    def __init__(self) -> None:
        self.seen = np.zeros(0, dtype=np.bool_)

    def add(self, flows: np.ndarray) -> None:
        top = int(flows.max()) + 1
        if top > len(self.seen):
            self.seen = np.concatenate([self.seen, np.zeros(top - len(self.seen), np.bool_)])
        self.seen[flows] = True

    def count(self) -> int:
        return int(self.seen.sum())


def generate(
    out: Path,
    packets: int,
    flows: int = 20_000,
    seed: int = 1,
    fmt: str = "pcap",
    avg_payload: float = 760.0,
    pps: float = 100_000.0,
    snaplen: int = 0,
    ts_ns: bool = False,
    chunk: int = 200_000,
    progress: bool = False,
) -> tuple[Summary, Shape]:
    started = time.perf_counter()
    shape = make_shape(packets, flows, seed, avg_payload, pps)
    # blocks are part of the content (one generator seed per block), chunks are not
    block_flows = max(1_000, int(BLOCK_PACKETS / shape.packets_per_flow))
    summary = Summary()
    seen = _FlowsSeen()
    planned_first, planned_last = [], []  # each planned flow's first and last packet time
    # two buffers: one is written to the file by a thread while the next chunk renders
    scratches = [_Scratch(), _Scratch()]
    writes: list[Future | None] = [None, None]
    writer = ThreadPoolExecutor(max_workers=1)
    chunk_no = 0
    pending = np.zeros(0, dtype=PKT_DTYPE)
    last_t = 0
    block = 0
    with open(out, "wb") as f:
        header = file_header(fmt, ts_ns, snaplen)
        f.write(header)
        summary.bytes += len(header)
        while summary.packets < packets:
            ids = np.arange(block * block_flows, (block + 1) * block_flows, dtype=np.int64)
            rng = np.random.default_rng([seed, block])
            t0 = (ids - shape.prestart_flows) * shape.flow_interval_ns + rng.integers(
                0, shape.flow_interval_ns, len(ids)
            )
            plan = plan_flows(rng, seed, ids, shape.response_segments, t0, shape.mean_duration_ns)
            fresh = expand(plan, seed)
            new_flow = np.flatnonzero(np.diff(fresh["flow"], prepend=-1) != 0)
            planned_first.append(fresh["t"][new_flow])
            planned_last.append(fresh["t"][np.append(new_flow[1:], len(fresh)) - 1])
            fresh = fresh[fresh["t"] >= 0]
            # pending rows are in (t, flow, ord) order and belong to older (lower) flow ids,
            # fresh rows are in (flow, ord) order: a stable sort on t alone completes the order
            merged = np.concatenate([pending, fresh])
            merged = merged[np.argsort(merged["t"], kind="stable")]
            # no flow of a later block starts before this
            cutoff = ((block + 1) * block_flows - shape.prestart_flows) * shape.flow_interval_ns
            ready = int(np.searchsorted(merged["t"], cutoff, side="left"))
            ready = min(ready, packets - summary.packets)
            out_rows, pending = merged[:ready], merged[ready:]
            for start in range(0, len(out_rows), chunk):
                rows = out_rows[start : start + chunk]
                slot = chunk_no % 2
                if writes[slot] is not None:
                    writes[slot].result()  # its buffer is free again
                buf, ident = render(rows, seed, fmt, ts_ns, snaplen, scratches[slot], summary.bytes)
                writes[slot] = writer.submit(f.write, buf.data)
                chunk_no += 1
                summary.bytes += len(buf)
                _count(summary, rows, ident)
            if len(out_rows):
                last_t = int(out_rows["t"][-1])
                seen.add(out_rows["flow"])
            block += 1
            if progress:
                print(
                    f"\r{summary.packets:,} packets, {summary.bytes / 1e6:,.0f} MB",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        for pending_write in writes:
            if pending_write is not None:
                pending_write.result()
    writer.shutdown()
    if progress:
        print(file=sys.stderr)
    summary.flows = seen.count()
    summary.duration_s = last_t / 1e9
    first, last = np.concatenate(planned_first), np.concatenate(planned_last)
    open_ns = np.clip(last, 0, last_t) - np.clip(first, 0, last_t)
    summary.mean_open_flows = float(open_ns.sum() / last_t) if last_t else 0.0
    summary.seconds = time.perf_counter() - started
    return summary, shape


def _count(summary: Summary, rows: np.ndarray, ident: dict[str, np.ndarray]) -> None:
    flags = rows["flags"]
    summary.packets += len(rows)
    summary.retransmissions += int(rows["retx"].sum())
    summary.syn += int(((flags & TH_SYN) != 0).sum())
    summary.fin += int(((flags & TH_FIN) != 0).sum())
    summary.rst += int(((flags & TH_RST) != 0).sum())
    summary.ipv6_packets += int(ident["v6"].sum())
    summary.vlan_packets += int((ident["ntags"] > 0).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gen_capture",
        description="Write a deterministic Ethernet/TCP capture for benchmarks.",
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=20_000, help="concurrent flows (target)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    parser.add_argument(
        "--avg-payload",
        type=float,
        default=760.0,
        help="mean TCP payload bytes per packet (default: ~850 B per record)",
    )
    parser.add_argument("--pps", type=float, default=100_000.0, help="packets per capture second")
    parser.add_argument("--snaplen", type=int, default=0, help="truncate frames (0: keep whole)")
    parser.add_argument("--ns", action="store_true", help="nanosecond timestamps")
    parser.add_argument("--chunk", type=int, default=200_000, help="packets rendered at once")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.snaplen and args.snaplen < 128:
        parser.error("--snaplen must be 0 or >= 128 (headers are always written whole)")
    summary, shape = generate(
        args.out,
        args.packets,
        args.flows,
        args.seed,
        args.format,
        args.avg_payload,
        args.pps,
        args.snaplen,
        args.ns,
        args.chunk,
        progress=not args.quiet,
    )
    if shape.concurrency < args.flows:
        print(
            f"note: {args.packets} packets hold {shape.concurrency} concurrent flows at most; "
            f"--flows lowered from {args.flows}",
            file=sys.stderr,
        )
    report = {
        "file": str(args.out),
        "generator_version": GENERATOR_VERSION,
        **vars(summary),
        "shape": vars(shape),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Attribution of every RST: sender, leg, root cause, routine or fault, origin, reason (pure).

Rules: arrays in, arrays out. Each rule below is a boolean mask over all RSTs (or all flows);
rules are applied in the order written, and an RST takes the first rule that holds (a `todo`
mask keeps later rules from overwriting). Flow-level *events* (a client's RST, HAProxy closing
a leg after a timeout, a server's RST or timeout) are computed once per flow and handed across
the leg join, so an RST HAProxy sends on one leg can name the event on the other leg that
caused it (origin `propagated`, `caused_by_frame`, delay).

The HAProxy behaviours the rules rest on (HAProxy 2.x; see captures/lab/README.md, where the
lab observed each of them with HAProxy 2.6):

1. **Middlebox.** An RST whose TTL/hop limit differs from its sender's baseline (the same
   address's other packets), or whose purported sender went on sending afterwards, or that
   arrives sooner after the peer's packet than the sender's minimum RTT allows while its
   sequence number is outside the window, was not sent by that endpoint: sender and cause
   `network` (`middlebox_injected`). An endpoint's kernel uses one initial TTL for all its
   packets, RSTs included, and stops sending on a connection it has reset.
2. **silent-drop.** `tcp-request connection silent-drop` without CAP_NET_ADMIN (or with
   `rst-ttl`) falls back to an RST sent with a tiny IP TTL (1 by default) so that it dies at
   the first router: an RST from HAProxy's frontend address with TTL 1 is HAProxy's silent-drop
   (cause `haproxy`), not a middlebox.
3. **Refusals.** An RST answering a SYN is the listener's kernel refusing: on the backend the
   server's port is closed (`server_refused`, HAProxy logs `SC` unless a retry or redispatch
   succeeded), on the frontend HAProxy is not listening (`haproxy_refused`).
4. **Client RSTs** on the frontend are the client's (`client_abort`; `client_close` after
   HAProxy's FIN). HAProxy logs `CR` while the request was incomplete (no server connection
   yet), `CD` after.
5. **reject.** `tcp-request connection reject` makes HAProxy close the accepted connection at
   once with an RST, before sending anything and without opening a server connection; such a
   connection is never logged. The same picture without the config is still HAProxy's reject.
5a. **overload.** A frontend at its `maxconn` stops accepting; with
   `net.ipv4.tcp_abort_on_overflow = 1` its kernel resets the connections the full accept
   queue cannot take (right after the handshake, nothing sent, no server leg). With the config,
   such an RST on a frontend with no reject or silent-drop rule while at least `maxconn` other
   connections to it are open is `haproxy_overload`. With Linux's default (0) the SYNs are
   dropped and `timeout queue` ends with a 503 and FIN: no RST (the lab's overload scenario).
6. **Timeouts.** HAProxy enforces `timeout http-request` / `client` / `server` by closing the
   leg (a 408/504 and FIN, FIN alone, or RST; with `option nolinger` FIN and RST). On the wire
   this is a silence about as long as the timeout, ended by HAProxy's own packet, with HAProxy
   closing first, and not explained by the other leg (a response HAProxy forwards from a slow
   server also ends a silence, but the server's data came just before). Matched to the
   configured timeouts when the config is given; without it, such closes still are timeouts
   (lower confidence, higher when several flows share the same silence: a timeout peak).
   The root cause is the idle party (client for client-side timeouts, server for `timeout
   server`), as HAProxy's `c`/`s` termination letters say.
7. **Propagation.** HAProxy mirrors a client-side abort or timeout to the server as an RST
   (at once in tcp mode, when the server answers in http mode without `abortonclose`); an RST
   HAProxy sends to a server after its frontend stream saw a client RST or a client-side
   timeout carries that event's cause. Likewise an RST HAProxy sends to a client after the
   server reset or timed out.
7c. **abortonclose.** With `option abortonclose` HAProxy takes a client's FIN for an abort:
   it resets the server connection right after the FIN (within FORWARD_WINDOW_NS), before the
   server answered and before HAProxy answered the client itself (a 504 then FIN is a server
   timeout). HAProxy's policy ended an unanswered exchange: cause `haproxy`, a fault
   (`haproxy_abort`, logged CC during the connect, CH while waiting for the response). A
   client that RSTs after such a FIN is logged CH; a client that aborts while its request sat
   in a queue (no server connection, no answer for QUEUE_WAIT_MIN_NS, on a frontend whose
   servers have `maxconn` and `option abortonclose`) is logged CQ instead of CR.
7d. **connect timeout.** An attempt nothing answers is abandoned silently when `timeout
   connect` expires; only a server's SYN/ACK arriving after that meets a closed socket, and
   HAProxy's kernel resets it: `haproxy_timeout_connect` (sC, cause server: it was too slow
   to accept), matched to the config's `timeout connect` when given.
8. **Routine closes.** HAProxy closes server connections with RST by design when it closes
   before the server's FIN (http-server-close, end of a complete exchange: no TIME_WAIT on
   HAProxy), and `option nolinger` turns every close into an RST. Such an RST after a complete,
   acknowledged exchange (or after the client's FIN on the frontend) is `routine`. A server
   connection no client stream explains, closed by HAProxy, is a health check (routine) when
   the config does not say the server has no `check`.
Mode. Without the config a frontend endpoint's mode comes from payload sizes (`infer_mode`):
tcp mode forwards bytes unchanged, http mode re-writes headers, so single-connection streams
are byte-identical on both legs in tcp mode only. It picks SD/sD over SH/sH and CD over CR.

9. **Follow-ups.** A further RST from the same sender in a flow it already reset (the kernel
   answering a late ACK on a closed socket) repeats the first RST's attribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tracer.attribution import vocab as av
from tracer.attribution.join import Join
from tracer.attribution.timeline import QUIET_MIN_NS, address_key
from tracer.flows import vocab as fv

R = av.REASON
C = av.CAUSE

PROPAGATION_SLACK_NS = 10_000_000  # both legs are captured on one clock; allow for races
FORWARD_WINDOW_NS = 50_000_000  # a server event this close before HAProxy's frontend packet explains it
CLOSE_AFTER_QUIET_NS = 50_000_000  # HAProxy's close follows the packet that ended the silence
TIMEOUT_TOLERANCE = 0.05  # |quiet - timeout| within 5% of the timeout ...
TIMEOUT_TOLERANCE_MIN_NS = 50_000_000  # ... or 50 ms (HAProxy's timer granularity and scheduling)
CLUSTER_TOLERANCE = 0.05
BURST_MIN = 3  # fault RSTs on one server's connections within one second
QUEUE_WAIT_MIN_NS = 50_000_000  # a request not served this long was held back (queued)
TOO_FAST_MIN_RTT_NS = 200_000  # below this, timing noise exceeds the RTT: no "too fast" evidence

FE_TIMEOUTS = ("http-request", "http-keep-alive", "client", "client-fin", "tunnel")
BE_TIMEOUTS = ("server", "server-fin", "tunnel")


@dataclass
class Settings:
    """Per frontend (index of Topology.frontends) and per server (index of Topology.servers):
    what the config says; -1 / False where unknown."""

    fe_http: np.ndarray  # int8: 1 http, 0 tcp, -1 unknown
    fe_timeouts: dict[str, np.ndarray]  # name -> ns (-1 unknown)
    fe_nolinger: np.ndarray
    fe_reject: np.ndarray  # a tcp-request connection/content reject rule
    fe_content_reject: np.ndarray  # ... only content-stage (logged, PR)
    fe_silent_drop: np.ndarray
    fe_deny: np.ndarray  # http-request deny / reject rules
    fe_queue: np.ndarray  # a server it routes to has `maxconn` and abortonclose: CQ is logged
    fe_maxconn: np.ndarray  # int64: the frontend's (or the global) maxconn, -1 unknown
    srv_connect: np.ndarray  # int64: `timeout connect` of the server's backend (ns), -1 unknown
    srv_http: np.ndarray
    srv_timeouts: dict[str, np.ndarray]
    srv_nolinger: np.ndarray
    srv_check: np.ndarray  # int8: 1 check, 0 no check, -1 unknown
    srv_backend: np.ndarray  # backend index per server (-1 unknown)
    route_ok: np.ndarray | None  # [frontend, server entry] routing allowed
    known: bool  # a config was given

    @staticmethod
    def empty(n_frontends: int, n_servers: int) -> Settings:
        nf, ns = max(n_frontends, 1), max(n_servers, 1)
        return Settings(
            fe_http=np.full(nf, -1, np.int8),
            fe_timeouts={k: np.full(nf, -1, np.int64) for k in FE_TIMEOUTS},
            fe_nolinger=np.zeros(nf, bool), fe_reject=np.zeros(nf, bool),
            fe_content_reject=np.zeros(nf, bool), fe_silent_drop=np.zeros(nf, bool),
            fe_deny=np.zeros(nf, bool), fe_queue=np.zeros(nf, bool),
            fe_maxconn=np.full(nf, -1, np.int64), srv_connect=np.full(ns, -1, np.int64),
            srv_http=np.full(ns, -1, np.int8),
            srv_timeouts={k: np.full(ns, -1, np.int64) for k in BE_TIMEOUTS},
            srv_nolinger=np.zeros(ns, bool), srv_check=np.full(ns, -1, np.int8),
            srv_backend=np.full(ns, -1, np.int64), route_ok=None, known=False)


ATTR_DTYPE = np.dtype(
    [
        ("frame", np.int64),
        ("flow_row", np.int64),
        ("leg", np.uint8),
        ("sender", np.uint8),  # vocab.ROLE_*
        ("cause", np.uint8),  # vocab.CAUSE_NAMES
        ("reason", np.uint8),  # vocab.REASON_NAMES
        ("routine", np.bool_),
        ("origin", np.uint8),
        ("caused_by_frame", np.int64),  # 0: none
        ("delay_ns", np.int64),  # from the causing event (-1: none)
        ("confidence", np.float32),
        ("server", np.int32),  # Topology.servers index of the leg's server (-1)
        ("frontend", np.int32),
        ("peer_flow_row", np.int64),  # joined flow on the other leg (-1)
    ]
)


@dataclass
class RstAttribution:
    table: np.ndarray  # ATTR_DTYPE, aligned with the RST table
    termination: list[str]
    evidence: Evidence | list[list[str]]
    notes: list[str] = field(default_factory=list)


def _first_event(rows: np.ndarray, ts: np.ndarray, frames: np.ndarray, n: int):
    """Per flow row (dense 0..n-1), the earliest (ts, frame) among the given RST rows."""
    ev_ts = np.full(n, -1, np.int64)
    ev_frame = np.zeros(n, np.int64)
    if rows.size:
        o = np.lexsort((ts, rows))
        r, t, f = rows[o], ts[o], frames[o]
        first = np.ones(r.size, bool)
        first[1:] = r[1:] != r[:-1]
        ev_ts[r[first]] = t[first]
        ev_frame[r[first]] = f[first]
    return ev_ts, ev_frame


def _matches(quiet: np.ndarray, timeout: np.ndarray) -> np.ndarray:
    tol = np.maximum(timeout * TIMEOUT_TOLERANCE, TIMEOUT_TOLERANCE_MIN_NS)
    return (timeout > 0) & (np.abs(quiet - timeout) <= tol)


def _clustered(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """values[mask] that have another masked value within CLUSTER_TOLERANCE (a peak)."""
    out = np.zeros(values.shape[0], bool)
    v = np.sort(values[mask])
    if v.size < 2:
        return out
    lo = np.searchsorted(v, values * (1 - CLUSTER_TOLERANCE), side="left")
    hi = np.searchsorted(v, values * (1 + CLUSTER_TOLERANCE), side="right")
    out[mask] = (hi - lo)[mask] >= 2
    return out


def attribute_rsts(rsts: np.ndarray, flows: np.ndarray, timeline: np.ndarray, leg: np.ndarray,
                   frontend: np.ndarray, server: np.ndarray, join: Join, settings: Settings,
                   ttl_baseline: tuple[np.ndarray, np.ndarray],
                   host_min_rtt: tuple[np.ndarray, np.ndarray],
                   check: np.ndarray | None = None,
                   inferred_http: np.ndarray | None = None) -> RstAttribution:
    """`flows` sorted by flow_id; `timeline`, `leg`, `frontend`, `server` (and `check`: the
    flow went to a server's `check port`) aligned with it."""
    n_r, n_f = rsts.shape[0], flows.shape[0]
    out = np.zeros(n_r, ATTR_DTYPE)
    out["frame"] = rsts["frame"]
    out["caused_by_frame"] = 0
    out["delay_ns"] = -1
    out["server"] = -1
    out["frontend"] = -1
    out["peer_flow_row"] = -1
    if n_r == 0:
        return RstAttribution(out, [], [])
    row = np.searchsorted(flows["flow_id"], rsts["flow_id"])
    row = np.minimum(row, max(n_f - 1, 0))
    out["flow_row"] = row
    ts = rsts["ts_ns"]
    side = rsts["sender_side"].astype(np.int64)
    from_init = side == fv.FROM_INITIATOR
    r_leg = leg[row]
    out["leg"] = r_leg
    fe_leg = r_leg == av.LEG_FRONTEND
    be_leg = r_leg == av.LEG_BACKEND
    sender = np.full(n_r, av.ROLE_UNKNOWN, np.uint8)
    sender[fe_leg & from_init] = av.ROLE_CLIENT
    sender[fe_leg & ~from_init] = av.ROLE_HAPROXY
    sender[be_leg & from_init] = av.ROLE_HAPROXY
    sender[be_leg & ~from_init] = av.ROLE_SERVER

    # -- joins, per flow row and per RST ------------------------------------------------------
    from tracer.attribution.join import backends_of

    front_of = join.front_of
    back_order, back_lo, back_hi = backends_of(front_of)
    peer = np.where(be_leg, front_of[row], -1)
    has_back = (back_hi - back_lo) > 0
    # first joined backend row per frontend row (for the server column of frontend RSTs)
    first_back = np.full(n_f, -1, np.int64)
    first_back[has_back] = back_order[back_lo[has_back]]
    peer = np.where(fe_leg, first_back[row], peer)
    out["peer_flow_row"] = peer
    fe_of_flow = np.where(leg == av.LEG_FRONTEND, np.arange(n_f), front_of)  # frontend row of each flow
    fe_idx_flow = np.where(fe_of_flow >= 0, frontend[np.maximum(fe_of_flow, 0)], -1)
    srv_flow = np.where(leg == av.LEG_BACKEND, server, np.where(first_back >= 0, server[np.maximum(first_back, 0)], -1))
    out["frontend"] = fe_idx_flow[row]
    out["server"] = srv_flow[row]
    fe_i = np.maximum(fe_idx_flow, 0)
    sv_i = np.maximum(srv_flow, 0)
    fe_known = fe_idx_flow >= 0
    sv_known = srv_flow >= 0
    mode_http_flow = np.where(leg == av.LEG_FRONTEND,
                              np.where(fe_known, settings.fe_http[fe_i], -1),
                              np.where(sv_known, settings.srv_http[sv_i], -1))
    if inferred_http is not None:  # without the config: what the traffic shows (infer_mode)
        mode_http_flow = np.where(mode_http_flow < 0, inferred_http, mode_http_flow)

    # -- network evidence (per RST) -----------------------------------------------------------
    ttl = rsts["ttl"].astype(np.int16)
    src_key = address_key(rsts["src_hi"], rsts["src_lo"])
    b_keys, b_ttl = ttl_baseline
    base = np.where(rsts["ttl_known"], ttl - rsts["ttl_delta"], _lookup(b_keys, b_ttl, src_key, -1))
    ttl_one = (ttl == 1) & (base != 1)
    ttl_mismatch = (base >= 0) & (ttl != base) & ~(ttl_one & (sender == av.ROLE_HAPROXY))
    continued = rsts["continued"].astype(bool)
    m_keys, m_rtt = host_min_rtt
    min_rtt = _lookup(m_keys, m_rtt, src_key, -1)
    idle_rx = rsts["idle_receiver_ns"]
    too_fast = (min_rtt >= TOO_FAST_MIN_RTT_NS) & (idle_rx >= 0) & (idle_rx * 2 < min_rtt)
    out_of_window = rsts["seq_class"] == fv.SEQ_OUT_OF_WINDOW
    net_score = (1.0 * ttl_mismatch + 1.0 * continued + 0.5 * too_fast + 0.5 * out_of_window)
    network = net_score >= 1.0

    # -- flow-level events ----------------------------------------------------------------------
    is_front_flow = leg == av.LEG_FRONTEND
    is_back_flow = leg == av.LEG_BACKEND
    # client-side RST on a frontend flow (its cause: client, or network when forged)
    cl = np.flatnonzero(fe_leg & from_init)
    cl_ts, cl_frame = _first_event(row[cl], ts[cl], rsts["frame"][cl], n_f)
    cl_net = np.zeros(n_f, bool)
    cl_net[row[cl[network[cl]]]] = True
    # server-side RST (not a refusal) on a backend flow
    sv = np.flatnonzero(be_leg & ~from_init & (rsts["phase"] != fv.PHASE_REFUSED))
    sv_ts, sv_frame = _first_event(row[sv], ts[sv], rsts["frame"][sv], n_f)
    sv_net = np.zeros(n_f, bool)
    sv_net[row[sv[network[sv]]]] = True

    # HAProxy closed a leg first, after a silence it ended itself
    tl = timeline
    quiet = tl["quiet_ns"]
    closed_after_quiet = ((quiet >= QUIET_MIN_NS) & (tl["first_close_ts"] >= 0)
                          & (tl["first_close_ts"] - tl["quiet_end_ts"] <= CLOSE_AFTER_QUIET_NS))
    fe_quiet = is_front_flow & closed_after_quiet & (tl["quiet_end_dir"] == 1) & (tl["first_close_dir"] == 1)
    be_quiet = is_back_flow & closed_after_quiet & (tl["quiet_end_dir"] == 0) & (tl["first_close_dir"] == 0)
    # the server owed an answer: it never sent data, or HAProxy spoke last before the silence
    server_owed = (tl["first_data_ts"][:, 1] < 0) | (tl["last_data_ts"][:, 0] > tl["last_data_ts"][:, 1])
    be_quiet &= server_owed
    # A frontend close is not the client's timeout when the server side explains it: server data
    # or FIN just before HAProxy's packet (a slow response forwarded), or HAProxy's own close of
    # a server that owed an answer (`timeout server`: in http mode HAProxy does not run the
    # client timeout while it waits for the server).
    srv_last = np.full(n_f, -1, np.int64)
    if back_order.size:
        server_act = np.maximum(np.maximum(tl["last_data_ts"][back_order, 1], flows["fin_ts"][back_order, 1]),
                                np.where(be_quiet[back_order], tl["quiet_end_ts"][back_order], -1))
        srv_first_act = np.where(tl["first_data_ts"][back_order, 1] >= 0, tl["first_data_ts"][back_order, 1], server_act)
        fe_rows = front_of[back_order]
        qe = tl["quiet_end_ts"][fe_rows]
        near = (((server_act >= qe - FORWARD_WINDOW_NS) & (server_act <= qe + PROPAGATION_SLACK_NS))
                | ((srv_first_act >= qe - FORWARD_WINDOW_NS) & (srv_first_act <= qe + PROPAGATION_SLACK_NS)))
        np.maximum.at(srv_last, fe_rows[near], 1)
    # a server connection joined with doubt (several streams were possible) may belong to any
    # of them: its server activity explains a nearby HAProxy packet on any frontend flow
    amb = np.flatnonzero((leg == av.LEG_BACKEND) & (join.candidates > 1))
    if amb.size:
        acts = np.sort(np.concatenate((tl["last_data_ts"][amb, 1], tl["first_data_ts"][amb, 1],
                                       flows["fin_ts"][amb, 1])))
        acts = acts[acts >= 0]
        qe_all = tl["quiet_end_ts"]
        lo = np.searchsorted(acts, qe_all - FORWARD_WINDOW_NS, side="left")
        hi = np.searchsorted(acts, qe_all + PROPAGATION_SLACK_NS, side="right")
        srv_last = np.where(fe_quiet & (hi > lo), 1, srv_last)
    fe_quiet &= srv_last < 0
    # which timeout
    client_sent = (tl["first_data_ts"][:, 0] >= 0) & (tl["first_data_ts"][:, 0] < tl["quiet_end_ts"])
    fe_match_req = np.zeros(n_f, bool)
    fe_match_cli = np.zeros(n_f, bool)
    be_match = np.zeros(n_f, bool)
    if settings.known:
        t_req = np.where(fe_known, settings.fe_timeouts["http-request"][fe_i], -1)
        t_ka = np.where(fe_known, settings.fe_timeouts["http-keep-alive"][fe_i], -1)
        fe_match_req = fe_quiet & ~client_sent & (_matches(quiet, t_req) | _matches(quiet, t_ka)) & (mode_http_flow != 0)
        for name in ("client", "client-fin", "tunnel"):
            fe_match_cli |= fe_quiet & _matches(quiet, np.where(fe_known, settings.fe_timeouts[name][fe_i], -1))
        for name in BE_TIMEOUTS:
            be_match |= be_quiet & _matches(quiet, np.where(sv_known, settings.srv_timeouts[name][sv_i], -1))
    # `timeout http-request` runs from the accept, not from the last byte: a client trickling
    # an incomplete request (slowloris) is cut at accept + timeout however often it sends. On
    # the wire: HAProxy acts first (its 408 or FIN), no server connection was opened, at an
    # age matching the timeout (or, without the config, shared by other such flows).
    start_flow = np.where(flows["syn_ts"] >= 0, flows["syn_ts"], flows["first_ts"])
    first_act = tl["first_close_ts"].copy()
    resp = tl["first_data_ts"][:, 1]
    first_act = np.where((resp >= 0) & (resp < first_act), resp, first_act)
    age_act = first_act - start_flow
    no_back_flow = (back_hi - back_lo) == 0
    fe_age = (is_front_flow & (tl["first_close_ts"] >= 0) & (tl["first_close_dir"] == 1) & no_back_flow
              & (age_act >= QUIET_MIN_NS) & (mode_http_flow != 0))
    if settings.known:
        t_req = np.where(fe_known, settings.fe_timeouts["http-request"][fe_i], -1)
        fe_age_match = fe_age & _matches(age_act, t_req)
        fe_age = fe_age_match
    else:
        fe_age_match = np.zeros(n_f, bool)
        fe_age &= _clustered(age_act.astype(np.float64), fe_age)
    fe_quiet &= ~fe_age
    if settings.known:
        # with the config, a silence is a timeout only if it matches one
        fe_quiet &= ~fe_known | fe_match_req | fe_match_cli
        be_quiet &= ~sv_known | be_match
    fe_cluster = _clustered(quiet.astype(np.float64), fe_quiet)
    be_cluster = _clustered(quiet.astype(np.float64), be_quiet)
    fe_timeout_req = fe_match_req | (fe_quiet & ~fe_match_cli & ~client_sent & (mode_http_flow != 0)
                                     & ~(settings.known & fe_known))
    fe_timeout_conf = np.where(fe_match_req | fe_match_cli, 0.9, np.where(fe_cluster, 0.7, 0.55))
    be_timeout_conf = np.where(be_match, 0.9, np.where(be_cluster, 0.7, 0.55))
    fe_timeout_reason = np.where(fe_timeout_req | fe_age, R["haproxy_timeout_http_request"],
                                 R["haproxy_timeout_client"])
    fe_timeout_conf = np.where(fe_age, np.where(fe_age_match, 0.9, 0.7), fe_timeout_conf)
    fe_ev_ts = np.where(fe_quiet, tl["quiet_end_ts"], np.where(fe_age, first_act, -1))
    fe_ev_frame = np.where(fe_quiet, tl["quiet_end_frame"], np.where(fe_age, tl["first_close_frame"], 0))
    fe_timeout = fe_quiet | fe_age
    be_ev_ts = np.where(be_quiet, tl["quiet_end_ts"], -1)
    be_ev_frame = np.where(be_quiet, tl["quiet_end_frame"], 0)

    # Per frontend flow: earliest server-side fault among its backends (RST or server timeout).
    srv_fault_ts = np.full(n_f, -1, np.int64)
    srv_fault_frame = np.zeros(n_f, np.int64)
    srv_fault_kind = np.zeros(n_f, np.int8)  # 1 server RST, 2 server timeout, 3 network
    if back_order.size:
        fe_rows = front_of[back_order]
        for kind, ev_ts, ev_frame, extra in ((1, sv_ts, sv_frame, ~sv_net), (3, sv_ts, sv_frame, sv_net),
                                              (2, be_ev_ts, be_ev_frame, np.ones(n_f, bool))):
            t = ev_ts[back_order]
            ok = (t >= 0) & extra[back_order]
            better = ok & ((srv_fault_ts[fe_rows] < 0) | (t < srv_fault_ts[fe_rows]))
            # several backends of one frontend: keep the earliest (resolved by sorting)
            idx = np.flatnonzero(better)
            if idx.size:
                o = np.lexsort((t[idx], fe_rows[idx]))
                idx = idx[o]
                first = np.ones(idx.size, bool)
                first[1:] = fe_rows[idx][1:] != fe_rows[idx][:-1]
                idx = idx[first]
                srv_fault_ts[fe_rows[idx]] = t[idx]
                srv_fault_frame[fe_rows[idx]] = ev_frame[back_order][idx]
                srv_fault_kind[fe_rows[idx]] = kind

    # -- per-RST rule application -----------------------------------------------------------
    cause = np.zeros(n_r, np.uint8)
    reason = np.zeros(n_r, np.uint8)
    routine = np.zeros(n_r, bool)
    origin = np.zeros(n_r, np.uint8)
    conf = np.zeros(n_r, np.float32)
    caused_by = np.zeros(n_r, np.int64)
    delay = np.full(n_r, -1, np.int64)
    todo = np.ones(n_r, bool)
    tags: list[tuple[str, np.ndarray, np.ndarray | None]] = []

    def assign(mask, c, r, confidence, is_routine=False, propagated=False, by=None, by_ts=None):
        nonlocal todo
        m = mask & todo
        cause[m] = np.broadcast_to(c, n_r)[m]
        reason[m] = np.broadcast_to(r, n_r)[m]
        conf[m] = np.broadcast_to(confidence, n_r)[m]
        routine[m] = is_routine
        if propagated:
            origin[m] = av.ORIGIN_PROPAGATED
        if by is not None:
            caused_by[m] = by[m]
            delay[m] = ts[m] - by_ts[m]
        todo = todo & ~m
        return m

    def tag(name, mask, values=None):
        tags.append((name, mask, values))

    # 1. middlebox
    m = assign(network, C["network"], R["middlebox_injected"], np.minimum(0.5 + 0.25 * net_score, 0.95))
    sender[m] = av.ROLE_NETWORK
    tag("ttl_mismatch", m & ttl_mismatch, ttl - base)
    tag("sender_continued", m & continued)
    tag("faster_than_rtt", m & too_fast, idle_rx)
    tag("seq_out_of_window", m & out_of_window)

    fe_flow_http = mode_http_flow[row]
    haproxy_fe = fe_leg & (sender == av.ROLE_HAPROXY)
    haproxy_be = be_leg & (sender == av.ROLE_HAPROXY)
    server_be = be_leg & (sender == av.ROLE_SERVER)
    client_fe = fe_leg & (sender == av.ROLE_CLIENT)
    r_fe_idx = fe_idx_flow[row]
    r_fe_i = np.maximum(r_fe_idx, 0)
    r_fe_known = r_fe_idx >= 0
    r_sv = srv_flow[row]
    r_sv_i = np.maximum(r_sv, 0)
    r_sv_known = r_sv >= 0

    # 2. silent-drop
    cfg_sd = r_fe_known & settings.fe_silent_drop[r_fe_i]
    m = assign(haproxy_fe & ttl_one, C["haproxy"], R["haproxy_silent_drop"], np.where(cfg_sd, 0.98, 0.9))
    tag("ttl_one", m, ttl)
    tag("config_rule", m & cfg_sd)

    # 2b. HAProxy closing a health check on a server's check port
    is_check = check[row] if check is not None else np.zeros(n_r, bool)
    m = assign(haproxy_be & is_check, C["haproxy"], R["haproxy_check"], 0.95, is_routine=True)
    tag("config_rule", m)

    # 3. refusals
    refused = rsts["phase"] == fv.PHASE_REFUSED
    m = assign(server_be & refused, C["server"], R["server_refused"], 0.95)
    tag("refused_syn", m)
    m = assign(haproxy_fe & refused, C["haproxy"], R["haproxy_refused"], 0.8)
    tag("refused_syn", m)

    # 4. client RSTs
    fin_ts = flows["fin_ts"][row]
    haproxy_fin_before = (fin_ts[:, 1] >= 0) & (fin_ts[:, 1] < ts)
    m = assign(client_fe & haproxy_fin_before, C["client"], R["client_close"], 0.8)
    m = assign(client_fe, C["client"], R["client_abort"], 0.9)

    # 5. reject: HAProxy reset the accepted connection before sending anything, no server leg
    sent_nothing = (flows["payload_bytes"][row, 1] == 0) & ~haproxy_fin_before
    no_back = ~has_back[row]
    cfg_reject = r_fe_known & settings.fe_reject[r_fe_i]
    # 5a. ... unless the config has no rule that rejects there, and the frontend was full: with
    # `net.ipv4.tcp_abort_on_overflow = 1` the kernel resets a connection its full accept queue
    # cannot take (HAProxy at `maxconn` stops accepting); with the default 0 it drops the SYNs
    # and nothing shows (the lab's overload scenario).
    over = (haproxy_fe & sent_nothing & no_back & ~fe_quiet[row] & r_fe_known
            & ~settings.fe_reject[r_fe_i] & ~settings.fe_silent_drop[r_fe_i])
    open_before = _open_on_frontend(flows, leg, frontend, row, ts, over, r_fe_idx)
    limit = np.where(r_fe_known, settings.fe_maxconn[r_fe_i], -1)
    over &= (limit > 0) & (open_before >= limit)
    m = assign(over, C["haproxy"], R["haproxy_overload"], 0.8)
    tag("frontend_at_maxconn", m, open_before)
    tag("no_data_before_rst", m)
    # 5b. ... or the frontend's only rule is `silent-drop` (no reject): with CAP_NET_ADMIN
    # HAProxy drops the connection without a packet, and its kernel, whose socket is gone,
    # resets the client's next segment (a request, or its FIN seconds later), at normal TTL.
    cfg_sd_only = r_fe_known & settings.fe_silent_drop[r_fe_i] & ~settings.fe_reject[r_fe_i]
    m = assign(haproxy_fe & sent_nothing & no_back & ~fe_quiet[row] & cfg_sd_only,
               C["haproxy"], R["haproxy_silent_drop"], 0.85)
    tag("no_data_before_rst", m)
    tag("config_rule", m)
    m = assign(haproxy_fe & sent_nothing & no_back & ~fe_quiet[row],
               C["haproxy"], R["haproxy_reject"], np.where(cfg_reject, 0.95, 0.7))
    tag("no_data_before_rst", m)
    tag("config_rule", m & cfg_reject)

    # 6. client-side timeout on the frontend
    m = assign(haproxy_fe & fe_timeout[row], C["client"], fe_timeout_reason[row], fe_timeout_conf[row])
    tag("quiet_matches_timeout", m & (fe_match_req | fe_match_cli)[row], quiet[row])
    tag("quiet_cluster", m & fe_quiet[row] & ~(fe_match_req | fe_match_cli)[row] & fe_cluster[row], quiet[row])
    tag("age_matches_timeout", m & fe_age_match[row], age_act[row])
    tag("age_cluster", m & fe_age[row] & ~fe_age_match[row], age_act[row])

    # 6a. HAProxy answered the request itself (deny, request too large) and closed first, no
    # server connection: the RST is its kernel resetting what the client still sent
    haproxy_closed_first_fe = (tl["first_close_dir"][row] == 1) & (tl["first_close_ts"][row] <= ts)
    cfg_deny = r_fe_known & settings.fe_deny[r_fe_i]
    m = assign(haproxy_fe & no_back & haproxy_closed_first_fe & ~fe_timeout[row] & ~network,
               C["haproxy"], R["haproxy_deny"], np.where(cfg_deny, 0.85, 0.65))
    tag("config_rule", m & cfg_deny)

    # 6b. HAProxy's RST on a flow a middlebox already reset in the peer's name: the endpoint
    # behind the forged RST still talks, and HAProxy's kernel, whose socket is gone, answers
    # it with RSTs. The chain started in the network.
    net_in_flow = np.full(n_f, -1, np.int64)
    net_frame = np.zeros(n_f, np.int64)
    nr = np.flatnonzero(network)
    net_in_flow[:], net_frame[:] = _first_event(row[nr], ts[nr], rsts["frame"][nr], n_f)
    after_net = (haproxy_fe | haproxy_be) & (net_in_flow[row] >= 0) & (net_in_flow[row] <= ts)
    m = assign(after_net, C["network"], R["middlebox_injected"], 0.8, propagated=True,
               by=net_frame[row], by_ts=net_in_flow[row])
    tag("peer_leg_event", m)

    # 7a. HAProxy's RST to the client after a server-side fault on the joined backend
    sf_ts = srv_fault_ts[row]
    sf_kind = srv_fault_kind[row]
    after_sf = haproxy_fe & (sf_ts >= 0) & (sf_ts <= ts + PROPAGATION_SLACK_NS)
    sf_cause = np.where(sf_kind == 3, C["network"], C["server"])
    sf_reason = np.select([sf_kind == 1, sf_kind == 2, sf_kind == 3],
                          [R["server_abort"], R["haproxy_timeout_server"], R["middlebox_injected"]], 0)
    m = assign(after_sf, sf_cause, sf_reason, 0.8, propagated=True, by=srv_fault_frame[row], by_ts=sf_ts)
    tag("peer_leg_event", m)

    # 7b. HAProxy's RST to the server after a client-side event on the joined frontend
    fe_row = np.maximum(peer, 0)
    joined = be_leg & (peer >= 0)
    ambiguous_factor = np.where(join.candidates[row] > 1, 0.85, 1.0)
    ev_cl_ts = np.where(joined, cl_ts[fe_row], -1)
    after_cl = haproxy_be & (ev_cl_ts >= 0) & (ev_cl_ts <= ts + PROPAGATION_SLACK_NS)
    cl_cause = np.where(cl_net[fe_row], C["network"], C["client"])
    cl_reason = np.where(cl_net[fe_row], R["middlebox_injected"], R["client_abort"])
    m = assign(after_cl, cl_cause, cl_reason, 0.9 * ambiguous_factor, propagated=True,
               by=cl_frame[fe_row], by_ts=ev_cl_ts)
    tag("peer_leg_event", m)
    ev_to_ts = np.where(joined, fe_ev_ts[fe_row], -1)
    after_to = haproxy_be & (ev_to_ts >= 0) & (ev_to_ts <= ts + PROPAGATION_SLACK_NS)
    m = assign(after_to, C["client"], fe_timeout_reason[fe_row], fe_timeout_conf[fe_row] * ambiguous_factor,
               propagated=True, by=fe_ev_frame[fe_row], by_ts=ev_to_ts)
    tag("peer_leg_event", m)

    # 7d. HAProxy's kernel reset a server's SYN/ACK: the connecting socket was gone, HAProxy
    # had given up (`timeout connect`; a client abort would have been caught just above).
    # HAProxy logs sC (or retries): the server was too slow to accept, cause server.
    synack = flows["synack_ts"][row]
    answers_synack = (haproxy_be & (synack >= 0) & (synack <= ts)
                      & ((flows["hs_ack_ts"][row] < 0) | (flows["hs_ack_ts"][row] > ts))
                      & (flows["payload_bytes"][row, 0] == 0))
    connect_wait = synack - flows["syn_ts"][row]
    t_connect = np.where(r_sv_known, settings.srv_connect[r_sv_i], -1)
    late = (t_connect > 0) & (connect_wait >= t_connect - TIMEOUT_TOLERANCE_MIN_NS)
    m = assign(answers_synack, C["server"], R["haproxy_timeout_connect"],
               np.where(late, 0.9, 0.6))
    tag("late_synack", m, connect_wait)
    tag("quiet_matches_timeout", m & late, connect_wait)

    # 8. server timeout on the backend
    m = assign(haproxy_be & be_quiet[row], C["server"], R["haproxy_timeout_server"], be_timeout_conf[row])
    tag("quiet_matches_timeout", m & be_match[row], quiet[row])
    tag("quiet_cluster", m & ~be_match[row] & be_cluster[row], quiet[row])

    # 7c. HAProxy reset the server connection after the client closed its side (FIN) on the
    # joined frontend, before the server answered: `option abortonclose` takes the client's
    # FIN for an abort (HAProxy logs CC during the connect, CH while waiting for the response)
    # and resets the server connection right after it.
    # HAProxy's policy ended the exchange: cause haproxy, a fault (the request went unanswered).
    fe_fin_ts = np.where(joined, flows["fin_ts"][fe_row, 0], -1)
    fe_first_answer = np.where(joined, tl["first_data_ts"][fe_row, 1], -1)
    fe_answered_before_fin = (fe_first_answer >= 0) & (fe_first_answer < fe_fin_ts)  # e.g. a 504
    srv_silent = ~((tl["first_data_ts"][row, 1] >= 0) & (tl["first_data_ts"][row, 1] <= ts))
    # HAProxy acts on the FIN at once; a later RST (a server timeout) has another reason
    after_fin = (haproxy_be & (fe_fin_ts >= 0) & (fe_fin_ts <= ts + PROPAGATION_SLACK_NS)
                 & (ts - fe_fin_ts <= FORWARD_WINDOW_NS) & srv_silent & ~fe_answered_before_fin)
    m = assign(after_fin, C["haproxy"], R["haproxy_abort"], 0.75 * ambiguous_factor,
               by=tl["fin_frame"][fe_row, 0], by_ts=fe_fin_ts)
    tag("client_closed_first", m)
    tag("peer_leg_event", m)
    aborted_on_fin = m

    # 8b. HAProxy opened a server connection and reset it without sending anything, and no
    # client event explains it: a connect-only health check (`check` without httpchk). HAProxy
    # opens server connections for client streams only to send them a request.
    sent_nothing_be = flows["payload_bytes"][row, 0] == 0
    m = assign(haproxy_be & sent_nothing_be & (np.where(r_sv_known, settings.srv_check[r_sv_i], -1) != 0),
               C["haproxy"], R["haproxy_check"], 0.7, is_routine=True)
    tag("no_data_before_rst", m)

    # 9. server RSTs
    haproxy_closed_first = (tl["first_close_dir"][row] == 0) & (tl["first_close_ts"][row] < ts)
    m = assign(server_be & haproxy_closed_first, C["server"], R["server_close"], 0.5)
    m = assign(server_be, C["server"], R["server_abort"], 0.9)
    tag("response_in_flight", m & (rsts["phase"] == fv.PHASE_RESPONSE_IN_FLIGHT))
    tag("request_in_flight", m & (rsts["phase"] == fv.PHASE_REQUEST_IN_FLIGHT))

    # 10. routine closes
    outstanding_srv = rsts["outstanding"][:, 1]
    srv_sent = flows["payload_bytes"][row, 1] > 0
    complete_be = haproxy_be & srv_sent & (outstanding_srv == 0)
    check_flag = np.where(r_sv_known, settings.srv_check[r_sv_i], -1)
    unjoined = haproxy_be & (peer < 0)
    m = assign(unjoined & (check_flag != 0), C["haproxy"], R["haproxy_check"],
               np.where(check_flag == 1, 0.85, 0.5), is_routine=True)
    tag("unjoined_backend", m)
    be_nolinger = r_sv_known & settings.srv_nolinger[r_sv_i] & (np.where(r_sv_known, settings.srv_http[r_sv_i], -1) == 0)
    m = assign(complete_be, C["haproxy"], np.where(be_nolinger, R["haproxy_nolinger"], R["haproxy_server_close"]),
               np.where(joined, 0.85, 0.7), is_routine=True)
    tag("exchange_complete", m)
    client_fin_before = (fin_ts[:, 0] >= 0) & (fin_ts[:, 0] <= ts)
    fe_nolinger = r_fe_known & settings.fe_nolinger[r_fe_i]
    m = assign(haproxy_fe & (client_fin_before | haproxy_fin_before), C["haproxy"], R["haproxy_nolinger"],
               np.where(fe_nolinger, 0.85, 0.6), is_routine=True)
    tag("client_closed_first", m & client_fin_before)
    tag("config_rule", m & fe_nolinger)

    # 11. anything else HAProxy sent
    m = assign(haproxy_fe | haproxy_be, C["haproxy"], R["haproxy_abort"], 0.3)
    tag("not_joined", m & (peer < 0))
    assign(np.ones(n_r, bool), C["unknown"], R["unknown"], 0.1)

    # 12. follow-ups: a later RST from the same sender in the same flow repeats the first
    key_o = np.lexsort((rsts["frame"], side, row))
    first = np.ones(n_r, bool)
    first[1:] = (row[key_o][1:] != row[key_o][:-1]) | (side[key_o][1:] != side[key_o][:-1])
    head = np.empty(n_r, np.int64)
    head[key_o] = key_o[np.maximum.accumulate(np.where(first, np.arange(n_r), 0))]
    follow = np.zeros(n_r, bool)
    follow[key_o] = ~first
    follow &= sender[head] != av.ROLE_NETWORK
    follow &= ~network
    src = head[follow]
    for arr in (cause, reason, routine, origin, caused_by, conf):
        arr[follow] = arr[src]
    delay[follow] = np.where(caused_by[follow] > 0, delay[src] + (ts[follow] - ts[src]), -1)
    sender[follow] = sender[src]
    tag("same_flow_followup", follow, rsts["frame"][head])

    # RST bursts per server per second (faults only): a server falling over resets many
    # connections at once, a lone abort does not
    burst = np.zeros(n_r, np.int64)
    on_server = be_leg & (r_sv >= 0) & ~routine
    if on_server.any():
        key = r_sv[on_server].astype(np.int64) * (1 << 40) + ts[on_server] // 1_000_000_000
        uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
        burst[on_server] = counts[inv.ravel()]
    tag("server_rst_burst", burst >= BURST_MIN, burst)

    out["sender"] = sender
    out["cause"] = cause
    out["reason"] = reason
    out["routine"] = routine
    out["origin"] = origin
    out["caused_by_frame"] = caused_by
    out["delay_ns"] = delay
    out["confidence"] = conf

    # -- HAProxy termination state each RST corresponds to ------------------------------------
    fr = np.where(fe_leg, row, np.where(peer >= 0, peer, -1))
    b_first_start = np.full(n_f, -1, np.int64)
    if back_order.size:
        starts = np.where(flows["syn_ts"][back_order] >= 0, flows["syn_ts"][back_order], flows["first_ts"][back_order])
        o = np.lexsort((starts, front_of[back_order]))
        fr_rows = front_of[back_order][o]
        first_b = np.ones(o.size, bool)
        first_b[1:] = fr_rows[1:] != fr_rows[:-1]
        b_first_start[fr_rows[first_b]] = starts[o][first_b]
    # a server connection for the stream, even one opened after the client left (a queued
    # stream is served later): the request was complete, so HAProxy logs CD, not CR
    back_any = (fr >= 0) & (b_first_start[np.maximum(fr, 0)] >= 0)
    # any backend of the stream that got a response (a retry or redispatch succeeded)
    answered = np.zeros(n_f, bool)
    if back_order.size:
        ok = flows["payload_bytes"][back_order, 1] > 0
        answered[front_of[back_order][ok]] = True
    stream_answered = (fr >= 0) & answered[np.maximum(fr, 0)]
    http_or_unknown = fe_flow_http != 0
    srv_payload_before = (tl["first_data_ts"][row, 1] >= 0) & (tl["first_data_ts"][row, 1] < ts)
    # a forged RST is logged by HAProxy as an abort of the side whose address it carries
    forged_side = np.where(fe_leg & from_init, 1, np.where(be_leg & ~from_init, 2, 0))
    # per stream: its first server response (any of its backends), its client's FIN
    b_first_resp = np.full(n_f, -1, np.int64)
    if back_order.size:
        resp_t = tl["first_data_ts"][back_order, 1]
        has = resp_t >= 0
        o = np.lexsort((resp_t[has], front_of[back_order][has]))
        fr_r = front_of[back_order][has][o]
        first_r = np.ones(o.size, bool)
        first_r[1:] = fr_r[1:] != fr_r[:-1]
        b_first_resp[fr_r[first_r]] = resp_t[has][o][first_r]
    fr_i = np.maximum(fr, 0)
    stream_resp = np.where(fr >= 0, b_first_resp[fr_i], -1)
    no_response_yet = (stream_resp < 0) | (stream_resp > ts)
    client_fin_ts = np.where(fr >= 0, flows["fin_ts"][fr_i, 0], -1)
    client_fin_first = (client_fin_ts >= 0) & (client_fin_ts <= ts)
    # a request that waited without a server connection or an answer, on a frontend whose
    # servers have `maxconn`: the stream was queued (CQ), not an incomplete request (CR)
    asked = np.where(fr >= 0, tl["first_data_ts"][fr_i, 0], -1)
    answered_fe = np.where(fr >= 0, tl["first_data_ts"][fr_i, 1], -1)
    waited = (asked >= 0) & (ts - asked > QUEUE_WAIT_MIN_NS) & ((answered_fe < 0) | (answered_fe > ts))
    r_fe_queue = r_fe_known & settings.fe_queue[r_fe_i]
    queued = waited & r_fe_queue
    be_sent_nothing = flows["payload_bytes"][row, 0] == 0
    # A forged RST is logged by HAProxy as an abort of the side whose address it carries;
    # a propagated one by the side of the forged RST at the root of its chain.
    by_frame = np.argsort(rsts["frame"], kind="stable")
    at = np.minimum(np.searchsorted(rsts["frame"][by_frame], caused_by), n_r - 1)
    root = np.where((origin != 0) & (rsts["frame"][by_frame][at] == caused_by), by_frame[at], np.arange(n_r))
    eff = reason.astype(np.int64)
    forged = eff == R["middlebox_injected"]
    eff = np.where(forged & (forged_side[root] == 1), R["client_abort"],
                   np.where(forged & (forged_side[root] == 2), R["server_abort"], eff))
    state = np.array([av.REASON_TERMINATION.get(name, "") for name in av.REASON_NAMES], "U2")[eff]
    is_ca = eff == R["client_abort"]
    srv_side = (eff == R["server_abort"]) | (eff == R["haproxy_timeout_server"])
    no_request_stage = is_ca & http_or_unknown & ~back_any & (origin == 0)
    rules = [  # (mask, state), first match wins
        (no_request_stage & queued, "CQ"),
        (no_request_stage, "CR"),
        (is_ca & http_or_unknown & client_fin_first & no_response_yet, "CH"),  # abortonclose
        (is_ca, "CD"),
        (srv_side & http_or_unknown & ~srv_payload_before, "H"),  # SH / sH: no response header yet
        (srv_side, "D"),
        ((eff == R["server_refused"]) & stream_answered, "--"),
        ((eff == R["haproxy_reject"]) & r_fe_known & settings.fe_content_reject[r_fe_i], "PR"),
        (aborted_on_fin & be_sent_nothing, "CC"),
        (aborted_on_fin, "CH"),
    ]
    first_letter = np.where(eff == R["server_abort"], "S", "s")
    for mask, value in reversed(rules):
        state = np.where(mask, np.strings.add(first_letter, value) if value in ("H", "D") else value, state)
    state[is_check] = ""  # health checks are not streams: HAProxy logs state changes, not them
    termination = state.tolist()
    evidence = _evidence_text(tags, rsts["phase"], caused_by, n_r)
    return RstAttribution(out, termination, Evidence(evidence))


SECONDS_TAGS = ("quiet_matches_timeout", "quiet_cluster", "age_matches_timeout", "age_cluster")
MILLISECONDS_TAGS = ("faster_than_rtt", "late_synack")


class Evidence(Sequence):
    """Per RST, its evidence tags, kept as one ';'-joined string per RST (built with numpy
    string operations); indexing gives the list of tags."""

    def __init__(self, text: np.ndarray) -> None:
        self.text = text

    def __len__(self) -> int:
        return int(self.text.shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [str(t).split(";") for t in self.text[i].tolist()]
        return str(self.text[i]).split(";")


def _decimal(values: np.ndarray, unit_ns: float, suffix: str) -> np.ndarray:
    """values (ns) in `unit_ns` units with 3 decimals, as strings, without a Python loop."""
    milli = np.rint(values.astype(np.float64) / (unit_ns / 1000)).astype(np.int64)
    sign = np.where(milli < 0, "-", "")
    milli = np.abs(milli)
    whole = (milli // 1000).astype(np.dtypes.StringDType())
    frac = np.strings.zfill((milli % 1000).astype(np.dtypes.StringDType()), 3)
    return np.strings.add(np.strings.add(np.strings.add(sign, whole), "."), np.strings.add(frac, suffix))


def _evidence_text(tags: list, phase: np.ndarray, caused_by: np.ndarray, n: int) -> np.ndarray:
    """One ';'-joined evidence string per RST: `phase:<name>`, the tags in rule order (with
    their values), `caused_by_frame:<frame>`. RSTs are grouped by the pattern of tags that
    apply to them; each pattern's text is assembled once per tag over its rows, so the cost
    is numpy string operations over (RSTs x tags per RST), not a Python loop per RST."""
    string = np.dtypes.StringDType()
    names = np.array(["phase:" + p for p in fv.PHASE_NAMES], dtype=string)
    text = names[phase]
    if not tags:
        return text
    applies = np.stack([np.broadcast_to(mask, (n,)) for _, mask, _ in tags])  # (tags, RSTs)
    packed = np.ascontiguousarray(np.packbits(applies, axis=0).T)
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    patterns, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(patterns.shape[0] + 1))
    for p in range(patterns.shape[0]):
        rows = order[bounds[p]:bounds[p + 1]]
        part = text[rows]
        static = ""  # tags without values are text shared by the whole pattern
        for t in np.flatnonzero(applies[:, rows[0]]).tolist():
            name, _, values = tags[t]
            if values is None:
                static += ";" + name
                continue
            v = np.broadcast_to(values, (n,))[rows]
            if name in SECONDS_TAGS:
                shown = _decimal(v, 1e9, "s")
            elif name in MILLISECONDS_TAGS:
                shown = _decimal(v, 1e6, "ms")
            else:
                shown = v.astype(np.int64).astype(string)
            part = np.strings.add(np.strings.add(part, f"{static};{name}:"), shown)
            static = ""
        text[rows] = np.strings.add(part, static) if static else part
    caused = np.flatnonzero(caused_by > 0)
    text[caused] = np.strings.add(np.strings.add(text[caused], ";caused_by_frame:"),
                                  caused_by[caused].astype(string))
    return text


MODE_MIN_STREAMS = 2  # answered single-connection streams needed on a frontend endpoint
MODE_SHARE = 0.9


def _endpoint_key(flows: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    return (flows["responder_hi"][rows].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            ^ flows["responder_lo"][rows].astype(np.uint64)
            ^ (flows["responder_port"][rows].astype(np.uint64) << np.uint64(48)))


def infer_mode(flows: np.ndarray, leg: np.ndarray, front_of: np.ndarray,
               proxy_len: np.ndarray | None = None) -> np.ndarray:
    """Per flow: 1 http mode, 0 tcp mode, -1 unknown, from payload sizes alone. In tcp mode
    HAProxy forwards the bytes unchanged: a stream served by one server connection carries
    exactly as many bytes each way on both legs. In http mode HAProxy re-writes the headers it
    forwards (connection handling, added headers), so the counts differ. A frontend endpoint
    (address, port) where MODE_SHARE of at least MODE_MIN_STREAMS answered streams are
    byte-identical is tcp, where MODE_SHARE differ is http (lab: 100% either way on every
    endpoint); its backend flows take its mode. Unknown otherwise (the rules then treat the
    flow as http-or-unknown). `proxy_len`: per flow, the PROXY protocol header HAProxy sent
    before the stream's bytes (tracer.attribution.payload), not counted."""
    out = np.full(flows.shape[0], -1, np.int8)
    backs = np.flatnonzero((leg == av.LEG_BACKEND) & (front_of >= 0))
    if backs.size == 0:
        return out
    fronts = front_of[backs]
    u, counts = np.unique(fronts, return_counts=True)
    single = np.isin(fronts, u[counts == 1]) & (flows["payload_bytes"][backs, 1] > 0)
    backs, fronts = backs[single], fronts[single]
    if backs.size == 0:
        return out
    sent = flows["payload_bytes"][backs, 0].astype(np.int64)
    if proxy_len is not None:
        sent = sent - proxy_len[backs]
    same = ((sent == flows["payload_bytes"][fronts, 0])
            & (flows["payload_bytes"][backs, 1] == flows["payload_bytes"][fronts, 1]))
    uniq, inv = np.unique(_endpoint_key(flows, fronts), return_inverse=True)
    inv = inv.ravel()
    n = np.bincount(inv, minlength=uniq.size)
    identical = np.bincount(inv, weights=same, minlength=uniq.size)
    enough = n >= MODE_MIN_STREAMS
    mode = np.select([enough & (identical >= MODE_SHARE * n), enough & (n - identical >= MODE_SHARE * n)],
                     [0, 1], -1)
    on_front = leg == av.LEG_FRONTEND
    f_key = _endpoint_key(flows, slice(None))
    pos = np.minimum(np.searchsorted(uniq, f_key), uniq.size - 1)
    known = on_front & (uniq[pos] == f_key)
    out[known] = mode[pos[known]]
    joined = (leg == av.LEG_BACKEND) & (front_of >= 0)
    out[joined] = out[front_of[joined]]
    return out


def _open_on_frontend(flows: np.ndarray, leg: np.ndarray, frontend: np.ndarray, row: np.ndarray,
                      ts: np.ndarray, wanted: np.ndarray, fe_of_rst: np.ndarray) -> np.ndarray:
    """Per RST (where `wanted`): how many other connections to its frontend were open on the
    wire at its time (started, not yet ended). A loop over frontends, searchsorted inside."""
    out = np.zeros(ts.shape[0], np.int64)
    if not wanted.any():
        return out
    start = np.where(flows["syn_ts"] >= 0, flows["syn_ts"], flows["first_ts"])
    for f in np.unique(fe_of_rst[wanted]).tolist():
        if f < 0:
            continue
        mine = (leg == av.LEG_FRONTEND) & (frontend == f)
        starts, ends = np.sort(start[mine]), np.sort(flows["last_ts"][mine])
        q = np.flatnonzero(wanted & (fe_of_rst == f))
        own = 1  # the RST's own connection started before it and ends with it
        out[q] = (np.searchsorted(starts, ts[q], side="right") - np.searchsorted(ends, ts[q], side="left")) - own
    return out


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray, missing: int) -> np.ndarray:
    """values for query keys in sorted `keys`; `missing` where absent."""
    out = np.full(query.shape[0], missing, np.int64)
    if keys.size == 0 or query.size == 0:
        return out
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    hit = keys[pos] == query
    out[hit] = values[pos[hit]]
    return out


def host_min_rtt(rtts: np.ndarray, flows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per host (as `address_key`, sorted), the minimum RTT measured from the capture point to
    it and back."""
    if rtts.shape[0] == 0 or flows.shape[0] == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    row = np.searchsorted(flows["flow_id"], rtts["flow_id"])
    row = np.minimum(row, flows.shape[0] - 1)
    ok = flows["flow_id"][row] == rtts["flow_id"]
    row = row[ok]
    responder = rtts["side"][ok] == 1
    hi = np.where(responder, flows["responder_hi"][row], flows["initiator_hi"][row])
    lo = np.where(responder, flows["responder_lo"][row], flows["initiator_lo"][row])
    keys = address_key(hi, lo)
    if keys.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    o = np.argsort(keys, kind="stable")
    keys, rtt = keys[o], rtts["rtt_ns"][ok][o]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.minimum.reduceat(rtt, starts)

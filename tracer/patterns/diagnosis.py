"""The ranked diagnosis: findings from the patterns and the RST attribution (pure).

Rules: every finding is a plain dict (see docs/json-schema.md, `findings`) with severity,
title, what was seen (numbers, time window, server/leg/clients), the evidence frames, the
likely root cause (`client`, `haproxy`, `server`, `network`), the HAProxy setting or the
component to check (with its configured value when the config was given) and the action.
Findings come from these detectors, each a vectorized pass over the per-flow facts or the RST
attribution table:

1. fault RSTs grouped by reason (and by server address for server-side reasons): client
   aborts, server resets and refusals, HAProxy's rejects/denies/silent-drops (with the sources
   they cluster on: rate limiting), middlebox RSTs (with their TTL signature), connect
   timeouts, overload;
2. idle timeouts, from the flows whether they ended with an RST or a FIN: HAProxy closed
   first, after a silence that ended with its own packet and matches a configured timeout
   (`timeout http-request` / `client` / `http-keep-alive` on the frontend, `timeout server`
   on the backend while the server owed a response); without a config, silences of the same
   length in several flows (a timeout peak);
3. SYNs: client SYNs HAProxy answered only after a resend or never (its accept queue was full:
   `maxconn`), server SYNs never answered (`timeout connect`, the server or the path down) or
   answered late;
4. streams HAProxy answered itself without opening a server connection: queue timeouts
   (`timeout queue`, server `maxconn`), `http-request deny/reject`, `tcp-request content
   reject`, or no server available;
5. loss per leg, localized against the capture point and to one server's path when it
   concentrates there;
6. anomaly windows (RST bursts, loss and RTT p99 spikes, refusals), and the overload
   correlation: a server's handshake RTT rising before its RSTs or refusals;
7. `option nolinger` turning closes into RSTs, and the routine closes (severity `info`,
   never counted as faults).

Ranking: score = share of client streams affected (frontend flows; all flows when no leg is
known) x a weight for how actionable the cause is (server, network and HAProxy faults 1, HAProxy
policies doing their job 0.6, clients 0.5), for loss min(1, 10 x loss rate). Severity from the
score: critical >= 0.5, high >= 0.15, medium >= 0.03, low otherwise, info for routine closes.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from tracer.attribution import vocab as av
from tracer.attribution.config import Config, Proxy
from tracer.flows import vocab as fv
from tracer.packet import format_address

R = av.REASON
MAX_FRAMES = 20
TIMEOUT_TOLERANCE = 0.05
TIMEOUT_TOLERANCE_MIN_NS = 50_000_000
SEVERITIES = ("critical", "high", "medium", "low", "info")

# reason -> (weight, setting, action). {server} and {value} are filled in.
REASON_ADVICE = {
    "client_abort": (0.5, "clients", "Clients reset while a request or response was under way. "
                     "If they give up waiting, look at server response time (RTT and timeout "
                     "findings); `option abortonclose` lets HAProxy drop requests whose client left."),
    "client_close": (0.3, "clients", "Clients reset idle connections; usually harmless (client "
                     "connection pools closing with RST)."),
    "server_abort": (1.0, "server {server}", "The server reset connections before or during its "
                     "response (HAProxy logs SH/SD): check its application logs and crashes at "
                     "these times, and its capacity."),
    "server_close": (0.6, "server {server}", "The server reset idle connections: check its "
                     "keep-alive / idle timeout against HAProxy's (`timeout server`, `http-reuse`)."),
    "server_refused": (1.0, "server {server}", "The server's port refused connections (not "
                       "listening): check the service; enable health checks (`check`) so HAProxy "
                       "stops sending to it (`option redispatch` retries elsewhere)."),
    "haproxy_reject": (0.6, "tcp-request connection reject", "HAProxy rejected these connections "
                       "by rule{clustered}: check the rule and its ACL (rate limits, deny lists) "
                       "if legitimate clients are hit."),
    "haproxy_deny": (0.6, "http-request deny / tune.bufsize", "HAProxy refused requests itself "
                     "(deny rules, or a request head larger than tune.bufsize) while the client was "
                     "still sending: check the rules and the request sizes."),
    "haproxy_silent_drop": (0.6, "tcp-request connection silent-drop", "HAProxy's silent-drop "
                            "fell back to an RST with TTL 1 (no CAP_NET_ADMIN){clustered}: check "
                            "the rule's ACL; give HAProxy CAP_NET_ADMIN to drop silently."),
    "haproxy_refused": (1.0, "bind", "The frontend port refused connections: HAProxy was not "
                        "listening (stopped, reloading, or a wrong bind)."),
    "haproxy_timeout_connect": (1.0, "timeout connect", "Server connections timed out: check the "
                                "server and the path to it; health checks take it out of rotation."),
    "haproxy_overload": (1.0, "maxconn", "A connection limit or queue ended streams: raise "
                         "`maxconn` / `timeout queue` or add server capacity."),
    "haproxy_nolinger": (0.3, "option nolinger", "`option nolinger` turns closes into RSTs; drop "
                         "it unless TIME_WAIT pressure requires it."),
    "haproxy_abort": (1.0, "HAProxy", "HAProxy reset connections for a reason not visible on the "
                      "wire: check HAProxy's log (termination state) and its resource limits."),
    "middlebox_injected": (1.0, "network path {path}", "RSTs were forged by a device on the path "
                           "(firewall, IPS, load balancer, NAT){ttl}: find it by its TTL distance "
                           "and check its idle timeouts and rules."),
    "unknown": (0.5, None, "No rule explained these RSTs; see the per-RST evidence."),
    "haproxy_timeout_client": (0.5, "timeout client", ""),
    "haproxy_timeout_http_request": (0.5, "timeout http-request", ""),
    "haproxy_timeout_server": (1.0, "timeout server", ""),
}
TIMEOUT_REASONS = {R["haproxy_timeout_client"]: "client", R["haproxy_timeout_http_request"]: "http-request",
                   R["haproxy_timeout_server"]: "server"}
SERVER_REASONS = {R["server_abort"], R["server_close"], R["server_refused"], R["haproxy_timeout_connect"]}
ROUTINE_SETTING = {"haproxy_server_close": "option http-server-close", "haproxy_check": "health checks",
                   "haproxy_nolinger": "option nolinger"}


def severity_of(score: float, routine: bool = False) -> str:
    if routine:
        return "info"
    if score >= 0.5:
        return "critical"
    if score >= 0.15:
        return "high"
    if score >= 0.03:
        return "medium"
    return "low"


def duration_text(ns: int) -> str:
    if ns % 1_000_000_000 == 0:
        return f"{ns // 1_000_000_000}s"
    if ns % 1_000_000 == 0:
        return f"{ns // 1_000_000}ms"
    return f"{ns / 1e9:g}s"


class _Context:
    def __init__(self, p, config: Config | None) -> None:
        self.p = p
        self.a = p.attribution
        self.ff = p.facts
        self.config = config if (config is not None and self.a.topology.source == "config") else None
        self.t = self.a.result.table
        self.rsts = self.a.rsts
        front = self.ff["leg"] == av.LEG_FRONTEND
        self.streams = int(front.sum()) or int(self.ff.shape[0]) or 1
        self.flows = self.a.flows
        self.claimed = np.zeros(self.ff.shape[0], bool)  # frontend rows explained by a finding

    def frontend_proxy(self, index: int) -> Proxy | None:
        if self.config is None or index < 0:
            return None
        fronts = self.config.frontends
        return fronts[index] if index < len(fronts) else None

    def backend_proxy(self, server: int) -> Proxy | None:
        if self.config is None or server < 0:
            return None
        return self.config.backend(self.a.topology.servers[server].backend)

    def server_label(self, servers: np.ndarray) -> tuple[str, str | None]:
        """A name for a set of server indices: entries sharing one address:port named together."""
        topo = self.a.topology
        ks = sorted({int(k) for k in servers.tolist() if k >= 0})
        if not ks:
            return "unknown server", None
        names = [self.p.server_names[k] for k in ks]
        s = topo.servers[ks[0]]
        addr = None
        if s.address is not None and len({(topo.servers[k].address, topo.servers[k].port) for k in ks}) == 1:
            text = format_address(*s.address)
            addr = f"{text}:{s.port}" if s.port else text
        label = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        return (f"{label} ({addr})" if addr else label), addr

    def client_stream(self, rst_idx: np.ndarray) -> np.ndarray:
        """The client stream (frontend flow row) behind each RST; the RST's own flow otherwise."""
        t = self.t[rst_idx]
        peer = t["peer_flow_row"]
        front = t["leg"] == av.LEG_FRONTEND
        return np.where(front | (peer < 0), t["flow_row"], peer)

    def clients(self, rows: np.ndarray) -> tuple[list[str], bool]:
        """Top client addresses of frontend flow rows, and whether they cluster on few sources."""
        rows = rows[self.ff["leg"][rows] == av.LEG_FRONTEND] if rows.size else rows
        if rows.size == 0:
            return [], False
        f = self.flows[rows]
        key = np.stack((f["initiator_hi"], f["initiator_lo"]), axis=1)
        uniq, counts = np.unique(key, axis=0, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:3]
        top = [f"{format_address(*uniq[i].tolist())} ({int(counts[i])})" for i in order]
        total_clients = np.unique(np.stack((self.flows["initiator_hi"][self.ff["leg"] == av.LEG_FRONTEND],
                                            self.flows["initiator_lo"][self.ff["leg"] == av.LEG_FRONTEND]),
                                           axis=1), axis=0).shape[0]
        clustered = rows.size >= 3 and counts[order[0]] >= 0.8 * rows.size and total_clients > 1
        return top, bool(clustered)

    def window(self, ts_ns: np.ndarray) -> dict | None:
        if ts_ns.size == 0:
            return None
        return {"start_ts": round(int(ts_ns.min()) / 1e9, 6), "end_ts": round(int(ts_ns.max()) / 1e9, 6)}


def _frames(frames: np.ndarray) -> list[int]:
    f = np.unique(frames[frames > 0])
    return f[:MAX_FRAMES].astype(np.int64).tolist()


def _finding(ctx: _Context, *, kind: str, cause: str, setting: str | None, title: str, seen: str,
             action: str, score: float, count: int, affected: int, frames: np.ndarray,
             ts_ns: np.ndarray, leg: str | None = None, server: str | None = None,
             clients: list[str] | None = None, configured: str | None = None,
             routine: bool = False, **extra) -> dict:
    return {
        "severity": severity_of(score, routine),
        "score": round(float(score), 4),
        "kind": kind,
        "title": title,
        "cause": cause,
        "setting": setting,
        "configured": configured,
        "action": action,
        "seen": seen,
        "window": ctx.window(ts_ns),
        "evidence_frames": _frames(frames),
        "leg": leg,
        "server": server,
        "clients": clients or [],
        "count": int(count),
        "affected_streams": int(affected),
        "routine": routine,
        **extra,
    }


def clock(ts_s: float, *, with_date: bool = False) -> str:
    """A capture time as people read it (UTC, to the millisecond)."""
    moment = datetime.fromtimestamp(ts_s, UTC)
    text = moment.strftime("%Y-%m-%d %H:%M:%S.%f" if with_date else "%H:%M:%S.%f")[:-3]
    return text


def window_text(w: dict) -> str:
    """`2026-11-22 02:24:43.518 - 02:24:44.221 UTC` (the date again only if it changes)."""
    start, end = w["start_ts"], w["end_ts"]
    same_day = clock(start, with_date=True)[:10] == clock(end, with_date=True)[:10]
    return f"{clock(start, with_date=True)} - {clock(end, with_date=not same_day)} UTC"


def _span(w: dict | None) -> str:
    if not w:
        return ""
    return f" between {clock(w['start_ts'])} and {clock(w['end_ts'])} UTC"


# -- 1. fault RSTs by reason ------------------------------------------------------------------

def _rst_groups(ctx: _Context) -> list[dict]:
    t = ctx.t
    out = []
    if t.shape[0] == 0:
        return out
    faults = np.flatnonzero(~t["routine"] & ~np.isin(t["reason"], list(TIMEOUT_REASONS)))
    if faults.size == 0:
        return out
    topo = ctx.a.topology
    # server-side reasons: one group per server address:port (one server listed in several
    # backends is one machine); health checks apart from traffic
    addr_key = np.full(t.shape[0], -1, np.int64)
    if topo.servers:
        addrs = {}
        codes = []
        for s in topo.servers:
            k = (s.address, s.port)
            codes.append(addrs.setdefault(k, len(addrs)))
        codes = np.array(codes + [-1], np.int64)
        addr_key = codes[t["server"]]
    check = ctx.ff["check"][t["flow_row"]]
    by_server = np.isin(t["reason"], list(SERVER_REASONS))
    key = np.where(by_server, addr_key, -1) * 2 + check.astype(np.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, r, k in zip(faults.tolist(), t["reason"][faults].tolist(), key[faults].tolist(), strict=True):
        groups.setdefault((r, k), []).append(i)
    for (reason_code, k), idx in groups.items():
        idx = np.array(idx)
        reason = av.REASON_NAMES[reason_code]
        weight, setting, action = REASON_ADVICE.get(reason, REASON_ADVICE["unknown"])
        sub = t[idx]
        causes, counts = np.unique(sub["cause"], return_counts=True)
        cause = av.CAUSE_NAMES[int(causes[np.argmax(counts)])]
        streams = np.unique(ctx.client_stream(idx))
        ctx.claimed[streams] = True
        ts_ns = ctx.rsts["ts_ns"][idx]
        legs = {av.LEG_NAMES[x] for x in sub["leg"].tolist()}
        leg = legs.pop() if len(legs) == 1 else None
        server_label, server_addr = ctx.server_label(sub["server"])
        is_check = bool(k % 2) if k >= 0 else False
        top, clustered = ctx.clients(streams)
        fill = {"server": server_label, "clustered": "", "ttl": "", "path": ""}
        if clustered:
            fill["clustered"] = f", clustered on a few sources ({', '.join(top[:2])}): rate limiting or an ACL"
        if reason == "middlebox_injected":
            deltas = [e.split(":", 1)[1] for i in idx.tolist() for e in ctx.a.result.evidence[i]
                      if e.startswith("ttl_mismatch:")]
            if deltas:
                vals, cnt = np.unique(np.array(deltas), return_counts=True)
                fill["ttl"] = (f"; TTL signature: {int(cnt.max())} of {idx.size} RSTs arrive with a TTL "
                               f"{vals[np.argmax(cnt)]} off their purported sender's other packets")
            fill["path"] = ("between clients and HAProxy" if leg == "frontend" else
                            "between HAProxy and its servers" if leg == "backend" else
                            "(both legs)")
        configured = None
        if reason == "haproxy_timeout_connect" and sub["server"][0] >= 0:
            b = ctx.backend_proxy(int(sub["server"][0]))
            if b is not None and "connect" in b.timeouts_ns:
                configured = duration_text(b.timeouts_ns["connect"])
        if is_check and reason == "server_refused":
            setting_text = f"health checks of {server_label}"
            action_text = ("The server refused HAProxy's health checks: its check port was closed, so "
                           "HAProxy marked it DOWN (see the log's server state lines): check the "
                           "service behind the check port.")
            title = f"Health checks refused by {server_label}: {idx.size} RSTs"
        else:
            setting_text = setting.format(**fill) if setting else None
            action_text = action.format(**fill)
            title = _rst_title(reason, idx.size, streams.size, server_label, leg)
        share = streams.size / ctx.streams
        seen = (f"{idx.size} fault RSTs ({reason}) on {streams.size} "
                f"{'client streams' if leg != 'backend' or (sub['peer_flow_row'] >= 0).any() else 'connections'}"
                f" ({share * 100:.1f}% of {ctx.streams}){_span(ctx.window(ts_ns))}"
                + (f"; leg {leg}" if leg else "; legs frontend and backend")
                + (f"; server {server_label}" if sub["server"].max() >= 0 else "")
                + (f"; clients {', '.join(top)}" if top else ""))
        propagated = int((sub["origin"] == av.ORIGIN_PROPAGATED).sum())
        if propagated:
            seen += f"; {propagated} of them HAProxy passing the event on to the other leg"
        out.append(_finding(ctx, kind="rst_" + reason, cause=cause, setting=setting_text,
                            title=title, seen=seen, action=action_text,
                            score=share * weight, count=idx.size, affected=streams.size,
                            frames=sub["frame"], ts_ns=ts_ns, leg=leg,
                            server=server_label if sub["server"].max() >= 0 else None,
                            clients=top, configured=configured, reason=reason))
    return out


_TITLES = {
    "client_abort": "Clients aborted {streams} streams ({n} RSTs)",
    "client_close": "Clients reset {streams} idle connections",
    "server_abort": "Server {server} reset {streams} connections mid-exchange",
    "server_close": "Server {server} reset {streams} idle connections",
    "server_refused": "Server {server} refused {n} connection attempts (port closed)",
    "haproxy_reject": "HAProxy rejected {streams} connections (tcp-request connection reject)",
    "haproxy_deny": "HAProxy denied {streams} requests while they were still being sent",
    "haproxy_silent_drop": "HAProxy silent-dropped {streams} connections (RST with TTL 1)",
    "haproxy_refused": "HAProxy's frontend refused {n} connections (not listening)",
    "haproxy_timeout_connect": "Connections to {server} timed out (timeout connect)",
    "haproxy_overload": "Connection limits ended {streams} streams",
    "haproxy_nolinger": "option nolinger reset {n} connections",
    "haproxy_abort": "HAProxy reset {n} connections (unexplained)",
    "middlebox_injected": "A middlebox forged {n} RSTs ({leg})",
    "unknown": "{n} RSTs without explanation",
}


def _rst_title(reason: str, n: int, streams: int, server: str, leg: str | None) -> str:
    return _TITLES.get(reason, _TITLES["unknown"]).format(n=n, streams=streams, server=server,
                                                          leg=f"{leg} leg" if leg else "both legs")


# -- 2. idle timeouts -------------------------------------------------------------------------

def _matches(quiet: np.ndarray, timeout: np.ndarray) -> np.ndarray:
    tol = np.maximum(timeout * TIMEOUT_TOLERANCE, TIMEOUT_TOLERANCE_MIN_NS)
    return (timeout > 0) & (np.abs(quiet - timeout) <= tol)


def _timeouts(ctx: _Context) -> list[dict]:
    ff = ctx.ff
    n = ff.shape[0]
    t = ctx.t
    front = ff["leg"] == av.LEG_FRONTEND
    back = ff["leg"] == av.LEG_BACKEND
    hdir = np.where(front, 1, 0)  # HAProxy is the frontend's responder, the backend's initiator
    closed_first = (ff["first_close_dir"] == hdir) & (ff["quiet_ns"] > 0) & (ff["quiet_end_dir"] == hdir)
    rst_timeout = np.full(n, -1, np.int64)
    if t.shape[0]:
        sel = np.isin(t["reason"], list(TIMEOUT_REASONS)) & ~t["routine"]
        rst_timeout[t["flow_row"][sel]] = t["reason"][sel]
    # per-row timeout values (ns) from the config: -1 unknown
    fe_vals = {k: np.full(n, -1, np.int64) for k in ("http-request", "client", "http-keep-alive")}
    srv_val = np.full(n, -1, np.int64)
    fe_http = np.zeros(n, bool)
    if ctx.config is not None:
        for i, proxy in enumerate(ctx.config.frontends):
            rows = ff["frontend"] == i
            fe_http[rows] = proxy.mode == "http"
            for k in fe_vals:
                fe_vals[k][rows] = proxy.timeouts_ns.get(k, -1)
        for k in range(len(ctx.a.topology.servers)):
            b = ctx.backend_proxy(k)
            if b is not None:
                srv_val[ff["server"] == k] = b.timeouts_ns.get("server", -1)
    else:
        fe_http[:] = False
    # backend: HAProxy closed first after a silence while the server owed a response
    owed = back & ff["client_data"]
    srv_match = back & closed_first & owed & _matches(ff["quiet_ns"], srv_val)
    srv_rows = srv_match | (rst_timeout == R["haproxy_timeout_server"])
    srv_rows &= back
    server_owed_front = np.zeros(n, bool)
    peers = ff["peer"][srv_rows]
    server_owed_front[peers[peers >= 0]] = True
    # frontend: the client owed the next move
    cand = front & closed_first & ~server_owed_front
    no_request = ff["backends"] == 0
    which = np.full(n, "", object)
    value = np.full(n, -1, np.int64)
    order = (("http-request", cand & fe_http & no_request),
             ("http-keep-alive", cand & fe_http & ~no_request),
             ("client", cand))
    for name, sel in order:
        m = sel & (which == "") & _matches(ff["quiet_ns"], fe_vals[name])
        which[m] = name
        value[m] = fe_vals[name][m]
    for code, name in TIMEOUT_REASONS.items():
        if name == "server":
            continue
        m = front & (rst_timeout == code) & (which == "")
        which[m] = name
        value[m] = fe_vals[name][m]
    if ctx.config is None:
        # no config: a timeout shows as a peak of equal silences before HAProxy's close
        for sel, name in ((cand & (which == ""), "client"),):
            rows = np.flatnonzero(sel)
            if rows.size >= 3:
                q = ff["quiet_ns"][rows]
                qs = np.sort(q)
                lo = np.searchsorted(qs, q * (1 - TIMEOUT_TOLERANCE))
                hi = np.searchsorted(qs, q * (1 + TIMEOUT_TOLERANCE), side="right")
                peak = rows[(hi - lo) >= 3]
                which[peak] = name
        srows = np.flatnonzero(back & closed_first & owed & ~srv_rows)
        if srows.size >= 3:
            q = ff["quiet_ns"][srows]
            qs = np.sort(q)
            lo = np.searchsorted(qs, q * (1 - TIMEOUT_TOLERANCE))
            hi = np.searchsorted(qs, q * (1 + TIMEOUT_TOLERANCE), side="right")
            srv_rows[srows[(hi - lo) >= 3]] = True
    out = []
    client_rows = np.flatnonzero(which != "")
    names = sorted({str(w) for w in which[client_rows].tolist()},
                   key=lambda w: ("client", "http-request", "http-keep-alive").index(w))
    for name in names:
        rows = client_rows[which[client_rows] == name]
        out.append(_timeout_finding(ctx, rows, f"timeout {name}", value[rows], "client", "frontend"))
    if srv_rows.any():
        rows = np.flatnonzero(srv_rows)
        out.append(_timeout_finding(ctx, rows, "timeout server", srv_val[rows], "server", "backend"))
    return out


def _timeout_finding(ctx: _Context, rows: np.ndarray, setting: str, values: np.ndarray,
                     cause: str, leg: str) -> dict:
    ff = ctx.ff
    quiet = ff["quiet_ns"][rows]
    known = values[values > 0]
    configured = None
    if known.size:
        vals, counts = np.unique(known, return_counts=True)
        configured = duration_text(int(vals[np.argmax(counts)]))
    streams = np.where(ff["peer"][rows] >= 0, ff["peer"][rows], rows) if leg == "backend" else rows
    streams = np.unique(streams)
    ctx.claimed[streams] = True
    ends_rst = int((ff["rsts_fault"][rows] > 0).sum())
    q50 = float(np.median(quiet)) / 1e9 if quiet.size else 0.0
    top, _ = ctx.clients(streams)
    srv = ff["server"][rows]
    server_label = ctx.server_label(srv)[0] if (srv >= 0).any() else None
    frames = np.concatenate((ff["quiet_end_frame"][rows], ff["first_close_frame"][rows]))
    ts_ns = ff["first_ts"][rows]
    cfg = f" ({configured})" if configured else " (value not configured: inferred from a peak of equal silences)"
    if cause == "client":
        title = f"Idle clients cut by `{setting}`{cfg}: {rows.size} connections"
        action = (f"Clients stayed silent until HAProxy's `{setting}`{' of ' + configured if configured else ''} "
                  "expired and HAProxy closed. If these clients are legitimate (slow uploads, "
                  "keep-alive pools, long polls), raise it; if not, it is protecting HAProxy as intended.")
    else:
        title = f"Server {server_label} too slow for `{setting}`{cfg}: {rows.size} requests cut"
        action = (f"The server did not answer within `{setting}`{' (' + configured + ')' if configured else ''}: "
                  "HAProxy gave up (504 / sH, sD). Check the server's capacity and slow requests at "
                  "these times, or raise `timeout server` if such latency is expected.")
    seen = (f"{rows.size} {leg} connections closed first by HAProxy after a silence of "
            f"{q50:.3f} s (median){_span(ctx.window(ts_ns))}; {ends_rst} of them ended with an RST, "
            f"the rest with a FIN" + (f"; clients {', '.join(top)}" if top and cause == "client" else "")
            + (f"; server {server_label}" if server_label else ""))
    weight = 0.5 if cause == "client" else 1.0
    return _finding(ctx, kind="timeout", cause=cause, setting=setting, title=title, seen=seen,
                    action=action, score=streams.size / ctx.streams * weight, count=rows.size,
                    affected=streams.size, frames=frames, ts_ns=ts_ns, leg=leg, server=server_label,
                    clients=top if cause == "client" else [], configured=configured,
                    quiet_s_median=round(q50, 6))


# -- 3. SYNs ----------------------------------------------------------------------------------

def _syns(ctx: _Context) -> list[dict]:
    ff = ctx.ff
    out = []
    front = ff["leg"] == av.LEG_FRONTEND
    back = ff["leg"] == av.LEG_BACKEND
    late = front & ((ff["syn_retries"] > 0) | ff["unanswered_syn"])
    if late.sum() >= 1:
        rows = np.flatnonzero(late)
        ctx.claimed[rows] = True
        fes = np.unique(ff["frontend"][rows])
        limits = []
        for i in fes.tolist():
            proxy = ctx.frontend_proxy(i)
            if proxy is not None and proxy.maxconn:
                limits.append(f"{proxy.name} maxconn {proxy.maxconn}")
        if not limits and ctx.config is not None and ctx.config.global_maxconn:
            limits.append(f"global maxconn {ctx.config.global_maxconn}")
        names = ", ".join(ctx.p.frontend_names[i] for i in fes.tolist() if i >= 0) or "the frontend"
        unanswered = int(ff["unanswered_syn"][rows].sum())
        retries = int(ff["syn_retries"][rows].sum())
        top, _ = ctx.clients(rows)
        seen = (f"{rows.size} client connections to {names} had to resend their SYN ({retries} SYN "
                f"retries), {unanswered} never answered{_span(ctx.window(ff['first_ts'][rows]))}"
                + (f"; clients {', '.join(top)}" if top else ""))
        out.append(_finding(ctx, kind="syn_retries", cause="haproxy", setting="maxconn",
                            configured=", ".join(limits) or None,
                            title=f"Client SYNs dropped at {names}: accept queue full ({rows.size} connections delayed)",
                            seen=seen, action="HAProxy accepted no more connections (its `maxconn` reached, "
                            "the kernel's accept queue full) and the kernel dropped SYNs: clients waited "
                            "for their SYN retransmission (1 s, then 3 s). Raise `maxconn` (frontend or "
                            "global) if the servers can take it, or add capacity.",
                            score=rows.size / ctx.streams, count=retries + unanswered,
                            affected=rows.size, frames=ff["first_frame"][rows], ts_ns=ff["first_ts"][rows],
                            leg="frontend", clients=top))
    dead = back & ff["unanswered_syn"]
    for addr_rows in _by_server_address(ctx, np.flatnonzero(dead)):
        label, _ = ctx.server_label(ff["server"][addr_rows])
        peers = ff["peer"][addr_rows]
        streams = np.unique(peers[peers >= 0])
        ctx.claimed[streams] = True
        b = ctx.backend_proxy(int(ff["server"][addr_rows[0]]))
        configured = duration_text(b.timeouts_ns["connect"]) if b is not None and "connect" in b.timeouts_ns else None
        seen = (f"{addr_rows.size} SYNs from HAProxy to {label} got no answer at all (no SYN/ACK, no "
                f"RST){_span(ctx.window(ff['first_ts'][addr_rows]))}; {streams.size} client streams waited "
                f"for them")
        out.append(_finding(ctx, kind="connect_timeout", cause="server", setting="timeout connect",
                            configured=configured,
                            title=f"Server {label} does not answer SYNs: {addr_rows.size} connection attempts "
                            f"abandoned after `timeout connect`" + (f" ({configured})" if configured else ""),
                            seen=seen, action="HAProxy's connection attempts expired on `timeout connect`: the "
                            "server host is down or a firewall on the path between HAProxy and it drops "
                            "SYNs. Check it and the path; enable health checks (`check`) so HAProxy takes "
                            "it out of rotation, `option redispatch` to retry elsewhere.",
                            score=max(streams.size, 1) / ctx.streams, count=addr_rows.size,
                            affected=streams.size, frames=ff["first_frame"][addr_rows],
                            ts_ns=ff["first_ts"][addr_rows], leg="backend", server=label))
    slow = back & (ff["syn_retries"] > 0) & ~ff["unanswered_syn"] & (ff["state"] != fv.FLOW_REFUSED)
    for addr_rows in _by_server_address(ctx, np.flatnonzero(slow)):
        label, _ = ctx.server_label(ff["server"][addr_rows])
        seen = (f"{addr_rows.size} connections to {label} needed SYN retransmissions before the "
                f"server answered{_span(ctx.window(ff['first_ts'][addr_rows]))}")
        out.append(_finding(ctx, kind="server_syn_retries", cause="server", setting=f"server {label} capacity",
                            title=f"Server {label} answered SYNs late ({addr_rows.size} connections)",
                            seen=seen, action="The server's accept queue was full or SYNs were lost on the "
                            "way: check its listen backlog and load; a `maxconn` on the server line keeps "
                            "HAProxy from overrunning it.",
                            score=addr_rows.size / ctx.streams, count=int(ff["syn_retries"][addr_rows].sum()),
                            affected=addr_rows.size, frames=ff["first_frame"][addr_rows],
                            ts_ns=ff["first_ts"][addr_rows], leg="backend", server=label))
    return out


def _by_server_address(ctx: _Context, rows: np.ndarray) -> list[np.ndarray]:
    if rows.size == 0:
        return []
    flows = ctx.flows[rows]
    key = np.stack((flows["responder_hi"], flows["responder_lo"], flows["responder_port"].astype(np.uint64)), axis=1)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return [rows[inverse == g] for g in range(int(inverse.max()) + 1)]


# -- 4. streams HAProxy answered itself --------------------------------------------------------

def _answered_by_haproxy(ctx: _Context) -> list[dict]:
    ff = ctx.ff
    front = ff["leg"] == av.LEG_FRONTEND
    rows = np.flatnonzero(front & ff["client_data"] & (ff["backends"] == 0) & (ff["first_close_dir"] == 1)
                          & (ff["rsts_fault"] == 0) & ~ctx.claimed)
    if rows.size == 0:
        return []
    kind = np.full(rows.size, "", object)
    configured = {}
    if ctx.config is not None:
        for j, r in enumerate(rows.tolist()):
            proxy = ctx.frontend_proxy(int(ff["frontend"][r]))
            if proxy is None:
                continue
            quiet = int(ff["quiet_ns"][r])
            for b in ctx.config.routes(proxy):
                q = b.timeouts_ns.get("queue", b.timeouts_ns.get("connect", -1))
                if quiet > 0 and q > 0 and _matches(np.array([quiet]), np.array([q]))[0]:
                    kind[j] = "timeout queue"
                    limits = [f"{b.name}/{s.name} maxconn {s.maxconn}" for s in b.servers if s.maxconn]
                    configured["timeout queue"] = f"{duration_text(q)} ({b.name}" + (
                        f"; {', '.join(limits)})" if limits else ")")
                    break
            if kind[j]:
                continue
            if proxy.mode == "http" and any(x.keyword == "http-request" and x.action in ("deny", "reject")
                                            for x in proxy.rules):
                kind[j] = "http-request deny"
                acts = sorted({x.action for x in proxy.rules if x.keyword == "http-request"
                               and x.action in ("deny", "reject")})
                configured["http-request deny"] = ", ".join(f"http-request {x}" for x in acts)
            elif any(x.keyword == "tcp-request" and x.stage == "content" and x.action == "reject"
                     for x in proxy.rules):
                kind[j] = "tcp-request content reject"
    kind[kind == ""] = "no server"
    out = []
    texts = {
        "timeout queue": ("haproxy", 1.0, "Requests timed out in a server queue (`timeout queue`): 503 without a "
                          "server connection", "All server slots (`maxconn` on the server lines) were busy "
                          "longer than `timeout queue`: add server capacity, raise the servers' `maxconn`, or "
                          "lengthen `timeout queue` if waiting is acceptable."),
        "http-request deny": ("haproxy", 0.6, "HAProxy answered requests itself by its `http-request` rules "
                              "(no server connection)", "Requests matched `http-request deny/reject` rules: "
                              "check the rules' ACLs if legitimate clients are refused."),
        "tcp-request content reject": ("haproxy", 0.6, "HAProxy closed tcp streams by `tcp-request content "
                                       "reject` (no server connection)", "Check the rule and its ACL "
                                       "(e.g. request size limits)."),
        "no server": ("haproxy", 0.8, "HAProxy closed client streams without a server connection",
                      "HAProxy answered these requests itself (deny rules, no server available, a "
                      "limit): read HAProxy's log for the termination state; check health checks and "
                      "server availability."),
    }
    for name in ("timeout queue", "http-request deny", "tcp-request content reject", "no server"):
        sel = rows[kind == name]
        if sel.size == 0:
            continue
        cause, weight, title, action = texts[name]
        ctx.claimed[sel] = True
        top, clustered = ctx.clients(sel)
        quiet = np.median(ff["quiet_ns"][sel]) / 1e9 if sel.size else 0
        seen = (f"{sel.size} client streams sent a request and got HAProxy's own answer and close, no "
                f"server connection opened{_span(ctx.window(ff['first_ts'][sel]))}; median silence "
                f"before HAProxy's answer {quiet:.3f} s" + (f"; clients {', '.join(top)}" if top else ""))
        out.append(_finding(ctx, kind="haproxy_answered", cause=cause,
                            setting=None if name == "no server" else name,
                            configured=configured.get(name), title=f"{title}: {sel.size} streams",
                            seen=seen, action=action, score=sel.size / ctx.streams * weight,
                            count=sel.size, affected=sel.size, frames=ff["first_close_frame"][sel],
                            ts_ns=ff["first_ts"][sel], leg="frontend", clients=top))
    return out


# -- 5. loss ----------------------------------------------------------------------------------

def _loss(ctx: _Context) -> list[dict]:
    ff = ctx.ff
    out = []
    for code, leg in ((av.LEG_FRONTEND, "frontend"), (av.LEG_BACKEND, "backend"), (av.LEG_UNKNOWN, "unknown")):
        mine = ff["leg"] == code
        if not mine.any():
            continue
        before = ff["lost_before"][mine].sum(axis=0)
        after = ff["lost_after"][mine].sum(axis=0)
        missed = int(ff["missed"][mine].sum())
        data = int(ff["data_segments"][mine].sum())
        lost = int(before.sum() + after.sum())
        if lost < 3 or data == 0:
            continue
        rate = lost / data
        rows = np.flatnonzero(mine & ((ff["lost_before"].sum(axis=1) + ff["lost_after"].sum(axis=1)) > 0))
        where = {"frontend": "between clients and HAProxy", "backend": "between HAProxy and its servers",
                 "unknown": "of these flows"}[leg]
        server = None
        if leg == "backend":
            srv_lost = {}
            for r in rows.tolist():
                k = int(ff["server"][r])
                srv_lost[k] = srv_lost.get(k, 0) + int(ff["lost_before"][r].sum() + ff["lost_after"][r].sum())
            k, worst = max(srv_lost.items(), key=lambda kv: kv[1])
            if k >= 0 and len(srv_lost) > 0 and worst >= 0.7 * lost and len({ctx.a.topology.servers[x].address
                                                                              for x in srv_lost if x >= 0}) > 1:
                server, _ = ctx.server_label(np.array([k]))
                where = f"between HAProxy and {server}"
            elif k >= 0 and len({ctx.a.topology.servers[x].address for x in srv_lost if x >= 0}) == 1:
                server, _ = ctx.server_label(np.array([k]))
                where = f"between HAProxy and {server}"
        # direction 0 = from the initiator (client on the frontend, HAProxy on the backend)
        sender = ("the client", "HAProxy") if leg == "frontend" else ("HAProxy", "the server")
        seen = (f"{lost} segments lost of {data} data segments on the {leg} leg ({rate * 100:.2f}%): "
                f"{int(before.sum())} lost before the capture point (sent by {sender[1]} {int(before[1])}, "
                f"by {sender[0]} {int(before[0])}), {int(after.sum())} after it (resent by "
                f"{sender[0]} {int(after[0])}, by {sender[1]} {int(after[1])}), {missed} missed by the "
                f"capture only; {rows.size} connections affected")
        flows = ctx.flows[rows]
        out.append(_finding(ctx, kind="loss", cause="network", setting=f"network path {where}",
                            title=f"Packet loss on the {leg} leg {where}: {rate * 100:.2f}% of data segments",
                            seen=seen, action="Segments were lost and resent (each costs at least one RTO or a "
                            "fast-retransmit round trip): check the links, NICs, switch/router drops and "
                            "queue overflows on this path (interface error counters, `ethtool -S`, tc qdisc "
                            "drops).", score=min(1.0, 10 * rate), count=lost, affected=rows.size,
                            frames=flows["first_frame"], ts_ns=flows["first_ts"], leg=leg, server=server,
                            loss_rate=round(rate, 6), lost_before_capture=int(before.sum()),
                            lost_after_capture=int(after.sum()), missed_by_capture=missed))
    return out


def _zero_windows(ctx: _Context) -> list[dict]:
    ff = ctx.ff
    out = []
    for code, leg, who in ((av.LEG_FRONTEND, "frontend", ("clients", "HAProxy")),
                           (av.LEG_BACKEND, "backend", ("HAProxy", "servers"))):
        mine = ff["leg"] == code
        zw = ff["zero_windows"][mine].sum(axis=0)
        if zw.sum() < 3:
            continue
        side = int(np.argmax(zw))
        rows = np.flatnonzero(mine & (ff["zero_windows"][:, side] > 0))
        flows = ctx.flows[rows]
        receiver = who[side]
        out.append(_finding(ctx, kind="zero_window", cause="client" if receiver == "clients" else
                            "server" if receiver == "servers" else "haproxy",
                            setting="server capacity" if receiver == "servers" else
                            "tune.bufsize / HAProxy CPU" if receiver == "HAProxy" else "clients",
                            title=f"{receiver} advertised zero windows on the {leg} leg ({int(zw[side])} times)",
                            seen=f"{int(zw[side])} zero-window segments from the {receiver} on {rows.size} "
                            f"{leg} connections: the receiver could not read fast enough",
                            action="A receiver stopped reading: check its CPU and application read loop.",
                            score=rows.size / ctx.streams * 0.5, count=int(zw[side]), affected=rows.size,
                            frames=flows["first_frame"], ts_ns=flows["first_ts"], leg=leg))
    return out


# -- 6. anomaly windows and the overload correlation -------------------------------------------

def _anomaly_findings(ctx: _Context) -> list[dict]:
    out = []
    t = ctx.t
    rts = ctx.rsts["ts_ns"] if t.shape[0] else np.zeros(0, np.int64)
    for an in ctx.p.anomalies[:8]:
        start, end = int(an["start_ts"] * 1e9), int(an["end_ts"] * 1e9)
        in_win = (rts >= start) & (rts < end) & ~t["routine"] if t.shape[0] else np.zeros(0, bool)
        kind = an["kind"]
        frames = t["frame"][in_win] if t.shape[0] else np.zeros(0, np.int64)
        cause, setting = "unknown", None
        if in_win.any():
            c, k = np.unique(t["cause"][in_win], return_counts=True)
            cause = av.CAUSE_NAMES[int(c[np.argmax(k)])]
        where = an.get("server") or an.get("leg") or "all"
        if kind == "rst_burst":
            title = f"RST burst: {an['value']:.0f} fault RSTs in one bucket ({where}), baseline {an['baseline']:.0f}"
            setting = {"server": f"server {an['server']}" if an.get("server") else "servers",
                       "network": "network path", "haproxy": "HAProxy rules and limits",
                       "client": "clients"}.get(cause)
        elif kind == "refusals":
            title = f"Refusal burst: {an['value']:.0f} refused connections in one bucket"
            cause, setting = "server", "health checks"
        elif kind == "syn_retries":
            title = f"SYN retry burst: {an['value']:.0f} SYN retries in one bucket"
            cause, setting = "haproxy", "maxconn"
        elif kind == "loss_spike":
            title = f"Loss spike on the {where} leg: {an['value'] * 100:.1f}% (baseline {an['baseline'] * 100:.1f}%)"
            cause, setting = "network", f"network path ({where} leg)"
        else:
            title = (f"RTT p99 spike ({an.get('rtt') or 'server handshake'}, {where}): {an['value']:.1f} ms "
                     f"(baseline {an['baseline']:.1f} ms)")
            cause = "server" if an.get("server") or (an.get("leg") == "backend") else "network"
            setting = f"server {an['server']} capacity" if an.get("server") else f"network path ({where} leg)"
            if an.get("server"):
                # overload: the server's RSTs or refusals right after its RTT rose
                srv_series = ctx.p.timeseries["servers"].get(an["server"], {})
                bucket = ctx.p.timeseries["bucket_s"]
                i0 = int(round((an["start_ts"] - ctx.p.timeseries["start_ts"]) / bucket))
                after = sum((srv_series.get("rsts_fault") or [])[i0:i0 + 3]) + sum(
                    (srv_series.get("refused") or [])[i0:i0 + 3])
                if after:
                    title = (f"Server {an['server']} overloaded: its handshake RTT rose to {an['value']:.1f} ms, "
                             f"then {after} RSTs/refusals followed")
                    setting = f"server {an['server']} capacity (maxconn on the server line)"
        count = int(in_win.sum()) if kind == "rst_burst" else int(round(an["value"]))
        out.append(_finding(ctx, kind="anomaly_" + kind, cause=cause, setting=setting, title=title,
                            seen=(f"{kind.replace('_', ' ')} from {an['start_ts']:.3f} to {an['end_ts']:.3f}: "
                                  f"value {an['value']:g} against a rolling median of {an['baseline']:g} "
                                  f"(robust score {an['score']:g})"),
                            action="Look at this window first: the other findings with evidence in it "
                            "explain it.", score=min(0.1, max(count, 1) / ctx.streams * 0.5), count=count,
                            affected=0, frames=frames, ts_ns=np.array([start, end]),
                            leg=an.get("leg"), server=an.get("server"), anomaly=an))
    return out


# -- 7. nolinger and routine closes ------------------------------------------------------------

def _nolinger(ctx: _Context) -> list[dict]:
    if ctx.config is None or ctx.t.shape[0] == 0:
        return []
    t = ctx.t
    fe_nl = np.array([("nolinger" in p.options) for p in ctx.config.frontends] + [False])
    srv_nl = np.array([("nolinger" in (ctx.backend_proxy(k).options if ctx.backend_proxy(k) else set()))
                       for k in range(len(ctx.a.topology.servers))] + [False])
    ff = ctx.ff
    rows = t["flow_row"]
    under = fe_nl[ff["frontend"][rows]] | srv_nl[ff["server"][rows]]
    sel = under & (t["sender"] == av.ROLE_HAPROXY) & ~np.isin(
        t["reason"], [R["haproxy_reject"], R["haproxy_silent_drop"], R["haproxy_check"]])
    if not sel.any():
        return []
    idx = np.flatnonzero(sel)
    streams = np.unique(ctx.client_stream(idx))
    names = [p.name for p in ctx.config.proxies if "nolinger" in p.options and p.kind != "defaults"]
    return [_finding(ctx, kind="nolinger", cause="haproxy", setting="option nolinger",
                     configured=", ".join(names[:6]) or None,
                     title=f"`option nolinger` turns HAProxy's closes into RSTs ({idx.size} RSTs)",
                     seen=f"{idx.size} RSTs HAProxy sent instead of a FIN on {streams.size} streams "
                          f"({int(t['routine'][idx].sum())} after complete exchanges)",
                     action="Clients and servers see resets where a clean close was possible (timeouts "
                            "and normal ends alike): remove `option nolinger` unless TIME_WAIT pressure "
                            "on HAProxy requires it.",
                     score=streams.size / ctx.streams * 0.3, count=idx.size, affected=streams.size,
                     frames=t["frame"][idx], ts_ns=ctx.rsts["ts_ns"][idx])]


def _routine(ctx: _Context) -> list[dict]:
    t = ctx.t
    if t.shape[0] == 0 or not t["routine"].any():
        return []
    idx = np.flatnonzero(t["routine"])
    reasons, counts = np.unique(t["reason"][idx], return_counts=True)
    order = np.argsort(-counts)
    parts = [f"{av.REASON_NAMES[int(reasons[i])]} {int(counts[i])}" for i in order]
    top = av.REASON_NAMES[int(reasons[order[0]])]
    return [_finding(ctx, kind="routine", cause="haproxy", setting=ROUTINE_SETTING.get(top),
                     title=f"{idx.size} routine HAProxy closes (by design, not faults)",
                     seen=f"RSTs HAProxy sends by design on exchanges where nothing failed: {', '.join(parts)}",
                     action="Nothing to fix: HAProxy resets server connections it closes first (no TIME_WAIT), "
                            "and health check connections.",
                     score=0.0, count=idx.size, affected=0, frames=t["frame"][idx],
                     ts_ns=ctx.rsts["ts_ns"][idx], routine=True)]


def diagnose(p, config: Config | None) -> list[dict]:
    ctx = _Context(p, config)
    findings = []
    findings += _timeouts(ctx)
    findings += _rst_groups(ctx)
    findings += _syns(ctx)
    findings += _answered_by_haproxy(ctx)
    findings += _loss(ctx)
    findings += _zero_windows(ctx)
    findings += _nolinger(ctx)
    findings += _anomaly_findings(ctx)
    findings += _routine(ctx)
    findings.sort(key=lambda f: (SEVERITIES.index(f["severity"]), -f["score"], -f["count"], f["title"]))
    for rank, f in enumerate(findings, 1):
        f["rank"] = rank
    return findings

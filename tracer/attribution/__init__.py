"""Attribution (pure): topology, leg joining, and the cause of every RST.

Theory of operation: after the flow stage has finished a capture, `attribute()` takes its
tables (flows, RSTs, RTT samples), the per-flow timeline kept alongside it
(tracer.attribution.timeline), and the user's inputs (haproxy.cfg, `--proxy`, HAProxy's log),
and returns an `Attribution`: the topology used, per-flow legs, the frontend<->backend join,
and one attribution row per RST (tracer.attribution.rst), plus the log agreement when a log
was given. Modules: config (haproxy.cfg), logs (HAProxy log lines), topology (roles), join
(legs), rst (rules), vocab (the closed vocabulary).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from tracer.attribution import vocab as av
from tracer.attribution.config import Config
from tracer.attribution.join import Join, TurnIndex, apply_payload_join, join_legs
from tracer.attribution.rst import (
    BE_TIMEOUTS,
    FE_TIMEOUTS,
    RstAttribution,
    Settings,
    attribute_rsts,
    host_min_rtt,
    infer_mode,
)
from tracer.attribution.timeline import Timeline, address_key, ttl_baseline
from tracer.attribution.topology import (
    FlowRoles,
    Topology,
    assign_roles,
    from_config,
    from_proxy,
    infer,
)
from tracer.packet import format_address


@dataclass
class Attribution:
    topology: Topology
    flows: np.ndarray  # sorted by flow_id
    roles: FlowRoles
    join: Join
    rsts: np.ndarray  # the flow stage's RST table, in its order
    result: RstAttribution
    log: dict | None = None  # agreement with HAProxy's log, when one was given
    notes: list[str] = field(default_factory=list)
    claims: np.ndarray | None = None  # per flow, what payload named (join.CLAIM_DTYPE)


def settings_for(topo: Topology, config: Config | None) -> Settings:
    s = Settings.empty(len(topo.frontends), len(topo.servers))
    if config is None or topo.source != "config":
        return s
    s.known = True
    fronts = config.frontends
    backs = config.backends
    for i, p in enumerate(fronts):
        s.fe_http[i] = 1 if p.mode == "http" else 0
        for name in FE_TIMEOUTS:
            s.fe_timeouts[name][i] = p.timeouts_ns.get(name, -1)
        if "http-keep-alive" not in p.timeouts_ns and "http-request" in p.timeouts_ns:
            s.fe_timeouts["http-keep-alive"][i] = p.timeouts_ns["http-request"]
        s.fe_nolinger[i] = "nolinger" in p.options
        rejects = [r for r in p.rules if r.keyword == "tcp-request" and r.action == "reject"]
        s.fe_reject[i] = bool(rejects)
        s.fe_content_reject[i] = bool(rejects) and all(r.stage == "content" for r in rejects)
        s.fe_silent_drop[i] = p.has_action("silent-drop")
        s.fe_deny[i] = any(r.keyword == "http-request" and r.action in ("deny", "reject") for r in p.rules)
        s.fe_maxconn[i] = p.maxconn or config.global_maxconn or -1
        # a client's abort in a queue is seen (logged CQ) when a server the stream may go to
        # has a `maxconn` and its backend `option abortonclose`; without it HAProxy notices
        # only at the stream's turn, after connecting (CD; captures/lab/README.md)
        s.fe_queue[i] = any(srv.maxconn and "abortonclose" in b.options
                            for b in config.routes(p) for srv in b.servers)
    back_index = {p.name: j for j, p in enumerate(backs)}
    for i, srv in enumerate(topo.servers):
        j = back_index.get(srv.backend, -1)
        if j < 0:
            continue
        p = backs[j]
        s.srv_backend[i] = j
        s.srv_http[i] = 1 if p.mode == "http" else 0
        for name in BE_TIMEOUTS:
            s.srv_timeouts[name][i] = p.timeouts_ns.get(name, -1)
        s.srv_nolinger[i] = "nolinger" in p.options
        s.srv_connect[i] = p.timeouts_ns.get("connect", -1)
        s.srv_check[i] = 1 if any(x.name == srv.name and x.check for x in p.servers) else 0
    # Routing per (frontend, server entry): one address:port can serve several backends (the
    # same server listed in two backends), so an entry is reachable from a frontend when any
    # backend the frontend routes to lists the same address and port.
    endpoint = [(srv.address, srv.port) for srv in topo.servers]
    route = np.zeros((max(len(fronts), 1), max(len(topo.servers), 1)), bool)
    for i, p in enumerate(fronts):
        reachable = {b.name for b in config.routes(p)}
        if not reachable:
            route[i, :] = True  # no routing lines understood: do not restrict
            continue
        ends = {endpoint[k] for k, srv in enumerate(topo.servers) if srv.backend in reachable}
        for k in range(len(topo.servers)):
            route[i, k] = endpoint[k] in ends
    s.route_ok = route
    return s


def _queue_grace(config: Config | None) -> int:
    """The longest a stream can wait for a server: `timeout queue` (HAProxy falls back to
    `timeout connect` without it), plus the connect retries; 10 s without a config."""
    from tracer.attribution.join import QUEUE_GRACE_NS

    if config is None:
        return QUEUE_GRACE_NS
    longest = 0
    for p in config.proxies:
        t = p.timeouts_ns
        longest = max(longest, t.get("queue", t.get("connect", 0)) + t.get("connect", 0) * (1 + (p.retries or 0)))
    return longest or QUEUE_GRACE_NS


def _mode_notes(flows: np.ndarray, roles: FlowRoles, inferred_http: np.ndarray) -> list[str]:
    """The frontend endpoints' modes as the traffic shows them, for the topology's notes."""
    notes = []
    for mode, name in ((1, "http"), (0, "tcp")):
        on = (roles.leg == av.LEG_FRONTEND) & (inferred_http == mode)
        if not on.any():
            continue
        ends = np.unique(np.stack([flows["responder_hi"][on], flows["responder_lo"][on],
                                   flows["responder_port"][on].astype(np.uint64)], axis=1), axis=0)
        names = ", ".join(f"{format_address(int(h), int(lo))}:{int(p)}" for h, lo, p in ends)
        why = "headers re-written" if mode else "bytes forwarded unchanged"
        notes.append(f"{name} mode ({why}): {names}")
    unknown = (roles.leg == av.LEG_FRONTEND) & (inferred_http < 0)
    if unknown.any():
        notes.append("mode unknown on the other frontend endpoints (too few answered streams)")
    return notes


def _connect_timeouts(config: Config | None, topo: Topology, roles: FlowRoles) -> np.ndarray | None:
    """Per flow: `timeout connect` of the backend its server entry belongs to (-1: unknown)."""
    if config is None or topo.source != "config":
        return None
    per_server = np.array([next((p.timeouts_ns.get("connect", -1) for p in config.backends
                                 if p.name == s.backend), -1) for s in topo.servers] or [-1], np.int64)
    return np.where(roles.server >= 0, per_server[np.maximum(roles.server, 0)], -1)


def _routed_server(topo: Topology, settings: Settings, roles: FlowRoles, join: Join) -> None:
    """A backend flow matched the first server entry with its address and port; once joined,
    prefer the entry of a backend its frontend actually routes to (the by-server summary and
    the per-server settings then name the right backend)."""
    if settings.route_ok is None:
        return
    backs = np.flatnonzero((join.front_of >= 0) & (roles.server >= 0))
    if backs.size == 0:
        return
    fe = roles.frontend[join.front_of[backs]]
    ok = fe >= 0
    backs, fe = backs[ok], fe[ok]
    current = roles.server[backs]
    owned = {}
    for k, srv in enumerate(topo.servers):
        owned.setdefault((srv.address, srv.port), []).append(k)
    for entries in owned.values():
        if len(entries) < 2:
            continue
        for e in entries:
            mine = np.isin(current, entries) & settings.route_ok[fe, e] & ~settings.route_ok[fe, current]
            roles.server[backs[mine]] = e
            current = roles.server[backs]


def attribute(flows: np.ndarray, rsts: np.ndarray, rtts: np.ndarray, timeline: Timeline, *,
              config: Config | None = None, proxy: list[str] | None = None,
              log_entries=None, prefixes=None) -> Attribution:
    """Everything attribution says about one capture (see the module docstring).
    `prefixes` (tracer.attribution.prefixes.StreamPrefixes): the flows' first bytes, when
    payload was captured for the join."""
    flows = flows[np.argsort(flows["flow_id"], kind="stable")]
    max_id = int(flows["flow_id"].max()) if flows.shape[0] else -1
    tl = timeline.table(max_id)[flows["flow_id"]] if flows.shape[0] else timeline.table(-1)
    first_client_data = tl["first_data_ts"][:, 0]
    if config is not None:
        topo = from_config(config)
    elif proxy:
        topo = from_proxy(proxy)
    else:
        topo = infer(flows, first_client_data)
    roles = assign_roles(flows, topo)
    settings = settings_for(topo, config)
    # health checks to a `check port` serve no client: kept out of the join
    join_leg = np.where(roles.check, av.LEG_UNKNOWN, roles.leg)
    client_left = np.where(tl["first_close_dir"] == 0, tl["first_close_ts"], -1)
    turns = timeline.turns()
    turn_rows = np.searchsorted(flows["flow_id"], turns["flow_id"])
    known = turn_rows < flows.shape[0]
    known[known] = flows["flow_id"][turn_rows[known]] == turns["flow_id"][known]
    turn_index = TurnIndex(turn_rows[known], turns["ts_ns"][known], turns["direction"][known])
    join = join_legs(flows, join_leg, first_client_data, route_ok=settings.route_ok,
                     frontend_index=roles.frontend, server_index=roles.server,
                     client_left_ts=client_left, queue_grace_ns=_queue_grace(config),
                     turns=turn_index, response_ts=tl["first_data_ts"][:, 1],
                     connect_ns=_connect_timeouts(config, topo, roles))
    unique_ids = proxy_len = claims = None
    if prefixes is not None:
        claims, unique_ids = prefixes.claims(flows, join_leg, config)
        apply_payload_join(flows, join_leg, join, claims, queue_grace_ns=_queue_grace(config))
        proxy_len = claims["proxy_len"]
    log_report = None
    if log_entries is not None:
        from tracer.attribution.logs import apply_log_join

        log_report = apply_log_join(log_entries, flows, roles, join, topo, unique_ids)
    _routed_server(topo, settings, roles, join)
    inferred_http = None
    if not settings.known:
        inferred_http = infer_mode(flows, roles.leg, join.front_of, proxy_len)
        topo.notes.extend(_mode_notes(flows, roles, inferred_http))
    result = attribute_rsts(rsts, flows, tl, roles.leg, roles.frontend, roles.server, join, settings,
                            ttl_baseline(flows, tl), host_min_rtt(rtts, flows), check=roles.check,
                            inferred_http=inferred_http)
    attribution = Attribution(topology=topo, flows=flows, roles=roles, join=join, rsts=rsts,
                              result=result, claims=claims)
    if log_entries is not None:
        from tracer.attribution.logs import agreement

        log_report.update(agreement(log_entries, attribution))
        attribution.log = log_report
    return attribution


def summary(a: Attribution) -> dict:
    """The attribution part of a capture's JSON document (see docs/json-schema.md)."""
    t = a.result.table
    faults = int((~t["routine"]).sum())
    kind = np.where(t["routine"], 1, 0)  # 0 fault, 1 routine
    by_cause: dict[str, dict[str, int]] = {}
    cause_kind = np.bincount(t["cause"].astype(np.int64) * 2 + kind, minlength=2 * len(av.CAUSE_NAMES))
    for c, name in enumerate(av.CAUSE_NAMES):
        if cause_kind[2 * c] or cause_kind[2 * c + 1]:
            by_cause[name] = {"fault": int(cause_kind[2 * c]), "routine": int(cause_kind[2 * c + 1])}
    reasons = np.bincount(t["reason"], minlength=len(av.REASON_NAMES))
    by_reason = {av.REASON_NAMES[r]: int(reasons[r]) for r in np.argsort(-reasons, kind="stable") if reasons[r]}
    legs = np.bincount(t["leg"], minlength=len(av.LEG_NAMES))
    by_leg = {av.LEG_NAMES[g]: int(legs[g]) for g in range(len(av.LEG_NAMES)) if legs[g]}
    by_server: dict[str, dict[str, int]] = {}
    on = t["server"] >= 0
    if on.any():
        n_srv = int(t["server"].max()) + 1
        counts = np.bincount(t["server"][on].astype(np.int64) * 2 + kind[on], minlength=2 * n_srv)
        for srv in range(n_srv):
            if counts[2 * srv] or counts[2 * srv + 1]:
                entry = by_server.setdefault(_server_name(a, srv), {"fault": 0, "routine": 0})
                entry["fault"] += int(counts[2 * srv])
                entry["routine"] += int(counts[2 * srv + 1])
    return {
        "topology": a.topology.describe(),
        "join": a.join.stats,
        "rst_attribution": {
            "rsts": int(t.shape[0]),
            "faults": faults,
            "routine": int(t.shape[0] - faults),
            "by_cause": by_cause,
            "by_reason": by_reason,
            "by_leg": by_leg,
            "by_server": by_server,
        },
        **({"haproxy_log": a.log} if a.log is not None else {}),
        "rst_details": rst_rows(a),
    }


def rst_rows(a: Attribution) -> list[dict]:
    """One dict per RST (JSON `rst_details` and the CSV's attribution columns). Columns are
    prepared as whole arrays (names looked up by index arrays); only the dicts are per RST."""
    t = a.result.table
    r = a.rsts
    n = t.shape[0]
    if n == 0:
        return []
    src = _addresses_text(r["src_hi"], r["src_lo"])
    dst = _addresses_text(r["dst_hi"], r["dst_lo"])
    caused = t["caused_by_frame"]
    by = np.where(caused > 0, caused, 0).astype(object)
    by[caused <= 0] = None
    delay = np.where(caused > 0, t["delay_ns"] / 1e9, 0.0).astype(object)
    delay[caused <= 0] = None
    servers = np.array([_server_name(a, k) for k in range(len(a.topology.servers))] + [None], object)
    with _no_gc():
        return _rows(a, t, r, src, dst, by, delay, servers)


def _rows(a, t, r, src, dst, by, delay, servers) -> list[dict]:
    names = lambda table, codes: np.array(table, object)[codes].tolist()  # noqa: E731
    evidence = a.result.evidence
    ev = evidence[:] if hasattr(evidence, "text") else list(evidence)
    columns = {
        "frame": t["frame"].tolist(),
        "ts": (r["ts_ns"] / 1e9).tolist(),
        "src": src,
        "sport": r["sport"].tolist(),
        "dst": dst,
        "dport": r["dport"].tolist(),
        "leg": names(av.LEG_NAMES, t["leg"]),
        "sender": names(av.ROLE_NAMES, t["sender"]),
        "cause": names(av.CAUSE_NAMES, t["cause"]),
        "routine": t["routine"].tolist(),
        "origin": names(av.ORIGIN_NAMES, t["origin"]),
        "caused_by_frame": by.tolist(),
        "delay_s": delay.tolist(),
        "reason": names(av.REASON_NAMES, t["reason"]),
        "termination_state": list(a.result.termination),
        "confidence": np.round(t["confidence"].astype(np.float64), 3).tolist(),
        "server": servers[np.where(t["server"] >= 0, t["server"], -1)].tolist(),
        "evidence": ev,
    }
    keys = list(columns)
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns.values(), strict=True)]


@contextmanager
def _no_gc():
    """Millions of small lists and dicts, none cyclic: the cyclic collector's passes over them
    would cost more than building them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _addresses_text(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    """Addresses as text, formatted once per distinct address."""
    key = address_key(hi, lo) | (lo & np.uint64(0xFF))  # the hash keeps 56 bits; add lo's last byte
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    text = np.array([format_address(int(hi[i]), int(lo[i])) for i in first.tolist()], object)
    return text[inverse.ravel()].tolist()


def _server_name(a: Attribution, index: int) -> str | None:
    if index < 0:
        return None
    s = a.topology.servers[index]
    return f"{s.backend}/{s.name}" if s.backend else s.name


__all__ = ["Attribution", "Timeline", "attribute", "rst_rows", "summary"]

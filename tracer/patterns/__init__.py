"""Loss and latency patterns over time and over the topology, and the ranked diagnosis (pure).

Theory of operation: after attribution, `analyze_patterns()` joins one row of facts per flow
(tracer.patterns.flowfacts: leg, server, loss localized against the capture point, SYN retries,
RTTs, RSTs, the quiet before the close), then aggregates them, vectorized, three ways:

- breakdowns: per leg, per server, per frontend and backend name, per client subnet (/24 for
  IPv4, /64 for IPv6): RSTs by cause and reason, refusals and SYN retries, retransmission and
  loss rates (lost before the capture point / after it / missed by the capture), handshake and
  data RTT p50/p90/p99 split by side, zero windows, flow durations;
- time series per bucket (tracer.patterns.series), per leg and per server;
- anomaly windows in those series (tracer.patterns.anomaly: rolling median + MAD).

tracer.patterns.diagnosis turns all this into findings, most important first. Everything is
returned as plain JSON-ready data (`Patterns.document()`), which the text, CSV and HTML reports
render without the capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.attribution import Attribution
from tracer.attribution import vocab as av
from tracer.attribution.config import Config
from tracer.attribution.timeline import Timeline
from tracer.flows import vocab as fv
from tracer.flows.tables import (
    RTT_KIND_DATA,
    RTT_KIND_HANDSHAKE_INITIATOR,
    RTT_KIND_HANDSHAKE_RESPONDER,
)
from tracer.packet import format_address
from tracer.patterns import series as ts
from tracer.patterns.anomaly import anomaly_windows
from tracer.patterns.events import SegmentFacts
from tracer.patterns.flowfacts import flow_facts

# RTT series: (name, kind, side or None). Handshake RTTs are per side by definition: the
# responder's (SYN -> SYN/ACK, capture point to responder and back) and the initiator's.
RTT_SERIES = (
    ("handshake_responder", RTT_KIND_HANDSHAKE_RESPONDER, None),
    ("handshake_initiator", RTT_KIND_HANDSHAKE_INITIATOR, None),
    ("data_initiator", RTT_KIND_DATA, 0),
    ("data_responder", RTT_KIND_DATA, 1),
)
MAX_SUBNETS = 20
RTT_ANOMALY_MIN_SAMPLES = 10  # RTT samples a bucket needs to take part in RTT spike detection  # client subnets listed (most RST faults, then most flows, first)


@dataclass
class Patterns:
    facts: np.ndarray  # FLOWFACT_DTYPE rows aligned with Attribution.flows
    attribution: Attribution
    server_names: list[str]
    frontend_names: list[str]
    breakdowns: dict = field(default_factory=dict)
    timeseries: dict = field(default_factory=dict)
    anomalies: list = field(default_factory=list)
    findings: list = field(default_factory=list)

    def document(self) -> dict:
        return {"patterns": self.breakdowns, "timeseries": self.timeseries,
                "anomaly_windows": self.anomalies, "findings": self.findings}


def analyze_patterns(a: Attribution, rtts: np.ndarray, timeline: Timeline, facts: SegmentFacts, *,
                     config: Config | None, first_ts_ns: int | None,
                     last_ts_ns: int | None) -> Patterns:
    from tracer.patterns.diagnosis import diagnose

    max_id = int(a.flows["flow_id"].max()) if a.flows.shape[0] else -1
    ff = flow_facts(a, rtts, timeline.table(max_id), facts)
    topo = a.topology
    servers = [f"{s.backend}/{s.name}" if s.backend else s.name for s in topo.servers]
    fronts = [f.name for f in topo.frontends]
    p = Patterns(facts=ff, attribution=a, server_names=servers, frontend_names=fronts)
    origin = facts.origin_ns if facts.origin_ns is not None else (first_ts_ns or 0)
    duration_s = ((last_ts_ns or origin) - origin) / 1e9
    rows_of_rtt = _rows(a.flows["flow_id"], rtts["flow_id"])
    p.breakdowns = _breakdowns(p, rtts, rows_of_rtt)
    p.timeseries, series_for_anomalies = _timeseries(p, rtts, rows_of_rtt, facts, origin, duration_s)
    p.anomalies = _anomalies(series_for_anomalies, p.timeseries)
    p.findings = diagnose(p, config)
    return p


def _rows(sorted_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    if sorted_ids.shape[0] == 0:
        return np.full(query.shape[0], -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, query), sorted_ids.shape[0] - 1)
    return np.where(sorted_ids[pos] == query, pos, -1)


# -- breakdowns -----------------------------------------------------------------------------

def _group_stats(p: Patterns, group: np.ndarray, names: list[str], rtts: np.ndarray,
                 rtt_rows: np.ndarray, only: np.ndarray | None = None) -> dict:
    """Per group code 0..len(names)-1 (a code per flow row; -1: no group): the stats."""
    ff = p.facts
    t = p.attribution.result.table
    n = len(names)
    if only is not None:
        group = np.where(only, group, -1)
    ok = group >= 0
    g = group[ok]
    f = ff[ok]

    def per(values) -> np.ndarray:
        return np.bincount(g, weights=values, minlength=n)[:n] if g.size else np.zeros(n)

    out = {}
    rst_group = group[t["flow_row"]] if t.shape[0] else np.zeros(0, np.int64)
    rst_ok = rst_group >= 0
    durations = ts.grouped_percentiles(g, f["duration_ns"] / 1e9, n)
    rtt_ok = (rtt_rows >= 0)
    rtt_group = np.where(rtt_ok, group[np.maximum(rtt_rows, 0)], -1)
    rtt_pct = {}
    for name, kind, side in RTT_SERIES:
        sel = (rtts["kind"] == kind) & (rtt_group >= 0)
        if side is not None:
            sel &= rtts["side"] == side
        rtt_pct[name] = (ts.grouped_percentiles(rtt_group[sel], rtts["rtt_ns"][sel] / 1e6, n),
                         np.bincount(rtt_group[sel], minlength=n)[:n])
    counts = {
        "flows": per(None),
        "refused": per(f["state"] == fv.FLOW_REFUSED),
        "syn_retries": per(f["syn_retries"]),
        "unanswered_syns": per(f["unanswered_syn"]),
        "data_segments": per(f["data_segments"].sum(axis=1)),
        "retransmissions": per(f["retransmissions"].sum(axis=1)),
        "lost_before_capture": per(f["lost_before"].sum(axis=1)),
        "lost_after_capture": per(f["lost_after"].sum(axis=1)),
        "missed_by_capture": per(f["missed"].sum(axis=1)),
        "zero_windows": per(f["zero_windows"].sum(axis=1)),
    }
    for code, name in enumerate(names):
        flows = int(counts["flows"][code])
        if not flows:
            continue
        mine = rst_ok & (rst_group == code)
        by_cause: dict[str, int] = {}
        by_reason: dict[str, int] = {}
        if mine.any():
            sub = t[mine]
            faults = sub[~sub["routine"]]
            for c, k in zip(*np.unique(faults["cause"], return_counts=True), strict=True):
                by_cause[av.CAUSE_NAMES[c]] = int(k)
            for r, k in zip(*np.unique(sub["reason"], return_counts=True), strict=True):
                by_reason[av.REASON_NAMES[r]] = int(k)
        data = counts["data_segments"][code]
        lost = counts["lost_before_capture"][code] + counts["lost_after_capture"][code]
        entry = {
            "flows": flows,
            "rsts_fault": int((mine & ~t["routine"]).sum()) if t.shape[0] else 0,
            "rsts_routine": int((mine & t["routine"]).sum()) if t.shape[0] else 0,
            "rsts_fault_by_cause": dict(sorted(by_cause.items(), key=lambda kv: -kv[1])),
            "rsts_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
            **{k: int(v[code]) for k, v in counts.items() if k != "flows"},
            "retransmission_rate": _ratio(counts["retransmissions"][code], data),
            "loss_rate": _ratio(lost, data),
            "rtt_ms": {k: {"samples": int(c[code]), **_pcts(v[code])} for k, (v, c) in rtt_pct.items()},
            "duration_s": _pcts(durations[code]),
        }
        out[name] = entry
    return out


def _ratio(a, b) -> float | None:
    return round(float(a) / float(b), 6) if b else None


def _pcts(row: np.ndarray) -> dict:
    return {f"p{p}": (None if v != v else round(float(v), 4)) for p, v in zip(ts.PERCENTILES, row.tolist(), strict=True)}


def subnet_codes(ff: np.ndarray, flows: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Client subnet per flow row (/24 IPv4, /64 IPv6) of the initiator, for rows in `mask`."""
    hi = flows["initiator_hi"].astype(np.uint64)
    lo = flows["initiator_lo"].astype(np.uint64)
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    net_lo = np.where(v4, lo & ~np.uint64(0xFF), np.uint64(0))
    key = np.stack((hi, net_lo), axis=1)
    codes = np.full(ff.shape[0], -1, np.int64)
    names: list[str] = []
    if mask.any():
        uniq, inverse = np.unique(key[mask], axis=0, return_inverse=True)
        codes[mask] = inverse.ravel()
        for h, low in uniq.tolist():
            text = format_address(h, low)
            names.append(f"{text}/24" if (h == 0 and (low >> 32) == 0xFFFF) else f"{text}/64")
    return codes, names


def _breakdowns(p: Patterns, rtts: np.ndarray, rtt_rows: np.ndarray) -> dict:
    ff = p.facts
    a = p.attribution
    leg = ff["leg"].astype(np.int64)
    by_leg = _group_stats(p, leg, list(av.LEG_NAMES), rtts, rtt_rows)
    by_server = _group_stats(p, ff["server"].astype(np.int64), p.server_names, rtts, rtt_rows)
    by_frontend = _group_stats(p, ff["frontend"].astype(np.int64), p.frontend_names, rtts, rtt_rows)
    backends = sorted({s.backend for s in a.topology.servers if s.backend})
    index = {b: i for i, b in enumerate(backends)}
    srv_backend = np.array([index.get(s.backend, -1) for s in a.topology.servers] + [-1], np.int64)
    by_backend = _group_stats(p, srv_backend[ff["server"]], backends, rtts, rtt_rows) if backends else {}
    front = ff["leg"] == av.LEG_FRONTEND
    codes, names = subnet_codes(ff, a.flows, front if front.any() else ff["leg"] == av.LEG_UNKNOWN)
    # Only the subnets reported get their stats built: the most fault RSTs, then most flows.
    t = a.result.table
    n_sub = len(names)
    flows_per = np.bincount(codes[codes >= 0], minlength=n_sub)
    rst_code = codes[t["flow_row"]] if t.shape[0] else np.zeros(0, np.int64)
    faults_per = np.bincount(rst_code[(rst_code >= 0) & ~t["routine"]], minlength=n_sub) \
        if t.shape[0] else np.zeros(n_sub, np.int64)
    chosen = np.lexsort((np.array(names, dtype=object).astype(str) if names else np.zeros(0),
                         -flows_per, -faults_per))[:MAX_SUBNETS]
    remap = np.full(n_sub, -1, np.int64)
    remap[chosen] = np.arange(chosen.size)
    sub_codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
    by_subnet = _group_stats(p, sub_codes, [names[k] for k in chosen], rtts, rtt_rows)
    top = sorted(by_subnet.items(), key=lambda kv: (-kv[1]["rsts_fault"], -kv[1]["flows"], kv[0]))
    return {
        "by_leg": by_leg,
        "by_server": by_server,
        "by_frontend": by_frontend,
        "by_backend": by_backend,
        "by_client_subnet": dict(top),
        "client_subnets": int(np.count_nonzero(flows_per)),
    }


# -- time series ----------------------------------------------------------------------------

def _timeseries(p: Patterns, rtts: np.ndarray, rtt_rows: np.ndarray, facts: SegmentFacts,
                origin: int, duration_s: float) -> tuple[dict, dict]:
    ff = p.facts
    a = p.attribution
    bucket_s = ts.choose_bucket_s(duration_s)
    n = int(duration_s // bucket_s) + 1
    t = a.result.table
    rsts = a.rsts

    def b(x):
        return ts.bucket_of(x, origin, bucket_s, n)

    rst_b = b(rsts["ts_ns"]) if t.shape[0] else np.zeros(0, np.int64)
    by_cause = {}
    for code, cause in enumerate(av.CAUSE_NAMES):
        sel = (~t["routine"]) & (t["cause"] == code) if t.shape[0] else np.zeros(0, bool)
        if sel.any():
            by_cause[cause] = ts.counts(rst_b[sel], n)
    routine = ts.counts(rst_b[t["routine"]], n) if t.shape[0] else np.zeros(n, np.int64)
    fault = sum(by_cause.values()) if by_cause else np.zeros(n, np.int64)
    flow_start_b = b(ff["first_ts"])
    refused = ts.counts(flow_start_b[ff["state"] == fv.FLOW_REFUSED], n)
    syn_retries = ts.counts(flow_start_b, n, ff["syn_retries"].astype(float)).astype(np.int64)
    unanswered = ts.counts(flow_start_b[ff["unanswered_syn"]], n)

    ev = facts.events
    ev_rows = _rows(a.flows["flow_id"], ev["flow_id"])
    ev_leg = np.where(ev_rows >= 0, ff["leg"][np.maximum(ev_rows, 0)], av.LEG_UNKNOWN)
    ev_srv = np.where(ev_rows >= 0, ff["server"][np.maximum(ev_rows, 0)], -1)
    ev_b = b(ev["ts_ns"])
    fid, second, _, cnt = facts.data_segments()
    d_rows = _rows(a.flows["flow_id"], fid)
    d_leg = np.where(d_rows >= 0, ff["leg"][np.maximum(d_rows, 0)], av.LEG_UNKNOWN)
    d_srv = np.where(d_rows >= 0, ff["server"][np.maximum(d_rows, 0)], -1)
    d_b = np.clip(second // bucket_s, 0, n - 1)
    rtt_ok = rtt_rows >= 0
    rtt_leg = np.where(rtt_ok, ff["leg"][np.maximum(rtt_rows, 0)], av.LEG_UNKNOWN)
    rtt_srv = np.where(rtt_ok, ff["server"][np.maximum(rtt_rows, 0)], -1)
    rtt_b = b(rtts["ts_ns"])

    def loss_series(ev_sel, d_sel) -> dict:
        fl = ev["flags"][ev_sel]
        eb = ev_b[ev_sel]
        syn = (ev["tcp_flags"][ev_sel] & 0x02) != 0  # SYN retries are not data loss
        retrans = ts.counts(eb[((fl & fv.A_RETRANSMISSION) != 0) & ~syn], n)
        spurious = ts.counts(eb[(fl & fv.A_SPURIOUS_RETRANSMISSION) != 0], n)
        gaps = ts.counts(eb[(fl & fv.A_LOST_SEGMENT) != 0], n)
        missed = np.minimum(ts.counts(eb[(fl & fv.A_ACK_LOST_SEGMENT) != 0], n), gaps)
        before = gaps - missed
        after = np.maximum(retrans - spurious - before, 0)
        zero = ts.counts(eb[(fl & fv.A_ZERO_WINDOW) != 0], n)
        data = ts.counts(d_b[d_sel], n, cnt[d_sel].astype(float)).astype(np.int64)
        return {"data_segments": data, "retransmissions": retrans, "lost_before_capture": before,
                "lost_after_capture": after, "missed_by_capture": missed, "zero_windows": zero}

    def rtt_series(sel_base) -> dict:
        out = {}
        for name, kind, side in RTT_SERIES:
            sel = sel_base & (rtts["kind"] == kind)
            if side is not None:
                sel &= rtts["side"] == side
            if sel.any():
                out[name] = ts.grouped_percentiles(rtt_b[sel], rtts["rtt_ns"][sel] / 1e6, n)
                samples[name] = ts.counts(rtt_b[sel], n)
        return out

    def anomaly_rtt(values: np.ndarray, count: np.ndarray) -> np.ndarray:
        # a p99 of a handful of samples is one sample: too noisy to call a spike
        return np.where(count >= RTT_ANOMALY_MIN_SAMPLES, values[:, 2], np.nan)

    samples: dict[str, np.ndarray] = {}

    legs = {}
    raw = {"rsts_fault": fault, "refused": refused, "syn_retries": syn_retries}
    for code, leg in ((av.LEG_FRONTEND, "frontend"), (av.LEG_BACKEND, "backend")):
        if not (ff["leg"] == code).any():
            continue
        loss = loss_series(ev_leg == code, d_leg == code)
        rtt = rtt_series(rtt_leg == code)
        lost = loss["lost_before_capture"] + loss["lost_after_capture"]
        legs[leg] = {
            **{k: ts.as_list(v) for k, v in loss.items()},
            "retransmission_rate": ts.rate(loss["retransmissions"], loss["data_segments"]),
            "loss_rate": ts.rate(lost, loss["data_segments"]),
            "rsts_fault": ts.as_list(ts.counts(rst_b[(~t["routine"]) & (t["leg"] == code)], n)
                                     if t.shape[0] else np.zeros(n, np.int64)),
            "rtt_ms": {k: {f"p{pc}": ts.as_list(v[:, j], 4) for j, pc in enumerate(ts.PERCENTILES)}
                       for k, v in rtt.items()},
        }
        with np.errstate(divide="ignore", invalid="ignore"):
            raw[f"loss_rate:{leg}"] = np.where(loss["data_segments"] > 0,
                                               lost / np.maximum(loss["data_segments"], 1), np.nan)
        for k, v in rtt.items():
            if k.startswith("handshake"):  # data RTTs carry the receiver's delayed ACKs
                raw[f"rtt_p99:{leg}:{k}"] = anomaly_rtt(v, samples[k])
    servers = {}
    for k, name in enumerate(p.server_names):
        mine = ff["server"] == k
        if not mine.any():
            continue
        loss = loss_series(ev_srv == k, d_srv == k)
        rtt = rtt_series(rtt_srv == k)
        sel = (t["server"] == k) if t.shape[0] else np.zeros(0, bool)
        servers[name] = {
            "rsts_fault": ts.as_list(ts.counts(rst_b[sel & ~t["routine"]], n) if t.shape[0] else np.zeros(n, np.int64)),
            "rsts_routine": ts.as_list(ts.counts(rst_b[sel & t["routine"]], n) if t.shape[0] else np.zeros(n, np.int64)),
            "refused": ts.as_list(ts.counts(flow_start_b[mine & (ff["state"] == fv.FLOW_REFUSED)], n)),
            "flows": ts.as_list(ts.counts(flow_start_b[mine], n)),
            "retransmissions": ts.as_list(loss["retransmissions"]),
            "data_segments": ts.as_list(loss["data_segments"]),
            "handshake_rtt_ms_p90": ts.as_list(rtt["handshake_responder"][:, 1], 4)
            if "handshake_responder" in rtt else [None] * n,
        }
        if "handshake_responder" in rtt:
            raw[f"rtt_p99:server:{name}"] = anomaly_rtt(rtt["handshake_responder"], samples["handshake_responder"])
        raw[f"rsts_fault:server:{name}"] = np.asarray(servers[name]["rsts_fault"])
    doc = {
        "bucket_s": bucket_s,
        "start_ts": origin / 1e9,
        "buckets": n,
        "rsts_by_cause": {k: ts.as_list(v) for k, v in by_cause.items()},
        "rsts_routine": ts.as_list(routine),
        "rsts_fault": ts.as_list(fault),
        "refused": ts.as_list(refused),
        "syn_retries": ts.as_list(syn_retries),
        "unanswered_syns": ts.as_list(unanswered),
        "flows_started": ts.as_list(ts.counts(flow_start_b, n)),
        "legs": legs,
        "servers": servers,
    }
    return doc, raw


ANOMALY_KINDS = {
    # series name prefix -> (kind, counts?, min_excess, relative floor, absolute floor)
    "rsts_fault": ("rst_burst", True, 3, 0, 0),
    "refused": ("refusals", True, 3, 0, 0),
    "syn_retries": ("syn_retries", True, 3, 0, 0),
    "loss_rate": ("loss_spike", False, 0.01, 0.5, 0.005),
    "rtt_p99": ("rtt_p99_spike", False, 1.0, 0.5, 0.5),  # ms
}


def _anomalies(raw: dict, doc: dict) -> list[dict]:
    out = []
    bucket_s = doc["bucket_s"]
    start = doc["start_ts"]
    for name, values in raw.items():
        prefix = name.split(":")[0]
        kind, is_count, excess, rel, absolute = ANOMALY_KINDS[prefix]
        parts = name.split(":")
        for w in anomaly_windows(np.asarray(values, float), counts=is_count, min_excess=excess,
                                 relative_floor=rel, absolute_floor=absolute):
            entry = {
                "kind": kind,
                "series": name,
                "leg": parts[1] if len(parts) > 1 and parts[1] in ("frontend", "backend") else None,
                "server": parts[2] if len(parts) > 2 and parts[1] == "server" else None,
                "start_ts": round(start + w["first"] * bucket_s, 6),
                "end_ts": round(start + (w["last"] + 1) * bucket_s, 6),
                "peak_ts": round(start + w["peak"] * bucket_s, 6),
                "value": round(w["value"], 6),
                "baseline": round(w["baseline"], 6),
                "score": round(min(w["score"], 1e6), 2),
            }
            if prefix == "rtt_p99" and len(parts) > 2 and parts[1] != "server":
                entry["rtt"] = parts[2]
            out.append(entry)
    out.sort(key=lambda e: (-e["score"], e["start_ts"]))
    return out

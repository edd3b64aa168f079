"""Rendering results (the I/O edge): the JSON document and the terminal summary.

Rules: both renderings come from the same result document (see docs/json-schema.md); the text
is a view of the JSON, never a separate computation. Colour is used only when the output is a
terminal, and lines are fitted to the terminal width.
"""

from __future__ import annotations

import csv
import json
import shutil
import textwrap

from tracer import __version__
from tracer.analysis import SCHEMA_VERSION
from tracer.flows import vocab as fv
from tracer.packet import format_address

RST_CSV_COLUMNS = (
    "capture", "frame", "ts", "flow_id", "src", "sport", "dst", "dport", "sender_side", "flags",
    "seq_class", "seq_offset", "phase", "idle_s", "idle_receiver_s", "age_s", "ttl", "ttl_delta",
    "ip_id_delta", "continued", "rst_index", "outstanding_initiator", "outstanding_responder",
    "payload_len",
    # attribution (tracer.attribution; see docs/json-schema.md)
    "leg", "sender", "cause", "routine", "origin", "caused_by_frame", "delay_s", "reason",
    "termination_state", "confidence", "server", "evidence",
)


def make_document(captures: list[dict]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "tracer_version": __version__, "captures": captures}


# A list of at least this many objects (per-RST details, per-flow rows) is written one object
# per line: json's C encoder does those, the indenting pure-Python one would take seconds on a
# large capture, and a line per row reads well in a pager and greps.
ROWS_PER_LINE_FROM = 8


def render_json(document: dict) -> str:
    """The document as indented JSON, long lists of objects one object per line."""
    parts: list[str] = []
    _json_into(document, 0, parts)
    parts.append("\n")
    return "".join(parts)


def _json_key(key) -> str:
    """An object key as json.dumps writes it (non-string keys become strings)."""
    if not isinstance(key, str):
        key = json.dumps(key)  # true, false, null, numbers as JSON spells them
    return json.dumps(key)


def _json_into(value, level: int, out: list[str]) -> None:
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(value, dict) and value:
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(("\n" if i == 0 else ",\n") + inner + _json_key(key) + ": ")
            _json_into(item, level + 1, out)
        out.append("\n" + pad + "}")
    elif isinstance(value, list | tuple) and value:
        rows = (len(value) >= ROWS_PER_LINE_FROM
                and all(isinstance(item, dict) for item in value))
        out.append("[")
        for i, item in enumerate(value):
            out.append(("\n" if i == 0 else ",\n") + inner)
            if rows:
                out.append(json.dumps(item, separators=(", ", ": ")))
            else:
                _json_into(item, level + 1, out)
        out.append("\n" + pad + "]")
    else:
        out.append(json.dumps(value))


def _style(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


def _pairs(mapping: dict, width: int) -> list[str]:
    """'key value' items joined into lines no wider than `width`."""
    items = [f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in mapping.items()]
    lines, line = [], ""
    for item in items:
        candidate = f"{line}, {item}" if line else item
        if line and len(candidate) > width:
            lines.append(line + ",")
            line = item
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines or ["none"]


def render_text(document: dict, *, colour: bool = False, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((100, 24)).columns
    width = max(60, min(width, 160))
    label_w = 26
    body_w = width - label_w - 2
    out: list[str] = []
    for cap in document["captures"]:
        title = f"{cap['path']}  ({cap.get('format') or cap.get('engine')}"
        title += ", gzip)" if cap.get("compressed") else ")"
        out.append(_style(title, "1", colour))
        if cap.get("findings") is not None:
            out.extend(_findings_text(cap, colour, width))

        def row(label: str, value, warn: bool = False) -> None:
            lines = value if isinstance(value, list) else [str(value)]
            for i, line in enumerate(lines):
                text = _style(line, "33", colour) if warn else line
                out.append(f"  {(label if i == 0 else ''):<{label_w}}{text}")

        row("link types", ", ".join(cap["link_types"]) or "none")
        row("packets", f"{cap['packets']:,}")
        tcp = f"{cap['tcp_packets']:,}"
        if cap.get("filter"):
            tcp += f"  (filter {cap['filter']!r} kept {cap['tcp_packets'] - cap['tcp_packets_filtered_out']:,})"
        row("TCP segments", tcp)
        if cap.get("ip_versions"):
            row("IP versions", _pairs(cap["ip_versions"], body_w))
        row("TCP flags", _pairs({k: v for k, v in cap["tcp_flags"].items() if v}, body_w))
        row("TCP payload", f"{cap['tcp_payload_bytes']:,} bytes")
        if cap.get("duration_s") is not None and cap.get("first_ts") is not None:
            row("time span", f"{cap['duration_s']:.3f} s")
        if cap["non_tcp"]:
            row("not TCP", _pairs(cap["non_tcp"], body_w))
        row("anomalies", _pairs(cap["anomalies"], body_w), warn=bool(cap["anomalies"]))
        if "flows" in cap:
            fl = cap["flows"]
            row("flows", _pairs({k: v for k, v in fl.items() if v or k == "total"}, body_w))
            row("RSTs", f"{cap['rsts']:,}" + (f"  ({cap['rsts_with_ack']:,} with ACK)" if cap["rsts"] else ""))
            if cap["rsts"]:
                row("  by sender", _pairs(cap["rsts_by_sender_side"], body_w))
                row("  by phase", _pairs(cap["rsts_by_phase"], body_w))
                row("  by seq class", _pairs(cap["rsts_by_seq_class"], body_w))
            if "rst_attribution" in cap:
                _attribution_text(cap, row, body_w)
            rate = cap["retransmission_rate"] * 100
            row("retransmissions", f"{cap['retransmissions']:,} ({rate:.2f}% of data segments)",
                warn=rate >= 1.0)
            loss = cap["loss"]
            row("loss", [f"{loss['gaps']:,} gaps: {loss['lost_before_capture']:,} lost before the "
                         f"capture point (resent), {loss['missed_by_capture']:,} missed by the "
                         f"capture (acknowledged), {loss['gaps_unsettled']:,} unsettled",
                         f"{loss['capture_duplicates']:,} capture duplicates"])
            for name, entry in cap["rtt_ms"].items():
                if entry["samples"]:
                    row(f"RTT {name.replace('_', ' ')}",
                        f"p50 {entry['p50']:.3f} ms, p90 {entry['p90']:.3f} ms, "
                        f"p99 {entry['p99']:.3f} ms ({entry['samples']:,} samples)")
        if cap["leftover_bytes"]:
            row("leftover", f"{cap['leftover_bytes']:,} bytes after the last complete record", warn=True)
        if cap.get("problem"):
            row("problem", cap["problem"], warn=True)
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


SEVERITY_STYLE = {"critical": "1;41", "high": "1;31", "medium": "33", "low": "36", "info": "2"}
MAX_TEXT_FINDINGS = 12


def _findings_text(cap: dict, colour: bool, width: int) -> list[str]:
    """The diagnosis first: faults ranked, then routine closes; each finding's cause, the
    setting to check, what was seen and the action, wrapped to the width."""
    findings = cap["findings"]
    out = [_style("  diagnosis", "1", colour)]
    if not findings:
        return out + ["    no findings", ""]
    faults = [f for f in findings if not f.get("routine")]
    routine = [f for f in findings if f.get("routine")]
    shown = faults[:MAX_TEXT_FINDINGS] + routine
    wrap_w = max(40, width - 8)
    for f in shown:
        sev = f"{f['severity'].upper():<8}"
        out.append(f"    {_style(sev, SEVERITY_STYLE.get(f['severity'], '0'), colour)} "
                   f"{f['rank']}. {f['title']}")
        setting = f.get("setting") or "-"
        if f.get("configured"):
            setting += f" (configured: {f['configured']})"
        out += textwrap.wrap(f"cause {f['cause']}; check {setting}", wrap_w,
                             initial_indent="      ", subsequent_indent="        ")
        out += textwrap.wrap(f"seen: {f['seen']}", wrap_w, initial_indent="      ",
                             subsequent_indent="        ")
        out += textwrap.wrap(f"action: {f['action']}", wrap_w, initial_indent="      ",
                             subsequent_indent="        ")
        frames = f.get("evidence_frames") or []
        if frames:
            out += textwrap.wrap("frames: " + ", ".join(str(x) for x in frames), wrap_w,
                                 initial_indent="      ", subsequent_indent="        ")
    if len(faults) > MAX_TEXT_FINDINGS:
        out.append(f"    ... {len(faults) - MAX_TEXT_FINDINGS} more findings in --format json / --html")
    out += _table_text(cap, width)
    out.append("")
    return out


def _table_text(cap: dict, width: int) -> list[str]:
    """Per leg and per server: flows, RSTs, refusals, loss and handshake RTT, as a table."""
    pat = cap.get("patterns") or {}
    rows = [(f"leg {k}", v) for k, v in (pat.get("by_leg") or {}).items()]
    rows += sorted(((f"{k}", v) for k, v in (pat.get("by_server") or {}).items()),
                   key=lambda kv: (-kv[1]["rsts_fault"], kv[0]))
    if not rows:
        return []
    name_w = max(12, min(34, max(len(n) for n, _ in rows)))
    head = (f"    {'':<{name_w}} {'flows':>7} {'faults':>7} {'routine':>7} {'refused':>7} "
            f"{'loss':>7} {'hs RTT p50/p99 ms':>18}")
    out = ["", head[:width]]
    for name, g in rows:
        rtt = (g.get("rtt_ms") or {}).get("handshake_responder") or {}
        rtt_text = ("-" if rtt.get("p50") is None else f"{rtt['p50']:.3g}/{rtt['p99']:.3g}")
        loss = "-" if g.get("loss_rate") is None else f"{g['loss_rate'] * 100:.2f}%"
        line = (f"    {name[:name_w]:<{name_w}} {g['flows']:>7,} {g['rsts_fault']:>7,} "
                f"{g['rsts_routine']:>7,} {g['refused']:>7,} {loss:>7} {rtt_text:>18}")
        out.append(line[:width])
    return out


FLOW_CSV_COLUMNS = (
    "capture", "flow_id", "first_frame", "first_ts", "duration_s", "client", "client_port", "server",
    "server_port", "state", "leg", "frontend", "server_name", "health_check", "joined_frontend_flow",
    "backend_flows", "data_segments_initiator", "data_segments_responder", "retransmissions",
    "lost_before_capture", "lost_after_capture", "missed_by_capture", "zero_windows",
    "syn_retries", "unanswered_syn", "handshake_rtt_responder_ms", "handshake_rtt_initiator_ms",
    "data_rtt_initiator_p50_ms", "data_rtt_responder_p50_ms", "rsts_fault", "rsts_routine",
    "first_close_by", "quiet_before_close_s",
)


def write_flows_csv(path: str, captures: list[tuple]) -> None:
    """One row per flow (see docs/json-schema.md). Each capture is (name, Patterns or None)."""
    from tracer.attribution import vocab as av

    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(FLOW_CSV_COLUMNS)
        for capture, patterns in captures:
            if patterns is None:
                continue
            ff = patterns.facts
            flows = patterns.attribution.flows
            ids = flows["flow_id"]
            for i in range(ff.shape[0]):
                r = ff[i]
                f = flows[i]
                leg = int(r["leg"])
                peer = int(r["peer"])
                close = int(r["first_close_dir"])

                def ms(ns) -> str:
                    return "" if ns < 0 else f"{ns / 1e6:.3f}"
                out.writerow([
                    capture, int(r["flow_id"]), int(r["first_frame"]), f"{int(r['first_ts']) / 1e9:.9f}",
                    f"{int(r['duration_ns']) / 1e9:.6f}",
                    format_address(f["initiator_hi"], f["initiator_lo"]), int(f["initiator_port"]),
                    format_address(f["responder_hi"], f["responder_lo"]), int(f["responder_port"]),
                    fv.FLOW_STATE_NAMES[int(r["state"])], av.LEG_NAMES[leg],
                    patterns.frontend_names[int(r["frontend"])] if r["frontend"] >= 0 else "",
                    patterns.server_names[int(r["server"])] if r["server"] >= 0 else "",
                    int(bool(r["check"])), int(ids[peer]) if peer >= 0 else "", int(r["backends"]),
                    int(r["data_segments"][0]), int(r["data_segments"][1]),
                    int(r["retransmissions"].sum()), int(r["lost_before"].sum()),
                    int(r["lost_after"].sum()), int(r["missed"].sum()), int(r["zero_windows"].sum()),
                    int(r["syn_retries"]), int(bool(r["unanswered_syn"])),
                    ms(int(r["hs_rtt_responder_ns"])), ms(int(r["hs_rtt_initiator_ns"])),
                    ms(int(r["data_rtt_p50_ns"][0])), ms(int(r["data_rtt_p50_ns"][1])),
                    int(r["rsts_fault"]), int(r["rsts_routine"]),
                    fv.SIDE_NAMES[close] if close >= 0 else "",
                    f"{int(r['quiet_ns']) / 1e9:.6f}" if r["quiet_ns"] > 0 else "",
                ])


BUCKET_LEG_FIELDS = ("data_segments", "retransmissions", "lost_before_capture", "lost_after_capture",
                     "missed_by_capture", "zero_windows", "retransmission_rate", "loss_rate", "rsts_fault")
BUCKET_RTT_KINDS = ("handshake_responder", "handshake_initiator", "data_initiator", "data_responder")
BUCKET_CAUSES = ("client", "haproxy", "server", "network", "unknown")


def bucket_csv_columns() -> list[str]:
    cols = ["capture", "bucket", "start_ts", "bucket_s", "flows_started", "rsts_fault", "rsts_routine"]
    cols += [f"rsts_{c}" for c in BUCKET_CAUSES]
    cols += ["refused", "syn_retries", "unanswered_syns"]
    for leg in ("frontend", "backend"):
        cols += [f"{leg}_{k}" for k in BUCKET_LEG_FIELDS]
        cols += [f"{leg}_rtt_{kind}_p{p}_ms" for kind in BUCKET_RTT_KINDS for p in (50, 90, 99)]
    return cols


def write_buckets_csv(path: str, document: dict) -> None:
    """One row per time bucket per capture, from the document's `timeseries` (see
    docs/json-schema.md): the same figures the JSON and HTML show."""
    cols = bucket_csv_columns()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(cols)
        for cap in document["captures"]:
            ts = cap.get("timeseries")
            if not ts:
                continue
            legs = ts.get("legs") or {}
            for i in range(ts["buckets"]):
                row = {"capture": cap["path"], "bucket": i,
                       "start_ts": f"{ts['start_ts'] + i * ts['bucket_s']:.6f}", "bucket_s": ts["bucket_s"],
                       "flows_started": ts["flows_started"][i], "rsts_fault": ts["rsts_fault"][i],
                       "rsts_routine": ts["rsts_routine"][i], "refused": ts["refused"][i],
                       "syn_retries": ts["syn_retries"][i], "unanswered_syns": ts["unanswered_syns"][i]}
                for c in BUCKET_CAUSES:
                    row[f"rsts_{c}"] = (ts["rsts_by_cause"].get(c) or [0] * ts["buckets"])[i]
                for leg, data in legs.items():
                    for k in BUCKET_LEG_FIELDS:
                        row[f"{leg}_{k}"] = data[k][i]
                    for kind, pcts in (data.get("rtt_ms") or {}).items():
                        for p in (50, 90, 99):
                            row[f"{leg}_rtt_{kind}_p{p}_ms"] = pcts[f"p{p}"][i]
                out.writerow(["" if row.get(c) is None else row.get(c) for c in cols])


def write_rsts_csv(path: str, captures: list[tuple]) -> None:
    """One row per RST packet (see docs/json-schema.md for the columns). Each capture is
    (name, RST table[, attribution rows aligned with it])."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(RST_CSV_COLUMNS)
        for capture, rows, *rest in captures:
            details = rest[0] if rest and rest[0] is not None else None
            for i, r in enumerate(rows):
                out.writerow(_rst_row(capture, r) + _attribution_cells(details[i] if details else None))


def _attribution_cells(d: dict | None) -> list:
    if d is None:
        return [""] * 12
    return [
        d["leg"], d["sender"], d["cause"], int(d["routine"]), d["origin"],
        d["caused_by_frame"] or "", "" if d["delay_s"] is None else f"{d['delay_s']:.6f}",
        d["reason"], d["termination_state"], f"{d['confidence']:.2f}", d["server"] or "",
        ";".join(d["evidence"]),
    ]


def _attribution_text(cap: dict, row, body_w: int) -> None:
    """RSTs by cause, reason, leg and server, faults first; the topology and join used."""
    att = cap["rst_attribution"]
    topo = cap["topology"]
    fronts = ", ".join(b for f in topo["frontends"] for b in f["binds"]) or "none found"
    row("topology", f"{topo['source']}: frontend {fronts}; HAProxy backend side "
        f"{', '.join(topo['haproxy_backend_addresses']) or 'unknown'}; {len(topo['servers'])} servers")
    j = cap["join"]
    if j["backend_flows"]:
        rate = j["join_rate"] * 100 if j["join_rate"] is not None else 0.0
        row("leg join", f"{j['backend_flows_joined']:,}/{j['backend_flows']:,} server connections "
            f"joined to a client stream ({rate:.1f}%), {j['backend_flows_ambiguous']:,} ambiguous")
    if not att["rsts"]:
        return
    row("RST causes", f"{att['faults']:,} faults, {att['routine']:,} routine HAProxy closes",
        warn=att["faults"] > 0)
    faults = {k: v["fault"] for k, v in att["by_cause"].items() if v["fault"]}
    if faults:
        row("  faults by cause", _pairs(dict(sorted(faults.items(), key=lambda kv: -kv[1])), body_w),
            warn=True)
    details = cap.get("rst_details") or []
    fault_reasons: dict[str, int] = {}
    routine_reasons: dict[str, int] = {}
    for d in details:
        target = routine_reasons if d["routine"] else fault_reasons
        target[d["reason"]] = target.get(d["reason"], 0) + 1
    if fault_reasons:
        row("  faults by reason", _pairs(dict(sorted(fault_reasons.items(), key=lambda kv: -kv[1])), body_w),
            warn=True)
    if routine_reasons:
        row("  routine by reason", _pairs(dict(sorted(routine_reasons.items(), key=lambda kv: -kv[1])), body_w))
    row("  by leg", _pairs(att["by_leg"], body_w))
    servers = {k: f"{v['fault']} faults/{v['routine']} routine" for k, v in
               sorted(att["by_server"].items(), key=lambda kv: (-kv[1]["fault"], kv[0]))}
    if servers:
        row("  by server", _pairs(servers, body_w))
    log = cap.get("haproxy_log")
    if log:
        agreement = log["termination_agreement"]
        rate = agreement["rate"]
        row("HAProxy log", f"{log['parsed']:,}/{log['lines']:,} lines read, "
            f"{log['joined_to_frontend_flows']:,} joined to client streams; termination state "
            f"agrees on {agreement['agree']:,}/{agreement['streams_compared']:,}"
            + (f" ({rate * 100:.1f}%)" if rate is not None else ""))


def _seconds(ns: int) -> str:
    return "" if ns < 0 else f"{ns / 1e9:.6f}"


def _rst_row(capture: str, r) -> list:
    return [
        capture,
        int(r["frame"]),
        f"{int(r['ts_ns']) / 1e9:.9f}",
        int(r["flow_id"]),
        format_address(r["src_hi"], r["src_lo"]),
        int(r["sport"]),
        format_address(r["dst_hi"], r["dst_lo"]),
        int(r["dport"]),
        fv.SIDE_NAMES[int(r["sender_side"])],
        "RST+ACK" if r["with_ack"] else "RST",
        fv.SEQ_CLASS_NAMES[int(r["seq_class"])],
        int(r["seq_offset"]),
        fv.PHASE_NAMES[int(r["phase"])],
        _seconds(int(r["idle_sender_ns"])),
        _seconds(int(r["idle_receiver_ns"])),
        _seconds(int(r["age_ns"])),
        int(r["ttl"]),
        int(r["ttl_delta"]) if r["ttl_known"] else "",
        int(r["ip_id_delta"]) if r["ip_id_known"] else "",
        int(bool(r["continued"])),
        int(r["rst_index"]),
        int(r["outstanding"][0]),
        int(r["outstanding"][1]),
        int(r["payload_len"]),
    ]

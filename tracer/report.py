"""Rendering results (the I/O edge): the JSON document and the terminal summary.

Rules: both renderings come from the same result document (see docs/json-schema.md); the text
is a view of the JSON, never a separate computation. Colour is used only when the output is a
terminal, and lines are fitted to the terminal width.
"""

from __future__ import annotations

import csv
import json
import shutil

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


def render_json(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


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

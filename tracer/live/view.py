"""The live view: one document per interval, rendered as JSON lines or as terminal text.

Rules: `window_document` is the only place the interval's numbers are put together; the text
view is rendered from that document (like tracer.report for the final report), so the JSONL
stream and the screen never disagree. On a terminal the view redraws in place; elsewhere each
interval is appended as a block.
"""

from __future__ import annotations

import json
import time

from tracer.live.rolling import Tally


def rst_breakdown(t: Tally) -> dict:
    by_cause: dict[str, dict[str, int]] = {}
    by_server: dict[str, dict[str, int]] = {}
    faults = 0
    for (_leg, _sender, cause, _reason, routine, _fe, backend, server), n in t.rsts.items():
        kind = "routine" if routine == "true" else "fault"
        faults += n if kind == "fault" else 0
        by_cause.setdefault(cause, {"fault": 0, "routine": 0})[kind] += n
        if server:
            name = f"{backend}/{server}" if backend else server
            by_server.setdefault(name, {"fault": 0, "routine": 0})[kind] += n
    attributed = sum(t.rsts.values())
    return {
        "attributed": attributed,
        "faults": faults,
        "routine": attributed - faults,
        "by_cause": dict(sorted(by_cause.items(), key=lambda kv: -kv[1]["fault"] - kv[1]["routine"])),
        "faults_by_reason": t.rsts_by("reason", faults_only=True),
        "by_reason": t.rsts_by("reason"),
        "by_leg": t.rsts_by("leg"),
        "by_frontend": {k: v for k, v in t.rsts_by("frontend").items() if k},
        "by_server": dict(sorted(by_server.items(), key=lambda kv: (-kv[1]["fault"], kv[0]))),
    }


def loss_by_leg(t: Tally) -> dict:
    out = {}
    for leg in sorted(set(t.flows) | set(t.retransmissions) | set(t.lost_segments)):
        packets = t.packets_by_leg.get(leg, 0)
        resent = t.retransmissions.get(leg, 0)
        out[leg] = {"flows": t.flows.get(leg, 0), "packets": packets,
                    "retransmissions": resent, "lost_segments": t.lost_segments.get(leg, 0),
                    "retransmission_rate": resent / packets if packets else 0.0}
    return out


def _tally_document(t: Tally) -> dict:
    return {"frames": t.frames, "tcp_segments": t.tcp_segments, "rst_packets": t.rst_packets,
            "tcp_payload_bytes": t.payload_bytes, "rsts": rst_breakdown(t),
            "loss": loss_by_leg(t)}


def window_document(number: int, interval_s: float, window: Tally, total: Tally, *,
                    rtt_ms: dict, newest: list[dict], unsettled: int, drops: dict[str, int],
                    behind: bool, generations: int, elapsed_s: float, final: bool = False) -> dict:
    return {
        "type": "final_window" if final else "window",
        "window": number,
        "time": round(time.time(), 3),
        "elapsed_s": round(elapsed_s, 3),
        "interval_s": interval_s,
        "last_window": {**_tally_document(window), "rtt_ms": rtt_ms},
        "since_start": _tally_document(total),
        "newest_findings": newest,
        "unsettled_rsts": unsettled,
        "dropped_frames": drops,
        "behind": behind,
        "generations": generations,
    }


def render_jsonl(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":")) + "\n"


def _pairs(mapping: dict, limit: int = 6) -> str:
    items = list(mapping.items())[:limit]
    text = ", ".join(f"{k} {v}" for k, v in items)
    more = len(mapping) - limit
    return (text + (f", +{more} more" if more > 0 else "")) or "none"


def render_text(doc: dict, labels: str) -> str:
    w, s = doc["last_window"], doc["since_start"]
    out = [f"tracer live  {labels}  window {doc['window']} ({doc['interval_s']:g} s)  "
           f"running {doc['elapsed_s']:.0f} s"]
    out.append(f"  packets      {w['frames']:,} in window, {s['frames']:,} since start; "
               f"RST segments {w['rst_packets']:,} / {s['rst_packets']:,}")
    for title, part in (("window", w), ("since start", s)):
        r = part["rsts"]
        out.append(f"  RSTs {title:<11} {r['attributed']:,} attributed: {r['faults']:,} faults, "
                   f"{r['routine']:,} routine")
        if r["faults"]:
            faults = {k: v["fault"] for k, v in r["by_cause"].items() if v["fault"]}
            out.append(f"    by cause     {_pairs(faults)}")
            out.append(f"    by reason    {_pairs(r['faults_by_reason'])}")
            servers = {k: v["fault"] for k, v in r["by_server"].items() if v["fault"]}
            if servers:
                out.append(f"    by server    {_pairs(servers)}")
    if doc["unsettled_rsts"]:
        out.append(f"  pending      {doc['unsettled_rsts']:,} RSTs wait for their flows to end "
                   "before attribution")
    for leg, loss in s["loss"].items():
        rtt = w["rtt_ms"].get(leg, {})
        rtt_text = "; ".join(f"{kind} RTT p50 {e['p50']:.3f} ms p99 {e['p99']:.3f} ms"
                             for kind, e in rtt.items()) or "no RTT samples in window"
        out.append(f"  {leg:<12} retransmissions {loss['retransmissions']:,} "
                   f"({loss['retransmission_rate'] * 100:.2f}%), gaps {loss['lost_segments']:,}; "
                   f"{rtt_text}")
    if doc["newest_findings"]:
        out.append("  newest faults:")
        for f in doc["newest_findings"][-5:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(f["ts"]))
            out.append(f"    {stamp} {f['leg']:<8} {f['src']} -> {f['dst']}  {f['reason']} "
                       f"({f['sender']}, {f['origin']}"
                       + (f", {f['server']}" if f["server"] else "") + ")")
    drops = {k: v for k, v in doc["dropped_frames"].items() if v}
    if doc["behind"] or drops:
        out.append(f"  DROPPED      {_pairs(drops)} frames not analysed"
                   + ("; tracer is behind the capture" if doc["behind"] else ""))
    return "\n".join(out) + "\n"

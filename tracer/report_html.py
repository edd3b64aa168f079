"""The HTML report (the I/O edge's renderer; pure: a JSON document in, one HTML string out).

Rules: the page is rendered from the result document alone (docs/json-schema.md), so `tracer
report result.json --html` draws the same page as `tracer analyze --html` without the capture.
It is one self-contained file: inline CSS, a few lines of inline JavaScript, and plots drawn
here as inline SVG (no network, no plotting library). Every plot is an `<svg class="plot">`
with a `data-plot` name. Text from the capture (paths, names) is escaped.

Plots: RSTs over time by cause (stacked bars, routine closes in grey), handshake and data RTT
p50/p99 over time per leg (log scale), retransmission and loss rates over time per leg, per-server
RSTs (fault/routine bars) and the topology with the leg-join figures. Anomaly windows are
shaded on the time plots.
"""

from __future__ import annotations

import html
import math

from tracer.patterns.diagnosis import window_text

WIDTH, HEIGHT = 1000, 220
FINDINGS_OPEN = 6  # findings shown at once; the rest behind a <details>
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 220, 14, 30
CAUSE_COLOURS = {"client": "#1f77b4", "haproxy": "#9467bd", "server": "#d62728", "network": "#ff7f0e",
                 "unknown": "#7f7f7f", "routine": "#c7c7c7"}
LINE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
SEVERITY_COLOURS = {"critical": "#7b0000", "high": "#d62728", "medium": "#ff7f0e", "low": "#1f77b4",
                    "info": "#7f7f7f"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} td,th{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top} th{background:#f6f6f6} td.n{text-align:right;font-variant-numeric:tabular-nums}
.sev{display:inline-block;color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;text-transform:uppercase}
.finding{border:1px solid #ddd;border-left:5px solid #999;border-radius:4px;padding:8px 12px;margin:8px 0}
.finding .meta{color:#555;font-size:13px} .finding p{margin:4px 0;font-size:14px}
.finding.routine{opacity:.75} .muted{color:#777} code{background:#f3f3f3;padding:0 3px;border-radius:3px}
svg.plot{display:block;margin:6px 0;background:#fff} .axis{font-size:11px;fill:#555} .grid{stroke:#eee}
.legend{font-size:11px} .kv td:first-child{color:#555}
"""

SCRIPT = """
document.querySelectorAll('button[data-toggle]').forEach(function(b){
  b.addEventListener('click',function(){
    var on=b.getAttribute('aria-pressed')!=='true'; b.setAttribute('aria-pressed',on);
    document.querySelectorAll(b.getAttribute('data-toggle')).forEach(function(e){e.style.display=on?'none':'';});
  });
});
"""


def e(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-9 and len(ticks) < 20:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:g}"
    return f"{v:.3g}"


class _Frame:
    """Coordinates of one time plot: x = seconds from the capture start, y linear or log."""

    def __init__(self, n: int, bucket_s: float, y_max: float, log: bool = False, y_min: float = 0.0) -> None:
        self.n, self.bucket_s, self.log = n, bucket_s, log
        self.x_max = max(n * bucket_s, bucket_s)
        self.y_min = y_min
        self.y_max = y_max if y_max > y_min else y_min + 1
        self.w = WIDTH - MARGIN_L - MARGIN_R
        self.h = HEIGHT - MARGIN_T - MARGIN_B

    def x(self, seconds: float) -> float:
        return MARGIN_L + self.w * seconds / self.x_max

    def y(self, v: float) -> float:
        if self.log:
            lo, hi = math.log10(self.y_min), math.log10(self.y_max)
            f = (math.log10(max(v, self.y_min)) - lo) / (hi - lo or 1)
        else:
            f = (v - self.y_min) / (self.y_max - self.y_min)
        return MARGIN_T + self.h * (1 - f)

    def axes(self, y_label: str) -> list[str]:
        out = []
        if self.log:
            lo, hi = math.floor(math.log10(self.y_min)), math.ceil(math.log10(self.y_max))
            yt = [10.0 ** k for k in range(lo, hi + 1)]
        else:
            yt = _nice_ticks(self.y_min, self.y_max)
        for v in yt:
            y = self.y(v)
            out.append(f'<line class="grid" x1="{MARGIN_L}" x2="{MARGIN_L + self.w}" y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(f'<text class="axis" x="{MARGIN_L - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(v)}</text>')
        for v in _nice_ticks(0, self.x_max, 8):
            x = self.x(v)
            out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_T}" y2="{MARGIN_T + self.h}"/>')
            out.append(f'<text class="axis" x="{x:.1f}" y="{MARGIN_T + self.h + 14}" text-anchor="middle">{_fmt(v)}s</text>')
        out.append(f'<line stroke="#999" x1="{MARGIN_L}" x2="{MARGIN_L}" y1="{MARGIN_T}" y2="{MARGIN_T + self.h}"/>')
        out.append(f'<line stroke="#999" x1="{MARGIN_L}" x2="{MARGIN_L + self.w}" y1="{MARGIN_T + self.h}" '
                   f'y2="{MARGIN_T + self.h}"/>')
        out.append(f'<text class="axis" transform="translate(12,{MARGIN_T + self.h / 2}) rotate(-90)" '
                   f'text-anchor="middle">{e(y_label)}</text>')
        return out

    def shade(self, windows: list[dict], start_ts: float) -> list[str]:
        out = []
        for w in windows:
            x0, x1 = self.x(w["start_ts"] - start_ts), self.x(w["end_ts"] - start_ts)
            out.append(f'<rect x="{x0:.1f}" y="{MARGIN_T}" width="{max(x1 - x0, 2):.1f}" height="{self.h}" '
                       f'fill="#ffd54f" opacity="0.35"><title>anomaly: {e(w["kind"])} {e(w.get("series"))} '
                       f'score {e(w["score"])}</title></rect>')
        return out


def _legend(items: list[tuple[str, str, str]]) -> list[str]:
    out = []
    x = WIDTH - MARGIN_R + 10
    for i, (name, colour, dash) in enumerate(items[:12]):
        y = MARGIN_T + 6 + 15 * i
        out.append(f'<line x1="{x}" x2="{x + 18}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="3" '
                   f'stroke-dasharray="{dash}"/>')
        out.append(f'<text class="legend" x="{x + 22}" y="{y + 4}">{e(name)}</text>')
    return out


def _svg(name: str, title: str, body: list[str]) -> str:
    return (f'<svg class="plot" data-plot="{e(name)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{e(title)}"><title>{e(title)}</title>' + "".join(body) + "</svg>")


def stacked_bars(name: str, title: str, ts: dict, stacks: list[tuple[str, list, str]], y_label: str,
                 windows: list[dict]) -> str:
    n, bucket = ts["buckets"], ts["bucket_s"]
    totals = [sum((s[1][i] or 0) for s in stacks) for i in range(n)]
    frame = _Frame(n, bucket, max(totals or [0]) * 1.1 or 1)
    body = frame.axes(y_label) + frame.shade(windows, ts["start_ts"])
    bw = max(frame.w / max(n, 1) - 1, 1)
    for i in range(n):
        base = 0.0
        for label, values, colour in stacks:
            v = values[i] or 0
            if not v:
                continue
            y0, y1 = frame.y(base), frame.y(base + v)
            body.append(f'<rect x="{frame.x(i * bucket):.1f}" y="{y1:.1f}" width="{bw:.1f}" '
                        f'height="{max(y0 - y1, 0.5):.1f}" fill="{colour}"><title>{e(label)}: {v} at '
                        f'+{i * bucket}s</title></rect>')
            base += v
    body += _legend([(label, colour, "") for label, _, colour in stacks])
    return _svg(name, title, body)


def lines(name: str, title: str, ts: dict, series: list[tuple[str, list, str, str]], y_label: str,
          windows: list[dict], log: bool = False, percent: bool = False) -> str:
    n, bucket = ts["buckets"], ts["bucket_s"]
    values = [v for _, vals, _, _ in series for v in vals if v is not None]
    scale = 100.0 if percent else 1.0
    if log:
        positive = [v for v in values if v > 0]
        lo = 10 ** math.floor(math.log10(min(positive))) if positive else 0.001
        hi = 10 ** math.ceil(math.log10(max(positive))) if positive else 1
        frame = _Frame(n, bucket, hi if hi > lo else lo * 10, log=True, y_min=lo)
    else:
        frame = _Frame(n, bucket, (max(values) * scale * 1.1) if values and max(values) > 0 else 1)
    body = frame.axes(y_label) + frame.shade(windows, ts["start_ts"])
    for label, vals, colour, dash in series:
        path, pen = [], "M"
        for i, v in enumerate(vals):
            if v is None:
                pen = "M"
                continue
            x = frame.x((i + 0.5) * bucket)
            y = frame.y(v * scale)
            path.append(f"{pen}{x:.1f},{y:.1f}")
            pen = "L"
            if len(vals) <= 400:
                body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.6" fill="{colour}"><title>{e(label)}: '
                            f'{_fmt(v * scale)} at +{i * bucket}s</title></circle>')
        if path:
            body.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.6" '
                        f'stroke-dasharray="{dash}"/>')
    body += _legend([(label, colour, dash) for label, _, colour, dash in series])
    return _svg(name, title, body)


def hbars(name: str, title: str, rows: list[tuple[str, list[tuple[str, float, str]]]]) -> str:
    height = MARGIN_T + 20 * max(len(rows), 1) + 30
    label_w = 230
    total_max = max([sum(v for _, v, _ in parts) for _, parts in rows] or [1]) or 1
    w = WIDTH - label_w - MARGIN_R
    body = []
    for i, (label, parts) in enumerate(rows):
        y = MARGIN_T + 20 * i
        body.append(f'<text class="axis" x="{label_w - 6}" y="{y + 12}" text-anchor="end">{e(label)}</text>')
        x = label_w
        for part, v, colour in parts:
            if v <= 0:
                continue
            bw = w * v / total_max
            body.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{bw:.1f}" height="14" fill="{colour}">'
                        f'<title>{e(label)}: {e(part)} {v:g}</title></rect>')
            x += bw
        body.append(f'<text class="axis" x="{x + 4:.1f}" y="{y + 12}">{" / ".join(_fmt(v) for _, v, _ in parts)}</text>')
    legend_items = {part: colour for _, parts in rows for part, _, colour in parts}
    for j, (part, colour) in enumerate(legend_items.items()):
        x = WIDTH - MARGIN_R + 10
        body.append(f'<rect x="{x}" y="{MARGIN_T + 15 * j}" width="12" height="10" fill="{colour}"/>'
                    f'<text class="legend" x="{x + 16}" y="{MARGIN_T + 15 * j + 9}">{e(part)}</text>')
    return (f'<svg class="plot" data-plot="{e(name)}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
            f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{e(title)}">'
            f'<title>{e(title)}</title>' + "".join(body) + "</svg>")


def topology_svg(cap: dict) -> str:
    topo = cap.get("topology") or {}
    join = cap.get("join") or {}
    fronts = [f"{f.get('name') or 'frontend'} {', '.join(f.get('binds') or [])}" for f in topo.get("frontends", [])]
    servers = [f"{s['backend'] + '/' if s.get('backend') else ''}{s['name']} {s.get('address') or ''}"
               for s in topo.get("servers", [])]
    by_leg = (cap.get("patterns") or {}).get("by_leg", {})
    rows = max(len(fronts), len(servers), 3)
    height = max(160, 24 * min(rows, 16) + 80)
    body = []

    def box(x, y, w, h, text, fill) -> None:
        body.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="#888"/>')
        body.append(f'<text class="legend" x="{x + w / 2}" y="{y + h / 2 + 4}" text-anchor="middle">{e(text)}</text>')

    fl = by_leg.get("frontend", {}).get("flows", 0)
    bl = by_leg.get("backend", {}).get("flows", 0)
    box(20, height / 2 - 20, 120, 40, f"clients ({fl:,} flows)", "#e3f2fd")
    hx = 360
    box(hx, height / 2 - 30, 170, 60, "HAProxy", "#ede7f6")
    for i, text in enumerate(fronts[:16]):
        y = 30 + 22 * i
        body.append(f'<text class="axis" x="{hx - 10}" y="{y}" text-anchor="end">{e(text[:40])}</text>')
    body.append(f'<line x1="140" y1="{height / 2}" x2="{hx}" y2="{height / 2}" stroke="#1f77b4" stroke-width="2"/>')
    body.append(f'<text class="axis" x="{(140 + hx) / 2}" y="{height / 2 + 16}" text-anchor="middle">frontend leg</text>')
    sx = 640
    shown = servers[:16]
    for i, text in enumerate(shown):
        y = 20 + (height - 40) * (i + 0.5) / max(len(shown), 1)
        body.append(f'<line x1="{hx + 170}" y1="{height / 2}" x2="{sx}" y2="{y:.1f}" stroke="#d62728" opacity="0.5"/>')
        body.append(f'<text class="axis" x="{sx + 4}" y="{y + 3:.1f}">{e(text[:42])}</text>')
    if len(servers) > 16:
        body.append(f'<text class="axis" x="{sx + 4}" y="{height - 4}">+{len(servers) - 16} more</text>')
    rate = join.get("join_rate")
    join_text = (f"backend leg: {bl:,} flows; join {join.get('backend_flows_joined', 0):,}/"
                 f"{join.get('backend_flows', 0):,}" + (f" ({rate * 100:.1f}%)" if rate is not None else "")
                 + f", {join.get('backend_flows_ambiguous', 0):,} ambiguous")
    body.append(f'<text class="axis" x="{hx + 85}" y="{height / 2 + 48}" text-anchor="middle">{e(join_text)}</text>')
    return (f'<svg class="plot" data-plot="topology" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
            f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="topology">'
            f'<title>topology and leg join</title>' + "".join(body) + "</svg>")


def _table(headers: list[str], rows: list[list], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="n">{e(_cell(v))}</td>' if i in numeric else f"<td>{e(_cell(v))}</td>"
            for i, v in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return _fmt(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _findings_html(cap: dict) -> str:
    findings = cap.get("findings") or []
    if not findings:
        return '<p class="muted">No findings.</p>'
    out = ['<p><button data-toggle=".finding.routine" aria-pressed="false">hide routine</button></p>']
    for i, f in enumerate(findings):
        if i == FINDINGS_OPEN and len(findings) > FINDINGS_OPEN:
            out.append(f"<details><summary>{len(findings) - FINDINGS_OPEN} more findings</summary>")
        colour = SEVERITY_COLOURS.get(f["severity"], "#999")
        setting = f.get("setting")
        configured = f.get("configured")
        w = f.get("window")
        window = window_text(w) if w else "-"
        frames = ", ".join(str(x) for x in f.get("evidence_frames") or []) or "-"
        out.append(
            f'<div class="finding{" routine" if f.get("routine") else ""}" data-severity="{e(f["severity"])}" '
            f'style="border-left-color:{colour}">'
            f'<div><span class="sev" style="background:{colour}">{e(f["severity"])}</span> '
            f'<b>{e(f["rank"])}. {e(f["title"])}</b></div>'
            f'<div class="meta">cause <b>{e(f["cause"])}</b> · check <code>{e(setting or "-")}</code>'
            + (f" (configured: {e(configured)})" if configured else "")
            + (f" · leg {e(f['leg'])}" if f.get("leg") else "")
            + (f" · server {e(f['server'])}" if f.get("server") else "")
            + f' · window {e(window)}</div>'
            f'<p><b>Seen:</b> {e(f["seen"])}</p><p><b>Action:</b> {e(f["action"])}</p>'
            f'<p class="meta">evidence frames: {e(frames)}</p></div>')
    if len(findings) > FINDINGS_OPEN:
        out.append("</details>")
    return "".join(out)


def _capture_html(cap: dict) -> str:
    out = [f"<h1>{e(cap['path'])}</h1>"]
    att = cap.get("rst_attribution") or {}
    out.append('<table class="kv">' + "".join(
        f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in (
            ("packets", f"{cap.get('packets', 0):,}"),
            ("TCP segments", f"{cap.get('tcp_packets', 0):,}"),
            ("time span", f"{cap.get('duration_s', 0):.3f} s from {cap.get('first_ts') or 0:.3f}"),
            ("flows", f"{(cap.get('flows') or {}).get('total', 0):,}"),
            ("RSTs", f"{cap.get('rsts', 0):,}: {att.get('faults', 0):,} faults, "
                     f"{att.get('routine', 0):,} routine HAProxy closes"),
            ("retransmissions", f"{cap.get('retransmissions', 0):,} "
                                f"({cap.get('retransmission_rate', 0) * 100:.2f}% of data segments)"),
        )) + "</table>")
    out.append("<h2>Findings</h2>")
    out.append(_findings_html(cap))
    ts = cap.get("timeseries")
    windows = cap.get("anomaly_windows") or []
    if ts and ts.get("buckets"):
        out.append(f"<h2>Over time</h2><p class='muted'>buckets of {ts['bucket_s']} s from "
                   f"{ts['start_ts']:.3f}; shaded: anomaly windows (rolling median + MAD)</p>")
        stacks = [(f"fault: {c}", v, CAUSE_COLOURS.get(c, "#333")) for c, v in ts.get("rsts_by_cause", {}).items()]
        stacks.append(("routine", ts.get("rsts_routine") or [0] * ts["buckets"], CAUSE_COLOURS["routine"]))
        out.append("<h3>RSTs by cause</h3>")
        out.append(stacked_bars("rsts_by_cause", "RSTs over time by cause", ts, stacks, "RSTs",
                                [w for w in windows if w["kind"] in ("rst_burst", "refusals")]))
        other = [("refused", ts.get("refused"), "#d62728", ""), ("SYN retries", ts.get("syn_retries"), "#9467bd", "4 2"),
                 ("flows started", ts.get("flows_started"), "#7f7f7f", "1 2")]
        out.append("<h3>Connections: started, refused, SYN retries</h3>")
        out.append(lines("connections", "connections over time", ts, [s for s in other if s[1]], "per bucket",
                         [w for w in windows if w["kind"] in ("refusals", "syn_retries")]))
        for leg, data in (ts.get("legs") or {}).items():
            series = []
            for j, (kind, pcts) in enumerate((data.get("rtt_ms") or {}).items()):
                colour = LINE_COLOURS[j % len(LINE_COLOURS)]
                series.append((f"{kind} p50", pcts["p50"], colour, ""))
                series.append((f"{kind} p99", pcts["p99"], colour, "5 3"))
            if series:
                out.append(f"<h3>RTT percentiles, {e(leg)} leg (ms, log scale)</h3>")
                out.append(lines(f"rtt_{leg}", f"RTT over time, {leg} leg", ts, series, "ms",
                                 [w for w in windows if w["kind"] == "rtt_p99_spike" and w.get("leg") == leg],
                                 log=True))
        rate_series = []
        for j, (leg, data) in enumerate((ts.get("legs") or {}).items()):
            colour = LINE_COLOURS[j % len(LINE_COLOURS)]
            rate_series.append((f"{leg} retransmission rate", data["retransmission_rate"], colour, ""))
            rate_series.append((f"{leg} loss rate", data["loss_rate"], colour, "5 3"))
        if rate_series:
            out.append("<h3>Retransmission and loss rates (% of data segments)</h3>")
            out.append(lines("loss", "loss and retransmission rates over time", ts, rate_series, "%",
                             [w for w in windows if w["kind"] == "loss_spike"], percent=True))
    pat = cap.get("patterns") or {}
    servers = pat.get("by_server") or {}
    if servers:
        out.append("<h2>Per server</h2>")
        rows = [(name, [("fault RSTs", s["rsts_fault"], "#d62728"), ("routine RSTs", s["rsts_routine"], "#c7c7c7"),
                        ("refused", s["refused"], "#ff7f0e")]) for name, s in
                sorted(servers.items(), key=lambda kv: (-kv[1]["rsts_fault"], kv[0]))]
        out.append(hbars("servers", "RSTs per server", rows))
        out.append(_breakdown_table(servers))
    for key, label in (("by_leg", "Per leg"), ("by_frontend", "Per frontend"), ("by_backend", "Per backend"),
                       ("by_client_subnet", "Per client subnet")):
        if pat.get(key):
            out.append(f"<h2>{label}</h2>" + _breakdown_table(pat[key]))
    if "topology" in cap:
        out.append("<h2>Topology and leg join</h2>")
        out.append(topology_svg(cap))
        topo = cap["topology"]
        out.append(f"<p class='muted'>source: {e(topo.get('source'))}; "
                   + e("; ".join(topo.get("notes") or [])) + "</p>")
        j = cap.get("join") or {}
        out.append(_table(["join figure", "value"], [[k, v] for k, v in j.items()], {1}))
    if windows:
        out.append("<h2>Anomaly windows</h2>")
        out.append(_table(["kind", "series", "start", "end", "value", "baseline", "score"],
                          [[w["kind"], w["series"], f"{w['start_ts']:.3f}", f"{w['end_ts']:.3f}", w["value"],
                            w["baseline"], w["score"]] for w in windows[:50]], {4, 5, 6}))
    return "".join(out)


def _breakdown_table(groups: dict) -> str:
    headers = ["name", "flows", "fault RSTs", "routine RSTs", "refused", "SYN retries", "retrans. rate",
               "loss rate", "lost before / after / missed", "zero windows", "handshake RTT resp. p50/p99 ms",
               "handshake RTT init. p50/p99 ms", "duration p50/p99 s"]
    rows = []
    for name, g in groups.items():
        rtt = g.get("rtt_ms", {})

        def pp(d) -> str:
            return "-" if not d or d.get("p50") is None else f"{_fmt(d['p50'])} / {_fmt(d['p99'])}"
        rows.append([name, g["flows"], g["rsts_fault"], g["rsts_routine"], g["refused"], g["syn_retries"],
                     _pct(g["retransmission_rate"]), _pct(g["loss_rate"]),
                     f"{g['lost_before_capture']} / {g['lost_after_capture']} / {g['missed_by_capture']}",
                     g["zero_windows"], pp(rtt.get("handshake_responder")), pp(rtt.get("handshake_initiator")),
                     pp(g.get("duration_s"))])
    return _table(headers, rows, {1, 2, 3, 4, 5, 9})


def render_html(document: dict) -> str:
    caps = document.get("captures") or []
    body = "".join(f'<section class="capture">{_capture_html(c)}</section>' for c in caps)
    title = "tracer report: " + ", ".join(c.get("path", "?") for c in caps)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{e(title)}</title><meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<style>{CSS}</style></head><body>{body}"
            f"<p class='muted'>tracer {e(document.get('tracer_version'))}, schema "
            f"{e(document.get('schema_version'))}</p><script>{SCRIPT}</script></body></html>\n")

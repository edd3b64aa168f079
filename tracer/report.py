"""Rendering results (the I/O edge): the JSON document and the terminal summary.

Rules: both renderings come from the same result document (see docs/json-schema.md); the text
is a view of the JSON, never a separate computation. Colour is used only when the output is a
terminal, and lines are fitted to the terminal width.
"""

from __future__ import annotations

import json
import shutil

from tracer import __version__
from tracer.analysis import SCHEMA_VERSION


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
    label_w = 20
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
        if cap["leftover_bytes"]:
            row("leftover", f"{cap['leftover_bytes']:,} bytes after the last complete record", warn=True)
        if cap.get("problem"):
            row("problem", cap["problem"], warn=True)
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"

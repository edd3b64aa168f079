"""Small helpers for tests: run the CLI, ask tshark, cut and write captures."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tracer(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tracer", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
    )


def analyze_json(*args: str, stdin: bytes | None = None) -> dict:
    proc = run_tracer("analyze", "--format", "json", *args, stdin=stdin)
    assert proc.returncode in (0, 1), proc.stderr.decode()
    return json.loads(proc.stdout)


def tshark_count(path: Path | str, display_filter: str | None = None) -> int:
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"]
    if display_filter:
        cmd += ["-Y", display_filter]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return len([line for line in proc.stdout.splitlines() if line.strip()])


def pcap_record_ends(data: bytes) -> list[int]:
    """End offsets of the complete records of a classic pcap, read sequentially."""
    magic = struct.unpack_from("<I", data, 0)[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    pos, ends = 24, []
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        if pos + 16 + caplen > len(data):
            break
        pos += 16 + caplen
        ends.append(pos)
    return ends


def write_pcap(path: Path, frames: list[bytes], linktype: int = 1, *, little: bool = True,
               nanoseconds: bool = False, snaplen: int = 65535, ts0: int = 1_700_000_000) -> Path:
    order = "<" if little else ">"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    parts = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, frame in enumerate(frames):
        cap = frame[:snaplen]
        parts.append(struct.pack(order + "IIII", ts0 + i, i * 1000, len(cap), len(frame)) + cap)
    path.write_bytes(b"".join(parts))
    return path

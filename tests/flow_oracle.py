"""tshark as the test oracle for the flow stage: Wireshark's TCP sequence analysis, per frame.

Rules:
- `tshark_flow_analysis(path)` returns one `FLOW_ORACLE_DTYPE` row per frame that matches
  `tcp && !icmp && !icmpv6` (the frames of tests/oracle.py: TCP quoted inside ICMP errors gets
  no row), every value taken from tshark's `-T fields` output. The flow stage's per-frame facts
  are compared to these rows, matched on `frame`.
- tshark runs with tests/oracle.py's `ORACLE_PREFS` followed by `FLOW_PREFS` (tshark applies
  `-o` in order, so the later value wins):
      tcp.analyze_sequence_numbers:TRUE   the point of it: tcp.analysis.*
      tcp.relative_sequence_numbers:TRUE  tcp.seq / tcp.ack / tcp.nxtseq relative per direction
      tcp.calculate_timestamps:TRUE       tcp.time_relative / tcp.time_delta per stream
      tcp.desegment_tcp_streams:FALSE, ip.defragment:FALSE, ipv6.defragment:FALSE
                                          (as ORACLE_PREFS) one frame, one segment
  and every other preference the analysis reads, pinned to tshark 4.0.17's defaults so a
  user's preferences file cannot change the answers: tcp.track_bytes_in_flight:TRUE,
  tcp.bif_seq_based:FALSE, tcp.fastrt_supersedes_ooo:TRUE, tcp.ignore_tcp_timestamps:FALSE,
  tcp.reassemble_out_of_order:FALSE, tcp.read_seq_as_syn_cookie:FALSE,
  tcp.default_window_scaling:-1 ("not known").
- Fields: frame.number, frame.time_epoch, frame.protocols, tcp.stream, ip/ipv6 src and dst,
  tcp.srcport/dstport/flags/len, the FT_NONE flags tcp.analysis.<flag> for every name in
  `FLAG_FIELDS` (tshark prints "1" when set, nothing otherwise), tcp.analysis.duplicate_ack_num,
  .duplicate_ack_frame, .ack_rtt, .acks_frame, .initial_rtt, .bytes_in_flight,
  tcp.window_size_scalefactor, tcp.window_size, tcp.window_size_value, tcp.seq, tcp.nxtseq,
  tcp.ack, tcp.seq_raw, tcp.ack_raw.
- Times (`ts_ns`, `ack_rtt_ns`, `initial_rtt_ns`) are parsed from tshark's decimal text with
  Decimal, never through a float, so `ack_rtt_ns` equals the difference of the two frames'
  `ts_ns` exactly (tshark subtracts the same nstime values).
- Absent values: -1 for ack_rtt_ns, initial_rtt_ns, bytes_in_flight, nxtseq, payload_len;
  0 for acks_frame, duplicate_ack_frame, duplicate_ack_num (frame numbers start at 1).
  window_size_scaling_factor: tshark's own -1 (scale unknown: no SYN seen in this stream) and
  -2 (SYNs seen, no scaling), and `WSCALE_NOT_SHOWN` (-3) where tshark shows none at all (SYN
  and SYN/ACK, whose window is never scaled).
- A field printed more than once in one frame (tcp.analysis.duplicate_ack comes out as "1,1")
  counts by its first occurrence. Addresses use the tracer's representation
  (`tracer.packet.parse_address`), from the IP header that carries the TCP segment: the last
  ip/ipv6 layer before the first tcp in frame.protocols.

What tshark 4.0.17's analysis does, found with this module (tests/test_flow_oracle_selfcheck.py
pins each point):
- Retransmission kinds. A segment that does not advance its direction's highest sequence
  number gets exactly one of, in this order: fast_retransmission (>= 2 duplicate ACKs came
  back, seq == their ack, < 20 ms after the last of them), out_of_order (< iRTT after the
  segment that last advanced the highest sequence number, 3 ms if no iRTT, and it does not end
  there), spurious_retransmission (all of it was already ACKed), else retransmission.
  Fast and spurious ones also carry tcp.analysis.retransmission; out_of_order ones do not.
- So on a fast link out_of_order is what most retransmissions are called: at a sender on a
  20 us-RTT veth, from a third to nearly all of the re-sent segments come out as out_of_order,
  because the sender keeps sending new data in between. In a capture taken at the sender (which cannot reorder its
  own output) every out_of_order segment is a re-sent one: `resent_mask` = retransmission |
  out_of_order. At a receiver, out_of_order is also what a hole filled within an iRTT looks
  like, and a real reordering looks the same.
- lost_segment is set once per gap, on the first segment that starts beyond the highest
  sequence number seen, however many segments are missing; ack_lost_segment on an ACK above
  the highest sequence number seen from the other side (a segment the capture missed).
- First segment of a direction: it sets the base, seq_rel 0 for a SYN, 1 for anything else
  (base = seq - 1), and no lost_segment or retransmission flag. If the first frame of a flow is
  an ACK, its ack also sets the other direction's base (ack - 1), so that side's earlier bytes,
  seen later, come out far above 2**31 (wrapped) and flagged retransmission +
  spurious_retransmission.
- tcp.ack is always shown: relative when the ACK flag is set, the raw field when it is not
  (a SYN, a bare RST). tcp.nxtseq is always shown (a pure ACK: nxtseq == seq).
- ack_rtt / acks_frame go on the first frame whose ACK covers a segment: the SYN/ACK (for the
  SYN), the handshake's third packet (for the SYN/ACK), pure ACKs, data, FINs. Without frame
  times (pcapng Simple Packet Blocks) acks_frame is shown and ack_rtt is not.
- initial_rtt (the third handshake packet's time minus the SYN's) lives in the SEQ/ACK
  analysis subtree, which tshark only builds for a frame with something else in it (an acked
  segment, bytes in flight, a flag): from the third packet on it is on most frames, but not
  on, e.g., a FIN or RST that acks nothing new. Compare it only where it is shown.
- bytes_in_flight is only on segments carrying data, and not on those after a gap in their
  direction: a lost_segment switches it off for that direction (tshark's valid_bif) until
  tshark finds it can track again.
- Window: the scale factor is a multiplier (1024 for shift 10), not the shift; with -1 (no SYN
  seen) tcp.window_size is the raw 16-bit value.
- Port reuse: a SYN without ACK whose seq differs from its direction's base (set by the first
  segment seen, SYN or not) opens a new tcp.stream and gets reused_ports, whether the old
  connection ended with FIN, RST or not at all, and even when it never got a SYN/ACK. The same
  SYN again (same ISN) is a retransmission in the same stream, and so is everything after it
  that repeats the old sequence numbers (a repeated bare ACK even comes out as keep_alive).
  tcp.stream splits the same way with sequence analysis off (but without the reused_ports flag).
  A SYN/ACK whose seq differs from its direction's base gets reused_ports too but stays in the
  same tcp.stream (corpus rst-inject-rae.pcap: an injected RST came first and set the base).

`tshark_conversations(path)` summarizes the same field output per tcp.stream: its first and
last frame, the endpoints as written in the first frame, and its frame count (not
`-z conv,tcp`, which counts every frame of a 5-tuple, ICMP-quoted ones and reuses included).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from oracle import TCP_DISPLAY_FILTER, OracleError, _run, parse_epoch_ns, tshark_command

from tracer.packet import format_address, parse_address

FLOW_PREFS: tuple[str, ...] = (
    "tcp.analyze_sequence_numbers:TRUE",
    "tcp.relative_sequence_numbers:TRUE",
    "tcp.calculate_timestamps:TRUE",
    "tcp.desegment_tcp_streams:FALSE",
    "ip.defragment:FALSE",
    "ipv6.defragment:FALSE",
    # tshark 4.0.17's defaults, pinned (see the module rules)
    "tcp.track_bytes_in_flight:TRUE",
    "tcp.bif_seq_based:FALSE",
    "tcp.fastrt_supersedes_ooo:TRUE",
    "tcp.ignore_tcp_timestamps:FALSE",
    "tcp.reassemble_out_of_order:FALSE",
    "tcp.read_seq_as_syn_cookie:FALSE",
    "tcp.default_window_scaling:-1",
)

WSCALE_NOT_SHOWN = -3

# The analysis flags, in dtype order: FT_NONE fields that tshark prints as "1" when set.
FLAG_FIELDS: tuple[str, ...] = (
    "retransmission",
    "fast_retransmission",
    "spurious_retransmission",
    "out_of_order",
    "lost_segment",
    "ack_lost_segment",
    "duplicate_ack",
    "zero_window",
    "window_full",
    "keep_alive",
    "zero_window_probe",
    "reused_ports",
    # Not asked for by the flow stage's first cut, but free to have and handy to compare:
    "window_update",
    "keep_alive_ack",
    "zero_window_probe_ack",
)

FLOW_ORACLE_DTYPE = np.dtype(
    [
        ("frame", np.int64),
        ("ts_ns", np.int64),  # frame.time_epoch, exact; 0 without a timestamp (pcapng SPB)
        ("stream", np.int64),  # tcp.stream
        ("ip_version", np.uint8),
        ("src_hi", np.uint64),
        ("src_lo", np.uint64),
        ("dst_hi", np.uint64),
        ("dst_lo", np.uint64),
        ("sport", np.uint16),
        ("dport", np.uint16),
        ("tcp_flags", np.uint16),  # tcp.flags, all 12 bits
        ("payload_len", np.int64),  # tcp.len, -1 if tshark shows none (IP fragments)
        *[(name, np.bool_) for name in FLAG_FIELDS],
        ("duplicate_ack_num", np.int64),
        ("duplicate_ack_frame", np.int64),
        ("ack_rtt_ns", np.int64),
        ("acks_frame", np.int64),
        ("initial_rtt_ns", np.int64),
        ("bytes_in_flight", np.int64),
        ("window_size_scaling_factor", np.int64),
        ("window_size", np.int64),  # tcp.window_size: the scaled window
        ("window_size_value", np.int64),  # tcp.window_size_value: the raw 16-bit field
        ("seq_rel", np.int64),
        ("nxtseq", np.int64),
        ("ack_rel", np.int64),
        ("seq_raw", np.int64),
        ("ack_raw", np.int64),
    ]
)

_FIELDS: tuple[str, ...] = (
    "frame.number",
    "frame.time_epoch",
    "frame.protocols",
    "tcp.stream",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags",
    "tcp.len",
    *[f"tcp.analysis.{name}" for name in FLAG_FIELDS],
    "tcp.analysis.duplicate_ack_num",
    "tcp.analysis.duplicate_ack_frame",
    "tcp.analysis.ack_rtt",
    "tcp.analysis.acks_frame",
    "tcp.analysis.initial_rtt",
    "tcp.analysis.bytes_in_flight",
    "tcp.window_size_scalefactor",
    "tcp.window_size",
    "tcp.window_size_value",
    "tcp.seq",
    "tcp.nxtseq",
    "tcp.ack",
    "tcp.seq_raw",
    "tcp.ack_raw",
)
_COLUMN = {name: i for i, name in enumerate(_FIELDS)}

# name in FLOW_ORACLE_DTYPE -> (tshark field, value when absent)
_INT_COLUMNS: dict[str, tuple[str, int]] = {
    "stream": ("tcp.stream", -1),
    "sport": ("tcp.srcport", 0),
    "dport": ("tcp.dstport", 0),
    "tcp_flags": ("tcp.flags", 0),
    "payload_len": ("tcp.len", -1),
    "duplicate_ack_num": ("tcp.analysis.duplicate_ack_num", 0),
    "duplicate_ack_frame": ("tcp.analysis.duplicate_ack_frame", 0),
    "acks_frame": ("tcp.analysis.acks_frame", 0),
    "bytes_in_flight": ("tcp.analysis.bytes_in_flight", -1),
    "window_size_scaling_factor": ("tcp.window_size_scalefactor", WSCALE_NOT_SHOWN),
    "window_size": ("tcp.window_size", -1),
    "window_size_value": ("tcp.window_size_value", -1),
    "seq_rel": ("tcp.seq", -1),
    "nxtseq": ("tcp.nxtseq", -1),
    "ack_rel": ("tcp.ack", -1),  # always shown by 4.0.17; -1 only if that changes
    "seq_raw": ("tcp.seq_raw", -1),
    "ack_raw": ("tcp.ack_raw", -1),
}
_TIME_COLUMNS: dict[str, str] = {
    "ack_rtt_ns": "tcp.analysis.ack_rtt",
    "initial_rtt_ns": "tcp.analysis.initial_rtt",
}

def _first(cell: str) -> str:
    return cell.split(",", 1)[0]


def _int(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


def parse_seconds_ns(text: str) -> int:
    """'0.000021701' (seconds, tshark's FT_RELATIVE_TIME text) -> 21701, exactly."""
    return int(Decimal(text).scaleb(9).to_integral_value())


def flow_command(path: str, extra_prefs: Iterable[str] = ()) -> list[str]:
    """The tshark command line this oracle runs (handy to reproduce a disagreement by hand)."""
    return tshark_command(os.fspath(path), _FIELDS, TCP_DISPLAY_FILTER,
                          (*FLOW_PREFS, *extra_prefs))


def _fill_row(cols: list[str], row: np.void) -> None:
    c = _COLUMN
    row["frame"] = int(cols[c["frame.number"]])
    if cols[c["frame.time_epoch"]]:
        row["ts_ns"] = parse_epoch_ns(cols[c["frame.time_epoch"]])
    for name, (tshark_field, absent) in _INT_COLUMNS.items():
        cell = cols[c[tshark_field]]
        row[name] = _int(_first(cell)) if cell else absent
    for name, tshark_field in _TIME_COLUMNS.items():
        cell = cols[c[tshark_field]]
        row[name] = parse_seconds_ns(_first(cell)) if cell else -1
    for name in FLAG_FIELDS:
        row[name] = cols[c[f"tcp.analysis.{name}"]] != ""

    protocols = cols[c["frame.protocols"]].split(":")
    before_tcp = protocols[: protocols.index("tcp")] if "tcp" in protocols else protocols
    carriers = [name for name in before_tcp if name in ("ip", "ipv6")]
    if not carriers:
        raise OracleError(f"frame {row['frame']}: tcp without an ip/ipv6 layer")
    carrier = carriers[-1]
    occurrence = carriers.count(carrier) - 1
    src = cols[c[f"{carrier}.src"]].split(",")
    dst = cols[c[f"{carrier}.dst"]].split(",")
    if occurrence >= len(src) or occurrence >= len(dst):
        raise OracleError(f"frame {row['frame']}: no {carrier} address #{occurrence}")
    row["ip_version"] = 4 if carrier == "ip" else 6
    row["src_hi"], row["src_lo"] = parse_address(src[occurrence])
    row["dst_hi"], row["dst_lo"] = parse_address(dst[occurrence])


def tshark_flow_analysis(path: str | os.PathLike, extra_prefs: Iterable[str] = (), *,
                         tolerate_cut_short: bool = False) -> np.ndarray:
    """tshark's sequence analysis of every TCP frame outside ICMP (see the module rules)."""
    out = _run(flow_command(os.fspath(path), extra_prefs),
               tolerate_cut_short=tolerate_cut_short)
    lines = [line for line in out.split("\n") if line]
    rows = np.zeros(len(lines), dtype=FLOW_ORACLE_DTYPE)
    for i, line in enumerate(lines):
        cols = line.split("\t")
        if len(cols) != len(_FIELDS):
            raise OracleError(f"tshark printed {len(cols)} columns, expected {len(_FIELDS)}")
        _fill_row(cols, rows[i])
    return rows


@dataclass(frozen=True)
class Conversation:
    stream: int  # tcp.stream
    first_frame: int
    last_frame: int
    frames: int  # frames of this stream in the oracle's rows
    ip_version: int
    src: str  # endpoints as written in the first frame: its sender is "src"
    sport: int
    dst: str
    dport: int


def conversations_from_rows(rows: np.ndarray) -> dict[int, Conversation]:
    """Per tcp.stream: first/last frame, frame count and the first frame's endpoints."""
    streams, first_index, counts = np.unique(rows["stream"], return_index=True,
                                             return_counts=True)
    # Rows are in frame order, so the last row of a stream is the max frame among its rows.
    order = np.argsort(rows["stream"], kind="stable")
    last_index = order[np.cumsum(counts) - 1]
    result: dict[int, Conversation] = {}
    for stream, first, last, count in zip(streams, first_index, last_index, counts,
                                          strict=True):
        row = rows[first]
        result[int(stream)] = Conversation(
            stream=int(stream),
            first_frame=int(row["frame"]),
            last_frame=int(rows[last]["frame"]),
            frames=int(count),
            ip_version=int(row["ip_version"]),
            src=format_address(row["src_hi"], row["src_lo"]),
            sport=int(row["sport"]),
            dst=format_address(row["dst_hi"], row["dst_lo"]),
            dport=int(row["dport"]),
        )
    return result


def tshark_conversations(path: str | os.PathLike, extra_prefs: Iterable[str] = (), *,
                         tolerate_cut_short: bool = False) -> dict[int, Conversation]:
    """tshark's TCP conversations (tcp.stream) with the same prefs as tshark_flow_analysis."""
    return conversations_from_rows(
        tshark_flow_analysis(path, extra_prefs, tolerate_cut_short=tolerate_cut_short))


def direction_mask(rows: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Rows sent from address `src` to address `dst` (any ports)."""
    src_hi, src_lo = parse_address(src)
    dst_hi, dst_lo = parse_address(dst)
    return ((rows["src_hi"] == src_hi) & (rows["src_lo"] == src_lo)
            & (rows["dst_hi"] == dst_hi) & (rows["dst_lo"] == dst_lo))


def resent_mask(rows: np.ndarray) -> np.ndarray:
    """Segments carrying bytes sent before, by tshark's flags, in a capture taken at the sender.

    retransmission covers the fast and spurious kinds; out_of_order is how tshark names a
    retransmission that comes within an iRTT of new data (see the module notes).
    """
    return (rows["payload_len"] > 0) & (rows["retransmission"] | rows["out_of_order"])

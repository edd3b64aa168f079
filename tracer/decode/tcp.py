"""TCP header (RFC 9293) and options, decoded for many segments at once.

Rules:
- A segment needs its 20-byte fixed header captured; otherwise it is dropped as
  `truncated_tcp_header`. Options cut short by the snaplen keep the row: they are parsed as far
  as they were captured (`truncated_tcp_options`), as Wireshark does.
- Payload length = transport length from the IP header - data offset * 4.
- Options are walked in lockstep: each step reads the option at every row's cursor and advances
  all cursors (an option list holds at most 40 bytes, so at most 40 steps). The first occurrence
  of each option kind counts. A length < 2 or past the header end stops that row's walk
  (`bad_tcp_option`).

Option kinds: EOL 0, NOP 1, MSS 2 (len 4), window scale 3 (len 3), SACK-permitted 4 (len 2),
SACK 5 (len 2 + 8k), timestamps 8 (len 10) -- RFC 9293, RFC 7323, RFC 2018.
"""

from __future__ import annotations

import numpy as np

from tracer.decode import vocab as v
from tracer.decode.fields import Fields, missing_reason
from tracer.packet import (
    MAX_SACK_BLOCKS,
    OPT_MSS,
    OPT_SACK,
    OPT_SACK_PERM,
    OPT_TIMESTAMP,
    OPT_WSCALE,
)

TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WSCALE = 3
TCPOPT_SACK_PERM = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8
MAX_OPTION_STEPS = 40


def check_tcp(f: Fields, rows: np.ndarray, l4: np.ndarray, l4_len: np.ndarray,
              caplen: np.ndarray) -> np.ndarray:
    """DROP codes for candidate TCP rows (0 = decodable)."""
    drop = np.zeros(rows.shape, np.uint8)
    fixed = f.within(l4 + 20, rows)
    drop[~fixed] = missing_reason(f, l4 + 20, rows, v.DROP["truncated_tcp_header"],
                                  v.DROP["headers_beyond_head"], caplen)[~fixed]
    short_ip = (drop == 0) & (l4_len < 20)
    drop[short_ip] = v.DROP["bad_tcp_header_length"]
    data_offset = (f.u8(l4 + 12, rows) >> 4).astype(np.int64) * 4
    bad = (drop == 0) & ((data_offset < 20) | (data_offset > l4_len))
    drop[bad] = v.DROP["bad_tcp_header_length"]
    return drop


def decode_tcp(f: Fields, rows: np.ndarray, l4: np.ndarray, l4_len: np.ndarray, out: np.ndarray,
               caplen: np.ndarray) -> dict[str, int]:
    """Fill the TCP columns of `out` (one row per entry of `rows`); returns kept-row anomalies."""
    b12 = f.u8(l4 + 12, rows)
    b13 = f.u8(l4 + 13, rows)
    hdr_len = (b12 >> 4).astype(np.int64) * 4
    out["sport"] = f.u16(l4, rows)
    out["dport"] = f.u16(l4 + 2, rows)
    out["seq"] = f.u32(l4 + 4, rows)
    out["ack"] = f.u32(l4 + 8, rows)
    out["flags"] = ((b12.astype(np.uint16) & 0x0F) << 8) | b13  # 9 flags + 3 reserved bits
    out["window"] = f.u16(l4 + 14, rows)
    out["urgent"] = f.u16(l4 + 18, rows)
    out["tcp_hdr_len"] = hdr_len
    out["payload_len"] = l4_len - hdr_len
    anomalies: dict[str, int] = {}
    with_options = np.flatnonzero(hdr_len > 20)
    if with_options.size:
        _options(f, rows[with_options], l4[with_options], hdr_len[with_options], out, with_options,
                 caplen, anomalies)
    return anomalies


def _options(f, rows, l4, hdr_len, out, out_rows, caplen, anomalies) -> None:
    n = rows.shape[0]
    header_end = l4 + hdr_len
    # The walk stops at what was captured; running into that limit is a truncation, not an error.
    captured_end = np.minimum(header_end, f.limit[rows])
    truncated = captured_end < header_end
    cursor = l4 + 20
    present = np.zeros(n, np.uint8)
    mss = np.zeros(n, np.uint16)
    wscale = np.zeros(n, np.uint8)
    sack_at = np.zeros(n, np.int64)
    sack_count = np.zeros(n, np.uint8)
    tsval = np.zeros(n, np.uint32)
    tsecr = np.zeros(n, np.uint32)
    bad = np.zeros(n, bool)
    active = np.arange(n)
    for _ in range(MAX_OPTION_STEPS):
        active = active[cursor[active] < captured_end[active]]
        if not active.size:
            break
        r = rows[active]
        at = cursor[active]
        kind = f.u8(at, r)
        eol = kind == TCPOPT_EOL
        nop = kind == TCPOPT_NOP
        has_len = ~eol & ~nop
        length = np.where(has_len, f.u8(at + 1, r).astype(np.int64), 1)
        len_captured = ~has_len | (at + 2 <= captured_end[active])
        fits = len_captured & (at + length <= captured_end[active])
        # A length byte that was captured but is impossible for the header is an error; an
        # option running into the snaplen is a truncation.
        broken = has_len & len_captured & ((length < 2) | (at + length > header_end[active]))
        bad[active[broken]] = True
        usable = has_len & fits & ~broken

        step = (kind, usable, active, present)
        sel = _first(step, TCPOPT_MSS, length == 4, OPT_MSS)
        mss[active[sel]] = f.u16(at[sel] + 2, r[sel])
        sel = _first(step, TCPOPT_WSCALE, length == 3, OPT_WSCALE)
        wscale[active[sel]] = f.u8(at[sel] + 2, r[sel])
        _first(step, TCPOPT_SACK_PERM, length == 2, OPT_SACK_PERM)
        sel = _first(step, TCPOPT_TIMESTAMP, length == 10, OPT_TIMESTAMP)
        tsval[active[sel]] = f.u32(at[sel] + 2, r[sel])
        tsecr[active[sel]] = f.u32(at[sel] + 6, r[sel])
        sel = _first(step, TCPOPT_SACK, (length >= 10) & ((length - 2) % 8 == 0), OPT_SACK)
        sack_at[active[sel]] = at[sel]
        sack_count[active[sel]] = np.minimum((length[sel] - 2) // 8, MAX_SACK_BLOCKS)
        stop = eol | broken | (has_len & ~fits)
        cursor[active] = at + length
        active = active[~stop]
    if truncated.any():
        anomalies["truncated_tcp_options"] = int(truncated.sum())
    if bad.any():
        anomalies["bad_tcp_option"] = int(bad.sum())
    out["opt_present"][out_rows] = present
    out["mss"][out_rows] = mss
    out["wscale"][out_rows] = wscale
    out["tsval"][out_rows] = tsval
    out["tsecr"][out_rows] = tsecr
    with_sack = np.flatnonzero(sack_count)
    if with_sack.size:
        left = np.zeros((n, MAX_SACK_BLOCKS), np.uint32)
        right = np.zeros((n, MAX_SACK_BLOCKS), np.uint32)
        for block in range(MAX_SACK_BLOCKS):
            sel = with_sack[sack_count[with_sack] > block]
            start = sack_at[sel] + 2 + 8 * block
            left[sel, block] = f.u32(start, rows[sel])
            right[sel, block] = f.u32(start + 4, rows[sel])
        out["sack_count"][out_rows] = sack_count
        out["sack_left"][out_rows] = left
        out["sack_right"][out_rows] = right


def _first(step, kind_value: int, length_ok: np.ndarray, bit: int) -> np.ndarray:
    """Rows (of this option step) holding the first well-formed option of one kind."""
    kind, usable, active, present = step
    sel = (kind == kind_value) & length_ok & usable & ((present[active] & bit) == 0)
    present[active[sel]] |= bit
    return sel

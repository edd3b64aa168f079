"""TCP header (RFC 9293) and options, decoded for many segments at once.

Rules:
- A segment needs its 20-byte fixed header captured; otherwise it is dropped as
  `truncated_tcp_header`. Options cut short by the snaplen keep the row: they are parsed as far
  as they were captured (`truncated_tcp_options`), as Wireshark does.
- Payload length = transport length from the IP header - data offset * 4.
- The header is read from a 60-byte window (the largest TCP header), so every fixed field is a
  strided column read.
- Options: the two layouts that make up nearly all of Linux's traffic (NOP NOP TS on data
  segments; MSS SACK-perm TS NOP WS on SYNs) are recognised by their kind bytes and read as
  columns. Every other layout is walked in lockstep: each step reads the option at every row's
  cursor and advances all cursors (at most 40 steps). The first occurrence of each option kind
  counts. A length < 2 or past the header end stops that row's walk (`bad_tcp_option`).

Option kinds: EOL 0, NOP 1, MSS 2 (len 4), window scale 3 (len 3), SACK-permitted 4 (len 2),
SACK 5 (len 2 + 8k), timestamps 8 (len 10) -- RFC 9293, RFC 7323, RFC 2018.
"""

from __future__ import annotations

import numpy as np

from tracer.decode import vocab as v
from tracer.decode.fields import Fields, Window
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
MAX_TCP_HEADER = 60
MAX_OPTION_STEPS = 40

# Layouts read as columns: (header length, [(column, mask, value) of big-endian u32 words]).
# NOP NOP TS(10): the data segments of every Linux connection with timestamps.
LAYOUT_TS_ONLY = (32, [(20, 0xFFFFFFFF, 0x0101080A)])
# MSS(4) SACK-perm(2) TS(10) NOP WS(3): Linux SYN and SYN/ACK.
LAYOUT_LINUX_SYN = (40, [(20, 0xFFFF0000, 0x02040000), (24, 0xFFFFFFFF, 0x0402080A),
                         (36, 0xFFFFFF00, 0x01030300)])


def decode_tcp(f: Fields, rows: np.ndarray, l4: np.ndarray, l4_len: np.ndarray,
               out_columns) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Decode the TCP header of candidate rows.

    Returns (DROP code per candidate, the candidates kept, kept-row anomalies); `out_columns`
    is called with the number of kept rows and returns the PACKET_DTYPE array to fill.
    """
    hdr = f.window(l4, MAX_TCP_HEADER, rows)
    drop = np.zeros(rows.shape, np.uint8)
    fixed = f.within(l4 + 20, rows)
    drop[~fixed] = v.DROP["truncated_tcp_header"]
    b12 = hdr.u8(12)
    data_offset = (b12 >> 4).astype(np.int64) * 4
    bad = (drop == 0) & ((l4_len < 20) | (data_offset < 20) | (data_offset > l4_len))
    drop[bad] = v.DROP["bad_tcp_header_length"]
    keep = np.flatnonzero(drop == 0)
    if keep.shape[0] != rows.shape[0]:
        hdr = Window(hdr.data[keep])
        b12, data_offset = b12[keep], data_offset[keep]
    kept_rows = rows[keep]
    out = out_columns(kept_rows)
    out["sport"] = hdr.u16(0)
    out["dport"] = hdr.u16(2)
    out["seq"] = hdr.u32(4)
    out["ack"] = hdr.u32(8)
    out["flags"] = ((b12.astype(np.uint16) & 0x0F) << 8) | hdr.u8(13)  # 9 flags + 3 reserved
    out["window"] = hdr.u16(14)
    out["urgent"] = hdr.u16(18)
    out["tcp_hdr_len"] = data_offset
    out["payload_len"] = l4_len[keep] - data_offset
    anomalies: dict[str, int] = {}
    if kept_rows.shape[0]:
        header_end = l4[keep] + data_offset
        captured = np.minimum(header_end, f.limit[kept_rows]) - l4[keep]  # option bytes seen
        _options(hdr, data_offset, captured, out, anomalies)
    return drop, kept_rows, anomalies


def _matches(hdr: Window, data_offset: np.ndarray, captured: np.ndarray, layout) -> np.ndarray:
    length, words = layout
    hit = (data_offset == length) & (captured >= length)
    for column, mask, value in words:
        hit &= (hdr.u32(column) & mask) == value
    return hit


def _options(hdr: Window, data_offset, captured, out, anomalies) -> None:
    has_options = data_offset > 20
    if not has_options.any():
        return
    opt_present = np.zeros(hdr.n, np.uint8)
    ts_only = _matches(hdr, data_offset, captured, LAYOUT_TS_ONLY)
    syn = _matches(hdr, data_offset, captured, LAYOUT_LINUX_SYN)
    tsval = np.where(ts_only, hdr.u32(24), np.where(syn, hdr.u32(28), 0)).astype(np.uint32)
    tsecr = np.where(ts_only, hdr.u32(28), np.where(syn, hdr.u32(32), 0)).astype(np.uint32)
    opt_present[ts_only] = OPT_TIMESTAMP
    opt_present[syn] = OPT_MSS | OPT_SACK_PERM | OPT_TIMESTAMP | OPT_WSCALE
    mss = np.where(syn, hdr.u16(22), 0).astype(np.uint16)
    wscale = np.where(syn, hdr.u8(39), 0).astype(np.uint8)
    out["tsval"] = tsval
    out["tsecr"] = tsecr
    out["mss"] = mss
    out["wscale"] = wscale
    out["opt_present"] = opt_present
    truncated = captured < data_offset
    if truncated.any():
        anomalies["truncated_tcp_options"] = int(truncated.sum())
    rest = np.flatnonzero(has_options & ~ts_only & ~syn)
    if rest.size:
        _walk_options(hdr, rest, data_offset[rest], captured[rest], out, anomalies)


def _walk_options(hdr: Window, rows, header_end, captured_end, out, anomalies) -> None:
    """The general option walk, on the rows whose layout was not recognised."""
    n = rows.shape[0]
    flat = hdr.data.reshape(-1)
    row_base = rows.astype(np.int64) * hdr.width
    u16 = np.ndarray((flat.shape[0] - 1,), ">u2", buffer=flat, strides=(1,))
    u32 = np.ndarray((flat.shape[0] - 3,), ">u4", buffer=flat, strides=(1,))
    last = flat.shape[0] - 4

    def at(which: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return np.minimum(row_base[which] + offset, last)

    cursor = np.full(n, 20, np.int64)
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
        pos = cursor[active]
        kind = flat[at(active, pos)]
        eol = kind == TCPOPT_EOL
        nop = kind == TCPOPT_NOP
        has_len = ~eol & ~nop
        length = np.where(has_len, flat[at(active, pos + 1)].astype(np.int64), 1)
        len_captured = ~has_len | (pos + 2 <= captured_end[active])
        fits = len_captured & (pos + length <= captured_end[active])
        # A captured length byte that is impossible for the header is an error; an option
        # running into the snaplen is a truncation (already counted).
        broken = has_len & len_captured & ((length < 2) | (pos + length > header_end[active]))
        bad[active[broken]] = True
        usable = has_len & fits & ~broken
        step = (kind, usable, active, present)
        sel = _first(step, TCPOPT_MSS, length == 4, OPT_MSS)
        mss[active[sel]] = u16[at(active[sel], pos[sel] + 2)]
        sel = _first(step, TCPOPT_WSCALE, length == 3, OPT_WSCALE)
        wscale[active[sel]] = flat[at(active[sel], pos[sel] + 2)]
        _first(step, TCPOPT_SACK_PERM, length == 2, OPT_SACK_PERM)
        sel = _first(step, TCPOPT_TIMESTAMP, length == 10, OPT_TIMESTAMP)
        tsval[active[sel]] = u32[at(active[sel], pos[sel] + 2)]
        tsecr[active[sel]] = u32[at(active[sel], pos[sel] + 6)]
        sel = _first(step, TCPOPT_SACK, (length >= 10) & ((length - 2) % 8 == 0), OPT_SACK)
        sack_at[active[sel]] = pos[sel]
        sack_count[active[sel]] = np.minimum((length[sel] - 2) // 8, MAX_SACK_BLOCKS)
        stop = eol | broken | (has_len & ~fits)
        cursor[active] = pos + length
        active = active[~stop]
    if bad.any():
        anomalies["bad_tcp_option"] = int(bad.sum())
    out["opt_present"][rows] = present
    out["mss"][rows] = mss
    out["wscale"][rows] = wscale
    out["tsval"][rows] = tsval
    out["tsecr"][rows] = tsecr
    with_sack = np.flatnonzero(sack_count)
    if with_sack.size:
        left = np.zeros((n, MAX_SACK_BLOCKS), np.uint32)
        right = np.zeros((n, MAX_SACK_BLOCKS), np.uint32)
        for block in range(MAX_SACK_BLOCKS):
            sel = with_sack[sack_count[with_sack] > block]
            start = sack_at[sel] + 2 + 8 * block
            left[sel, block] = u32[at(sel, start)]
            right[sel, block] = u32[at(sel, start + 4)]
        out["sack_count"][rows] = sack_count
        out["sack_left"][rows] = left
        out["sack_right"][rows] = right


def _first(step, kind_value: int, length_ok: np.ndarray, bit: int) -> np.ndarray:
    """Rows (of this option step) holding the first well-formed option of one kind."""
    kind, usable, active, present = step
    sel = (kind == kind_value) & length_ok & usable & ((present[active] & bit) == 0)
    present[active[sel]] |= bit
    return sel

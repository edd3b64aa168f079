"""TCP header (RFC 9293) and options, decoded for many segments at once.

Rules:
- A segment needs its 20-byte fixed header captured; otherwise it is dropped as
  `truncated_tcp_header`. Options cut short by the snaplen keep the row: they are parsed as far
  as they were captured (`truncated_tcp_options`), as Wireshark does.
- Payload length = transport length from the IP header - data offset * 4.
- The header is read from a 60-byte window (the largest TCP header), so every fixed field is a
  strided column read; the fixed fields go to the packet rows in one structured copy.
- Options: the commonest layouts (Linux: NOP NOP TS on data segments,
  MSS SACK-perm TS NOP WS on SYNs; Windows: MSS NOP WS NOP NOP SACK-perm on SYNs) are
  recognised by their kind bytes and read as columns. Every other layout is walked in lockstep:
  each step reads the option at every row's cursor and advances all cursors (at most 40 steps).
  The first occurrence of each option kind counts. A length < 2 or past the header end stops
  that row's walk (`bad_tcp_option`).

Option kinds: EOL 0, NOP 1, MSS 2 (len 4), window scale 3 (len 3), SACK-permitted 4 (len 2),
SACK 5 (len 2 + 8k), timestamps 8 (len 10) -- RFC 9293, RFC 7323, RFC 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.decode import vocab as v
from tracer.decode.fields import Fields, Window, packet_fields, wire_fields
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



@dataclass(frozen=True)
class OptionLayout:
    """An option layout common enough to be read as columns instead of walked.

    `words` are (column, mask, value) of big-endian u32 words that identify it; a segment has
    it if its header is exactly `length` bytes, all captured, and every word matches. What the
    walk would find in it is then read at fixed columns.
    """

    length: int
    words: tuple[tuple[int, int, int], ...]
    present: int  # OPT_* bits
    mss_at: int | None = None
    wscale_at: int | None = None
    timestamps_at: int | None = None


# NOP NOP TS(10): the data segments of every Linux connection with timestamps.
LAYOUT_TS_ONLY = OptionLayout(32, ((20, 0xFFFFFFFF, 0x0101080A),), OPT_TIMESTAMP,
                              timestamps_at=24)
# MSS(4) SACK-perm(2) TS(10) NOP WS(3): Linux SYN and SYN/ACK.
LAYOUT_LINUX_SYN = OptionLayout(
    40,
    ((20, 0xFFFF0000, 0x02040000), (24, 0xFFFFFFFF, 0x0402080A), (36, 0xFFFFFF00, 0x01030300)),
    OPT_MSS | OPT_SACK_PERM | OPT_TIMESTAMP | OPT_WSCALE,
    mss_at=22,
    wscale_at=39,
    timestamps_at=28,
)
# MSS(4) NOP WS(3) NOP NOP SACK-perm(2): Windows SYN and SYN/ACK (no timestamps).
LAYOUT_WINDOWS_SYN = OptionLayout(
    32,
    ((20, 0xFFFF0000, 0x02040000), (24, 0xFFFFFF00, 0x01030300), (28, 0xFFFFFFFF, 0x01010402)),
    OPT_MSS | OPT_SACK_PERM | OPT_WSCALE,
    mss_at=22,
    wscale_at=27,
)
RARER_LAYOUTS = (LAYOUT_LINUX_SYN, LAYOUT_WINDOWS_SYN)


# The fixed header fields as they sit in the TCP header (big-endian), and where they go. The
# flags field is the 16-bit word at 12 once the data offset nibble has been cleared.
_FIXED_NAMES = ["sport", "dport", "seq", "ack", "flags", "window", "urgent"]
FIXED_WIRE = wire_fields(
    [("sport", 0, ">u2"), ("dport", 2, ">u2"), ("seq", 4, ">u4"), ("ack", 8, ">u4"),
     ("flags", 12, ">u2"), ("window", 14, ">u2"), ("urgent", 18, ">u2")],
    20,
)
FIXED_ROW = packet_fields(_FIXED_NAMES)
# The same plus the timestamps of the NOP NOP TS layout, in one copy.
_TS_AT = LAYOUT_TS_ONLY.timestamps_at
FIXED_TS_WIRE = wire_fields(
    [(name, *FIXED_WIRE.fields[name][1::-1]) for name in _FIXED_NAMES]
    + [("tsval", _TS_AT, ">u4"), ("tsecr", _TS_AT + 4, ">u4")],
    _TS_AT + 8,
)
FIXED_TS_ROW = packet_fields([*_FIXED_NAMES, "tsval", "tsecr"])


@dataclass
class TcpLayer:
    drop: np.ndarray  # uint8 DROP code per candidate row
    keep: np.ndarray | None  # candidates kept (indices), None if all of them
    header: Window  # 60 bytes from each kept segment's TCP header
    data_offset: np.ndarray  # uint8 header length in bytes, per kept segment
    l4: np.ndarray  # int64 TCP header offset, per kept segment
    l4_len: np.ndarray  # int64 transport length, per kept segment


def decode_tcp(f: Fields, rows: np.ndarray | None, l4: np.ndarray, l4_len: np.ndarray) -> TcpLayer:
    """Check the TCP header of candidate `rows` (all rows if None); `l4`, `l4_len` per row."""
    hdr = f.window(l4, MAX_TCP_HEADER, rows)
    b12 = hdr.u8(12)
    data_offset = (b12 >> 4) << 2
    caplen = f.limit if rows is None else f.limit[rows]
    fixed = caplen >= l4 + 20
    bad = (l4_len < 20) | (data_offset < 20) | (data_offset > l4_len)
    good = fixed & ~bad
    if good.all():
        drop = np.zeros(l4.shape, np.uint8)
        keep = None
    else:
        drop = np.where(fixed, np.where(bad, v.DROP["bad_tcp_header_length"], 0),
                        v.DROP["truncated_tcp_header"]).astype(np.uint8)
        keep = np.flatnonzero(good)
        hdr = hdr.take(keep)
        data_offset, l4, l4_len = data_offset[keep], l4[keep], l4_len[keep]
    return TcpLayer(drop=drop, keep=keep, header=hdr, data_offset=data_offset, l4=l4,
                    l4_len=l4_len)


def fill_tcp(tcp: TcpLayer, caplen: np.ndarray, out: np.ndarray, anomalies: dict) -> None:
    """Write the TCP fields of the kept segments into `out` (zeroed rows, one per segment).

    `caplen` is per kept segment. Rewrites the header window in place.
    """
    hdr, data_offset = tcp.header, tcp.data_offset
    if hdr.n == 0:
        return
    # 9 flags + 3 reserved bits: the word at 12 without the data offset nibble.
    hdr.u8(12)[...] &= 0x0F
    has_options = data_offset > 20
    ts_count = 0
    if has_options.any():
        header_end = tcp.l4 + data_offset
        truncated = caplen < header_end
        # NOP NOP TS: its timestamps are copied with the fixed fields, into every row, then
        # cleared where the layout is another.
        ts_only = _matches(hdr, data_offset, truncated, LAYOUT_TS_ONLY)
        ts_count = int(np.count_nonzero(ts_only))
    if ts_count:
        out.view(FIXED_TS_ROW)[...] = hdr.records(FIXED_TS_WIRE)
    else:
        out.view(FIXED_ROW)[...] = hdr.records(FIXED_WIRE)
    out["tcp_hdr_len"] = data_offset
    out["payload_len"] = tcp.l4_len - data_offset
    if ts_count == hdr.n:
        out["opt_present"] = OPT_TIMESTAMP
        return
    if not has_options.any():
        return
    captured = None
    if truncated.any():
        anomalies["truncated_tcp_options"] = int(np.count_nonzero(truncated))
        captured = np.minimum(header_end, caplen) - tcp.l4  # option bytes seen
    walked = has_options
    if ts_count:
        out["opt_present"] = ts_only.view(np.uint8) * np.uint8(OPT_TIMESTAMP)
        others = np.flatnonzero(~ts_only)
        out["tsval"][others] = 0
        out["tsecr"][others] = 0
        walked = walked & ~ts_only
    # The few segments left: other recognised layouts, then the walk, on their rows only.
    rest = np.flatnonzero(walked)
    if not rest.size:
        return
    part = hdr.take(rest)
    part_offset, part_truncated = data_offset[rest], truncated[rest]
    unread = np.ones(rest.shape, bool)
    for layout in RARER_LAYOUTS:
        hit = unread & _matches(part, part_offset, part_truncated, layout)
        if not hit.any():
            continue
        unread &= ~hit
        which = rest[hit]
        found = part.take(np.flatnonzero(hit))
        out["opt_present"][which] = layout.present
        if layout.timestamps_at is not None:
            # Field by field: a structured scatter is much slower than plain ones.
            out["tsval"][which] = found.raw(">u4", layout.timestamps_at)
            out["tsecr"][which] = found.raw(">u4", layout.timestamps_at + 4)
        if layout.mss_at is not None:
            out["mss"][which] = found.u16(layout.mss_at)
        if layout.wscale_at is not None:
            out["wscale"][which] = found.u8(layout.wscale_at)
    left = np.flatnonzero(unread)
    if left.size:
        if captured is None:
            captured = data_offset.astype(np.int64)
        rows = rest[left]
        _walk_options(part.take(left), rows, data_offset[rows].astype(np.int64),
                      captured[rows], out, anomalies)


def _matches(hdr: Window, data_offset: np.ndarray, truncated: np.ndarray,
             layout: OptionLayout) -> np.ndarray:
    hit = data_offset == layout.length
    for column, mask, value in layout.words:
        # Compared as little-endian words (the machine's order on x86 and ARM): no byteswap.
        word = hdr.raw("<u4", column)
        mask_le = int.from_bytes(mask.to_bytes(4, "big"), "little")
        value_le = int.from_bytes(value.to_bytes(4, "big"), "little")
        hit &= (word & mask_le) == value_le if mask != 0xFFFFFFFF else word == value_le
    hit &= ~truncated
    return hit


def _walk_options(hdr: Window, rows, header_end, captured_end, out, anomalies) -> None:
    """The general option walk, on the rows whose layout was not recognised.

    `hdr` holds those rows' windows (contiguous), `rows` their indices in `out`.
    """
    n = rows.shape[0]
    flat = hdr.base.reshape(-1)
    row_base = np.arange(n, dtype=np.int64) * hdr.stride
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

"""Decode (pure): frame batches -> packet batches of TCP segments, counting everything else.

Theory of operation: the stages run on whole batches, each narrowing what the next one sees:
link (where IP starts) -> ip (where TCP starts, how long it is) -> tcp (header and options).
Every stage records, per frame, either a drop reason (malformed), a non-TCP category, or
nothing; the frames with neither become rows of PACKET_DTYPE. No stage raises on bad bytes,
and no stage loops over packets: loops run over link types, VLAN depth, IPv6 extension depth
and option steps, each bounded by a constant.

Cost model: a batch is decoded in chunks of `DECODE_CHUNK_ROWS`, each first copying the head
of every frame out of the capture buffer (see fields.py), so that all later passes run on
cache-resident bytes. A numpy call costs microseconds whatever its size, so the common case
(every frame a well-formed TCP segment) is kept to a fixed, small number of whole-chunk calls:
checks are screened with one reduction and classified only when something fails, columns are
copied rather than gathered when every frame of the chunk is kept, and fields that sit side by
side in a header move into the packet rows in one structured copy (field views with a
structured dtype, see `fields.packet_fields`).
"""

from __future__ import annotations

import numpy as np

from tracer.decode import vocab
from tracer.decode.fields import Fields, packet_fields, wire_fields
from tracer.decode.ip import IpLayer, decode_ip
from tracer.decode.link import LinkLayer, decode_link
from tracer.decode.payload import PayloadRequest, payload_prefixes
from tracer.decode.tcp import decode_tcp, fill_tcp
from tracer.packet import PACKET_DTYPE, TCP_FLAG_NAMES, DecodeCounts, FrameBatch

__all__ = ["decode_frames", "decode_frames_with_payload"]


# Rows decoded together: small enough that a chunk's header bytes stay in the CPU cache
# between the passes over them, large enough to amortize the per-call cost of numpy.
DECODE_CHUNK_ROWS = 8192

# IP fields, from the 40-byte window at the IP header to the packet row. IPv4 addresses land in
# the low 32 bits of the `_lo` halves; the 0xFFFF of the IPv4-mapped prefix is written apart.
_SRC_LO, _DST_LO = PACKET_DTYPE.fields["src_lo"][1], PACKET_DTYPE.fields["dst_lo"][1]
_IPV4_WIRE = wire_fields(
    [("ttl", 8, "u1"), ("ip_id", 4, ">u2"), ("src", 12, ">u4"), ("dst", 16, ">u4")], 20
)
_IPV4_ROW = wire_fields(
    [("ttl", PACKET_DTYPE.fields["ttl"][1], "u1"),
     ("ip_id", PACKET_DTYPE.fields["ip_id"][1], "<u2"),
     ("src", _SRC_LO, "<u4"), ("dst", _DST_LO, "<u4")],
    PACKET_DTYPE.itemsize,
)
_IPV4_MAPPED_ROW = wire_fields(
    [("src", _SRC_LO + 4, "<u2"), ("dst", _DST_LO + 4, "<u2")], PACKET_DTYPE.itemsize
)
_IPV6_WIRE = wire_fields(
    [("ttl", 7, "u1"), ("src_hi", 8, ">u8"), ("src_lo", 16, ">u8"), ("dst_hi", 24, ">u8"),
     ("dst_lo", 32, ">u8")],
    40,
)
_IPV6_ROW = packet_fields(["ttl", "src_hi", "src_lo", "dst_hi", "dst_lo"])

_FRAME_COLUMNS = ("frame", "ts_ns", "iface", "linktype", "caplen", "wirelen")


def decode_frames(frames: FrameBatch) -> tuple[np.ndarray, DecodeCounts]:
    """One frame batch -> (packet batch of PACKET_DTYPE, what was counted)."""
    packets, counts, _ = _decode(frames, None)
    return packets, counts


def decode_frames_with_payload(frames: FrameBatch, request: PayloadRequest
                               ) -> tuple[np.ndarray, DecodeCounts, np.ndarray]:
    """`decode_frames` plus the side output of tracer.decode.payload: the first
    `request.prefix_bytes` payload bytes of the packet rows `request.select` picks
    (payload_dtype rows, in packet row order)."""
    transport = np.empty(len(frames), _TRANSPORT_DTYPE)
    packets, counts, made = _decode(frames, transport)
    transport = transport[:made]
    rows = request.rows(packets)
    return packets, counts, payload_prefixes(frames, packets, transport, rows,
                                             request.prefix_bytes)


# Per packet row, where its frame is in the batch and where TCP starts in it (only made when a
# consumer asked for payload).
_TRANSPORT_DTYPE = np.dtype([("index", np.int64), ("l4", np.int64)])


def _decode(frames: FrameBatch, transport: np.ndarray | None
            ) -> tuple[np.ndarray, DecodeCounts, int]:
    n = len(frames)
    counts = DecodeCounts(frames=n)
    if n == 0:
        return np.zeros(0, PACKET_DTYPE), counts, 0
    counts.linktypes = _count_values(frames.linktype)
    # One output array for the whole batch, filled chunk after chunk: no concatenation. Each
    # chunk zeroes its own rows just before filling them, while they are in the cache.
    out = np.empty(n, PACKET_DTYPE)
    filled = 0
    flag_hist = np.zeros(512, np.int64)
    codes: dict[str, dict[int, int]] = {"drop": {}, "nontcp": {}}
    for lo in range(0, n, DECODE_CHUNK_ROWS):
        hi = min(lo + DECODE_CHUNK_ROWS, n)
        filled += _decode_chunk(frames.rows(slice(lo, hi)), out, filled, counts, flag_hist, codes,
                                transport, lo)
    out = out[:filled] if filled == n else out[:filled].copy()
    for code, value in sorted(codes["drop"].items()):
        name = vocab.DROP_REASONS[code]
        counts.anomalies[name] = counts.anomalies.get(name, 0) + value
    for code, value in sorted(codes["nontcp"].items()):
        name = vocab.nontcp_name(code)
        counts.non_tcp[name] = counts.non_tcp.get(name, 0) + value
    counts.tcp_packets = filled
    counts.flag_counts = _flag_counts(flag_hist)
    return out, counts, filled


def flag_counts(flags: np.ndarray) -> dict[str, int]:
    """Segments with each of the 9 TCP flags set."""
    return _flag_counts(np.bincount(flags & 0x1FF, minlength=512))


def _flag_counts(per_value: np.ndarray) -> dict[str, int]:
    values = np.arange(512)
    return {
        name: int(per_value[(values >> bit) & 1 == 1].sum())
        for bit, name in enumerate(TCP_FLAG_NAMES)
    }


def _decode_chunk(frames: FrameBatch, dest: np.ndarray, at: int, counts: DecodeCounts,
                  flag_hist: np.ndarray, codes: dict[str, dict[int, int]],
                  transport: np.ndarray | None = None, first_index: int = 0) -> int:
    """Decode one chunk into dest[at:]; returns the rows made.

    Adds kept-row anomalies to `counts`, flag values to `flag_hist`, and the drop and non-TCP
    codes of the frames without a row to `codes` (named once per batch, in code order).
    `transport` (payload requested): per row made, the frame's index in the batch
    (`first_index` is this chunk's) and its transport header offset.
    """
    n = len(frames)
    f = Fields(frames.data, frames.offset, frames.caplen)
    link = decode_link(f, frames.linktype)
    ip = decode_ip(f, link, frames.wirelen)
    drop, nontcp = link.drop, link.nontcp
    candidate = (drop == 0) & (nontcp == 0) & (ip.version != 0)
    everyone = bool(candidate.all())
    rows = None if everyone else np.flatnonzero(candidate)
    if everyone:
        tcp = decode_tcp(f, None, ip.l4, ip.l4_len)
    else:
        tcp = decode_tcp(f, rows, ip.l4[rows], ip.l4_len[rows])
    if tcp.keep is not None:
        if everyone:
            drop[:] = tcp.drop
        else:
            drop[rows] = tcp.drop
        kept = tcp.keep if everyone else rows[tcp.keep]
    else:
        kept = rows  # None: every frame
    k = n if kept is None else kept.shape[0]
    out = dest[at : at + k]
    out.view(np.uint8).fill(0)  # fields no layer writes stay 0 (absent options, IPv4 src_hi)
    anomalies = counts.anomalies
    if k:
        _fill_frame_and_ip(frames, link, ip, kept, out)
        caplen = f.limit if kept is None else f.limit[kept]
        found: dict[str, int] = {}
        fill_tcp(tcp, caplen, out, found)
        for flag, name in ((ip.total_zero, "ip_total_length_zero"),
                           (ip.exceeds_frame, "ip_length_exceeds_frame")):
            if flag is not None:
                hits = int(np.count_nonzero(flag if kept is None else flag[kept]))
                if hits:
                    found[name] = hits
        for name, value in found.items():
            anomalies[name] = anomalies.get(name, 0) + value
        hist = np.bincount(out["flags"] & 0x1FF, minlength=512)
        flag_hist += hist
        if transport is not None:
            where = transport[at : at + k]
            where["index"] = first_index + (np.arange(n) if kept is None else kept)
            where["l4"] = ip.l4 if kept is None else ip.l4[kept]
    if k != n:
        for kind, values in (("drop", drop), ("nontcp", np.where(drop == 0, nontcp, 0))):
            values = values[values != 0]
            if values.size:
                seen = codes[kind]
                for code, value in zip(*np.unique(values, return_counts=True), strict=True):
                    seen[int(code)] = seen.get(int(code), 0) + int(value)
    return k


def _fill_frame_and_ip(frames: FrameBatch, link: LinkLayer, ip: IpLayer, kept, out) -> None:
    """Packet-row fields that come from the frame batch, the link layer and the IP header."""
    for name in _FRAME_COLUMNS:
        column = getattr(frames, name)
        out[name] = column if kept is None else column[kept]
    if link.vlan is not None:
        out["vlan"] = link.vlan if kept is None else link.vlan[kept]
    window = ip.window if kept is None else ip.window.take(kept)
    is6 = ip.is6 if kept is None else ip.is6[kept]
    any6 = ip.any6 and bool(is6.any())
    all6 = any6 and bool(is6.all())
    if all6:
        out.view(_IPV6_ROW)[...] = window.records(_IPV6_WIRE)
        out["ip_version"] = 6
        return
    # IPv4 layout for every row, then the IPv6 rows overwritten.
    out.view(_IPV4_ROW)[...] = window.records(_IPV4_WIRE)
    mapped = out.view(_IPV4_MAPPED_ROW)
    mapped["src"] = 0xFFFF
    mapped["dst"] = 0xFFFF
    out["ip_version"] = ip.version if kept is None else ip.version[kept]
    if ip.df is not None:
        out["df"] = ip.df if kept is None else ip.df[kept]
    if any6:
        # Field by field: a structured scatter is much slower than plain ones.
        six = np.flatnonzero(is6)
        out["ttl"][six] = window.u8(7)[six]
        out["ip_id"][six] = 0
        for name, column in (("src_hi", 8), ("src_lo", 16), ("dst_hi", 24), ("dst_lo", 32)):
            out[name][six] = window.raw(">u8", column)[six]


def _count_values(values: np.ndarray) -> dict[int, int]:
    first = values[0]
    if (values == first).all():
        return {int(first): int(values.shape[0])}
    uniq, cnt = np.unique(values, return_counts=True)
    return dict(zip(uniq.tolist(), cnt.tolist(), strict=True))

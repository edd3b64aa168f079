"""Decode (pure): frame batches -> packet batches of TCP segments, counting everything else.

Theory of operation: the stages run on whole batches, each narrowing what the next one sees:
link (where IP starts) -> ip (where TCP starts, how long it is) -> tcp (header and options).
Every stage records, per frame, either a drop reason (malformed), a non-TCP category, or
nothing; the frames with neither become rows of PACKET_DTYPE. No stage raises on bad bytes,
and no stage loops over packets: loops run over link types, VLAN depth, IPv6 extension depth
and option steps, each bounded by a constant.
"""

from __future__ import annotations

import numpy as np

from tracer.decode import vocab
from tracer.decode.fields import Fields
from tracer.decode.ip import decode_ip
from tracer.decode.link import decode_link
from tracer.decode.tcp import decode_tcp
from tracer.packet import PACKET_DTYPE, TCP_FLAG_NAMES, DecodeCounts, FrameBatch

__all__ = ["decode_frames"]


# Rows decoded together: small enough that a chunk's header bytes stay in the CPU cache
# between the passes over them, large enough to amortize the per-call cost of numpy.
DECODE_CHUNK_ROWS = 16384


def decode_frames(frames: FrameBatch) -> tuple[np.ndarray, DecodeCounts]:
    """One frame batch -> (packet batch of PACKET_DTYPE, what was counted)."""
    n = len(frames)
    counts = DecodeCounts(frames=n)
    if n == 0:
        return np.zeros(0, PACKET_DTYPE), counts
    counts.linktypes = _count_values(frames.linktype)
    # One output array for the whole batch, filled chunk after chunk: no concatenation.
    out = np.zeros(n, PACKET_DTYPE)
    filled = 0
    drop = np.empty(n, np.uint8)
    nontcp = np.empty(n, np.uint32)
    for lo in range(0, n, DECODE_CHUNK_ROWS):
        hi = min(lo + DECODE_CHUNK_ROWS, n)
        chunk_drop, chunk_nontcp, rows, kept = _decode_chunk(frames.rows(slice(lo, hi)), out, filled)
        filled += rows
        drop[lo:hi] = chunk_drop
        nontcp[lo:hi] = chunk_nontcp
        for name, value in kept.items():
            counts.anomalies[name] = counts.anomalies.get(name, 0) + value
    out = out[:filled] if filled == n else out[:filled].copy()
    for name, value in vocab.count_codes(drop, lambda code: vocab.DROP_REASONS[code]).items():
        counts.anomalies[name] = counts.anomalies.get(name, 0) + value
    counts.non_tcp = vocab.count_codes(np.where(drop == 0, nontcp, 0), vocab.nontcp_name)
    counts.tcp_packets = filled
    counts.flag_counts = flag_counts(out["flags"])
    return out, counts


def flag_counts(flags: np.ndarray) -> dict[str, int]:
    """Segments with each of the 9 TCP flags set."""
    per_value = np.bincount(flags & 0x1FF, minlength=512)
    values = np.arange(512)
    return {
        name: int(per_value[(values >> bit) & 1 == 1].sum())
        for bit, name in enumerate(TCP_FLAG_NAMES)
    }


def _decode_chunk(frames: FrameBatch, dest: np.ndarray, at: int):
    """Decode one chunk into dest[at:]; returns (drop codes, non-TCP codes, rows, anomalies)."""
    f = Fields(frames.data, frames.offset, frames.caplen)
    link = decode_link(f, frames.linktype)
    ip = decode_ip(f, link, frames.wirelen)
    candidate = np.flatnonzero((link.drop == 0) & (link.nontcp == 0) & (ip.version != 0))
    holder: list[np.ndarray] = []

    def columns(rows: np.ndarray) -> np.ndarray:
        out = dest[at : at + rows.shape[0]]
        if rows.shape[0] == len(frames):
            rows = slice(None)  # every frame is a TCP row: copy columns instead of gathering
        out["frame"] = frames.frame[rows]
        out["ts_ns"] = frames.ts_ns[rows]
        out["iface"] = frames.iface[rows]
        out["linktype"] = frames.linktype[rows]
        out["caplen"] = frames.caplen[rows]
        out["wirelen"] = frames.wirelen[rows]
        out["ip_version"] = ip.version[rows]
        out["src_hi"] = ip.src_hi[rows]
        out["src_lo"] = ip.src_lo[rows]
        out["dst_hi"] = ip.dst_hi[rows]
        out["dst_lo"] = ip.dst_lo[rows]
        out["ttl"] = ip.ttl[rows]
        out["ip_id"] = ip.ip_id[rows]
        out["df"] = ip.df[rows]
        out["vlan"] = link.vlan[rows]
        holder.append(out)
        return out

    tcp_drop, rows, kept = decode_tcp(f, candidate, ip.l4[candidate], ip.l4_len[candidate], columns)
    link.drop[candidate] = tcp_drop
    for name, flag in (("ip_total_length_zero", ip.total_zero),
                       ("ip_length_exceeds_frame", ip.exceeds_frame)):
        hits = int(np.count_nonzero(flag[rows]))
        if hits:
            kept[name] = kept.get(name, 0) + hits
    return link.drop, link.nontcp, len(holder[0]), kept


def _count_values(values: np.ndarray) -> dict[int, int]:
    uniq, cnt = np.unique(values, return_counts=True)
    return dict(zip(uniq.tolist(), cnt.tolist(), strict=True))

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
DECODE_CHUNK_ROWS = 8192


def decode_frames(frames: FrameBatch) -> tuple[np.ndarray, DecodeCounts]:
    """One frame batch -> (packet batch of PACKET_DTYPE, what was counted)."""
    n = len(frames)
    counts = DecodeCounts(frames=n)
    if n == 0:
        return np.zeros(0, PACKET_DTYPE), counts
    counts.linktypes = _count_values(frames.linktype)
    parts, drops, nontcps = [], [], []
    for lo in range(0, n, DECODE_CHUNK_ROWS):
        out, drop, nontcp, kept = _decode_chunk(frames.rows(slice(lo, lo + DECODE_CHUNK_ROWS)))
        parts.append(out)
        drops.append(drop)
        nontcps.append(nontcp)
        for name, value in kept.items():
            counts.anomalies[name] = counts.anomalies.get(name, 0) + value
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    drop = np.concatenate(drops)
    for name, value in vocab.count_codes(drop, lambda code: vocab.DROP_REASONS[code]).items():
        counts.anomalies[name] = counts.anomalies.get(name, 0) + value
    counts.non_tcp = vocab.count_codes(np.where(drop == 0, np.concatenate(nontcps), 0),
                                       vocab.nontcp_name)
    counts.tcp_packets = int(out.shape[0])
    flags = out["flags"]
    counts.flag_counts = {
        name: int(np.count_nonzero(flags & (1 << bit))) for bit, name in enumerate(TCP_FLAG_NAMES)
    }
    return out, counts


def _decode_chunk(frames: FrameBatch):
    f = Fields(frames.data, frames.offset, frames.caplen)
    link = decode_link(f, frames.linktype)
    ip = decode_ip(f, link, frames.wirelen)
    candidate = np.flatnonzero((link.drop == 0) & (link.nontcp == 0) & (ip.version != 0))
    holder: list[np.ndarray] = []

    def columns(rows: np.ndarray) -> np.ndarray:
        out = np.zeros(rows.shape[0], PACKET_DTYPE)
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
    return holder[0], link.drop, link.nontcp, kept


def _count_values(values: np.ndarray) -> dict[int, int]:
    uniq, cnt = np.unique(values, return_counts=True)
    return dict(zip(uniq.tolist(), cnt.tolist(), strict=True))

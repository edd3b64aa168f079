"""Payload prefixes: decode's optional side output (pure).

Rules: decode keeps no payload bytes in the packet rows. A consumer that needs some (the leg
join reads PROXY protocol headers and HTTP request headers at the start of a server
connection) passes a `PayloadRequest` to `decode_frames_with_payload`: decode then also notes,
per packet row, its frame and transport offset, lets the request pick rows from the finished
packet batch, and copies the first `prefix_bytes` payload bytes of those rows out of the
capture buffer in one gather. `decode_frames` without a request does none of this (one
`is None` test per chunk): analyses that need no payload pay nothing for it.

Bytes the snaplen cut are not invented: `captured` says how many of a row's `data` bytes
are real (the rest are 0), `payload_len` how many the segment carried on the wire. A row whose
TCP header itself was cut has captured = 0.

The default pick (`first_payload_rows`) is stateless: per batch, the first `per_key` payload
segments of each directed address/port pair. The start of every stream is among them (a
stream's first payload segment is the first of its pair in whichever batch it falls), except
when one batch holds two connections on the same address/port pair (a port reused within a
batch): the later one's start is then missed. The consumer keeps what it needs by sequence
number. Cost when asked: one sort of the batch's
payload rows and one (rows x prefix_bytes) gather.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tracer.decode.fields import gather_rows

DEFAULT_PREFIX_BYTES = 256


def payload_dtype(prefix_bytes: int) -> np.dtype:
    return np.dtype([
        ("frame", np.int64),  # the packet row's frame number
        ("payload_len", np.uint32),  # payload bytes on the wire
        ("captured", np.uint16),  # of them, captured and copied into `data` (<= prefix_bytes)
        ("data", np.uint8, (prefix_bytes,)),  # zero past `captured`
    ])


def first_payload_rows(packets: np.ndarray, per_key: int = 2) -> np.ndarray:
    """Row indices of the first `per_key` payload segments of each (src, sport, dst, dport)
    in the batch, in row order."""
    rows = np.flatnonzero(packets["payload_len"] > 0)
    if rows.size == 0:
        return rows

    def col(name: str) -> np.ndarray:
        return packets[name][rows]  # one column at a time: rows are wide

    key = (col("src_lo") * np.uint64(0x9E3779B97F4A7C15)) ^ col("src_hi")
    key = (key * np.uint64(0xBF58476D1CE4E5B9)) ^ col("dst_lo")
    key = (key * np.uint64(0x94D049BB133111EB)) ^ col("dst_hi")
    key ^= (col("sport").astype(np.uint64) << np.uint64(16)) | col("dport").astype(np.uint64)
    o = np.argsort(key, kind="stable")
    k = key[o]
    start = np.ones(k.size, bool)
    start[1:] = k[1:] != k[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(k.size), 0))
    rank = np.arange(k.size) - first
    return np.sort(rows[o[rank < per_key]])


@dataclass(frozen=True)
class PayloadRequest:
    prefix_bytes: int = DEFAULT_PREFIX_BYTES
    select: Callable[[np.ndarray], np.ndarray] | None = None  # packets -> row indices

    def rows(self, packets: np.ndarray) -> np.ndarray:
        pick = self.select or first_payload_rows
        return np.asarray(pick(packets), np.int64)


def payload_prefixes(frames, packets: np.ndarray, transport: np.ndarray, rows: np.ndarray,
                     prefix_bytes: int) -> np.ndarray:
    """The first `prefix_bytes` payload bytes of packet rows `rows`. `transport[i]`: packet row
    i's frame index in `frames` and its TCP header offset in that frame."""
    out = np.zeros(rows.size, payload_dtype(prefix_bytes))
    if rows.size == 0:
        return out
    p = packets[rows]
    index = transport["index"][rows]
    start = transport["l4"][rows] + p["tcp_hdr_len"].astype(np.int64)
    caplen = frames.caplen[index].astype(np.int64)
    captured = np.clip(np.minimum(p["payload_len"].astype(np.int64), caplen - start), 0,
                       prefix_bytes)
    out["frame"] = p["frame"]
    out["payload_len"] = p["payload_len"]
    out["captured"] = captured
    if frames.data.shape[0] >= prefix_bytes:
        # one opaque row copy per prefix (fields.gather_rows), then what was not captured zeroed
        data = gather_rows(frames.data, frames.offset[index].astype(np.int64) + start,
                           prefix_bytes)
        data[np.arange(prefix_bytes)[None, :] >= captured[:, None]] = 0
        out["data"] = data
    else:  # a buffer shorter than one prefix: byte by byte
        column = np.arange(prefix_bytes)
        real = column[None, :] < captured[:, None]
        at = frames.offset[index].astype(np.int64)[:, None] + start[:, None] + column[None, :]
        at = np.where(real, np.minimum(at, max(frames.data.shape[0] - 1, 0)), 0)
        if frames.data.shape[0]:
            out["data"] = np.where(real, frames.data[at], 0)
    return out


def concat(parts: list[np.ndarray], prefix_bytes: int) -> np.ndarray:
    if not parts:
        return np.zeros(0, payload_dtype(prefix_bytes))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)

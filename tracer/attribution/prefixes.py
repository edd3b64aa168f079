"""The first bytes each flow's initiator sent, kept for the payload join (pure, stateful).

Rules: fed batch by batch, like the timeline (tracer.attribution.timeline), with the segment
rows of a batch, their packets, and decode's payload prefixes for that batch
(tracer.decode.payload, keyed by frame). Only the initiator's direction is kept, and only
the stream's first `prefix_bytes` bytes: a segment is placed by its sequence number relative to
the SYN (byte 0 is seq 1), so segments that came in two pieces, out of order or twice
land where they belong; bytes never captured stay unknown, and a flow's start is what is
known contiguously from byte 0. A flow that began before the capture (no SYN seen) has no
start. Memory: 2 x prefix_bytes bytes per flow id, and only when payload was asked for.

Without a config that says HAProxy writes such things, the store *probes*: it looks at the
first PROBE_STARTS stream starts it gets, and if none carries a PROXY header or a
forwarded-for, X-Real-IP or unique-id header it turns itself off (`active`), and the pipeline
goes back to decoding without payload: a capture without payload signals pays for its
first batches only.

`claims()` then reads, per backend flow, what HAProxy wrote about the client
(tracer.attribution.payload.client_claim, with the config's forwarded-for header, unique-id
header and format): a loop over backend flows with a captured start, a few microseconds each.
"""

from __future__ import annotations

import numpy as np

from tracer.attribution import vocab as av
from tracer.attribution.join import CLAIM_SOURCES, no_claims
from tracer.attribution.payload import PROXY_V2_SIGNATURE, client_claim, unique_id_parser
from tracer.decode.payload import DEFAULT_PREFIX_BYTES

PROBE_STARTS = 1000
# Without a config: the unique-id header names HAProxy users pick, and the format HAProxy's
# manual gives as its example (it names the client's address and port).
DEFAULT_UNIQUE_ID_HEADERS = ("X-Unique-ID", "X-Request-ID")
DEFAULT_UNIQUE_ID_FORMAT = r"%{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid"
_SIGNAL_HEADERS = (b"\r\nx-forwarded-for:", b"\r\nx-real-ip:", b"\r\nforwarded:",
                   b"\r\nx-unique-id:", b"\r\nx-request-id:")


def has_signal(start: bytes) -> bool:
    """Whether a stream's first bytes carry something the payload join reads."""
    if start.startswith((b"PROXY ", PROXY_V2_SIGNATURE)):
        return True
    low = start.lower()
    return any(name in low for name in _SIGNAL_HEADERS)


class StreamPrefixes:
    def __init__(self, prefix_bytes: int = DEFAULT_PREFIX_BYTES, probe: bool = False,
                 probe_starts: int = PROBE_STARTS) -> None:
        self.k = prefix_bytes
        self.data = np.zeros((0, prefix_bytes), np.uint8)
        self.known = np.zeros((0, prefix_bytes), bool)
        self.active = True  # False: the probe found nothing to read, payload no longer wanted
        self.probing = probe
        self.probed = 0
        self.probe_starts = probe_starts

    def _grow(self, need: int) -> None:
        if need <= self.data.shape[0]:
            return
        n = max(need, 2 * self.data.shape[0], 1024)
        for name in ("data", "known"):
            old = getattr(self, name)
            new = np.zeros((n, self.k), old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def add(self, seg: np.ndarray, prefixes: np.ndarray) -> None:
        """One batch: its segment rows (tracer.flows.tables.segments_with_packets) and decode's
        payload prefixes (frame order)."""
        if seg.shape[0] == 0 or prefixes.shape[0] == 0:
            return
        frames = prefixes["frame"]
        pos = np.searchsorted(frames, seg["frame"])
        pos_c = np.minimum(pos, frames.size - 1)
        offset = seg["seq"] - 1
        hit = ((frames[pos_c] == seg["frame"]) & (seg["direction"] == 0)
               & (offset >= 0) & (offset < self.k))
        rows = np.flatnonzero(hit)
        if rows.size == 0:
            return
        flow = seg["flow_id"][rows]
        self._grow(int(flow.max()) + 1)
        p = prefixes[pos_c[rows]]
        src = np.arange(self.k)
        col = offset[rows][:, None] + src[None, :]
        ok = (src[None, :] < p["captured"][:, None].astype(np.int64)) & (col < self.k)
        r, c = np.nonzero(ok)
        self.data[flow[r], col[r, c]] = p["data"][r, c]
        self.known[flow[r], col[r, c]] = True
        if self.probing:
            self._probe(flow[offset[rows] == 0])

    def _probe(self, flows: np.ndarray) -> None:
        for flow_id in np.unique(flows).tolist()[: self.probe_starts - self.probed]:
            if has_signal(self.start(flow_id)):
                self.probing = False
                return
            self.probed += 1
        if self.probed >= self.probe_starts:
            self.probing = self.active = False

    def start(self, flow_id: int) -> bytes:
        """The bytes known contiguously from the stream's first byte."""
        if flow_id >= self.known.shape[0]:
            return b""
        known = self.known[flow_id]
        n = int(np.argmin(known)) if not known.all() else self.k
        return self.data[flow_id, :n].tobytes()

    def claims(self, flows: np.ndarray, leg: np.ndarray, config=None
               ) -> tuple[np.ndarray, dict[int, str]]:
        """Per flow row (CLAIM_DTYPE): what a backend flow's start says about its client; and
        the unique ids read (backend flow row -> id), for the log join."""
        out = no_claims(flows.shape[0])
        unique_ids: dict[int, str] = {}
        ff_header = "X-Forwarded-For"
        uid_header: tuple[str, ...] = DEFAULT_UNIQUE_ID_HEADERS
        uid_format = DEFAULT_UNIQUE_ID_FORMAT
        if config is not None:
            ff_header = next((p.forwardfor_header for p in config.proxies
                              if p.forwardfor_header), ff_header)
            uid_header = tuple(dict.fromkeys(p.unique_id_header for p in config.proxies
                                             if p.unique_id_header))
            uid_format = next((p.unique_id_format for p in config.proxies
                               if p.unique_id_format), None)
        uid = unique_id_parser(uid_format)
        ids = flows["flow_id"]
        have = ids < self.known.shape[0]
        have[have] = self.known[ids[have], 0]
        rows = np.flatnonzero((leg == av.LEG_BACKEND) & have & (flows["syn_ts"] >= 0))
        source_index = {name: i for i, name in enumerate(CLAIM_SOURCES)}
        for row in rows.tolist():
            claim = client_claim(self.start(int(ids[row])), forwardfor_header=ff_header,
                                 unique_id_header=uid_header, unique_id=uid)
            if claim is None:
                continue
            if claim.unique_id:
                unique_ids[row] = claim.unique_id
            out["proxy_len"][row] = claim.proxy_len
            if claim.address is None:
                continue
            out["source"][row] = source_index[claim.source]
            out["hi"][row], out["lo"][row] = claim.address
            out["port"][row] = -1 if claim.port is None else claim.port
        return out, unique_ids

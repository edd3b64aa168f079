"""The two batch types that flow between the first stages, declared as data.

Rules:
- A **frame batch** (source -> decode) holds one row per capture record: when and how it was
  captured, and where its bytes are: `data` is the buffer the source read them into (shared by
  the batches of one read, never modified afterwards) and `offset` each frame's first byte in
  it. Frames are not copied out; decode reads only the header bytes it needs, checking every
  field against `caplen` (bytes past it belong to whatever followed the frame in the buffer).
- A **packet batch** (decode -> flows) is one numpy structured array of `PACKET_DTYPE`, one row
  per decoded TCP segment, in capture order. Frames that are not TCP, or that are malformed,
  get no row; they are counted (see `DecodeCounts`).
- Addresses of both IP versions share one representation: 128 bits as two uint64 halves,
  IPv4 as the IPv4-mapped IPv6 address ::ffff:a.b.c.d (RFC 4291 2.5.5.2), so comparisons and
  hashing never branch on the version.
- Absent TCP options are 0 in their field and 0 in the matching `opt_present` bit, so a present
  zero (e.g. window scale 0) is told apart from an absent option.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# TCP flag bits (RFC 9293 3.1; NS from RFC 3540, CWR/ECE from RFC 3168).
TH_FIN = 0x001  # no more data from sender
TH_SYN = 0x002  # synchronize sequence numbers
TH_RST = 0x004  # reset the connection
TH_PSH = 0x008  # push function
TH_ACK = 0x010  # acknowledgment field significant
TH_URG = 0x020  # urgent pointer field significant
TH_ECE = 0x040  # ECN echo
TH_CWR = 0x080  # congestion window reduced
TH_NS = 0x100  # ECN nonce sum (historic, RFC 3540)

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")

# Bits of `opt_present`.
OPT_MSS = 0x01  # kind 2 (RFC 9293)
OPT_WSCALE = 0x02  # kind 3 (RFC 7323)
OPT_SACK_PERM = 0x04  # kind 4 (RFC 2018)
OPT_SACK = 0x08  # kind 5 (RFC 2018)
OPT_TIMESTAMP = 0x10  # kind 8 (RFC 7323)

MAX_SACK_BLOCKS = 4  # 40 option bytes hold at most 4 SACK blocks (RFC 2018)

PACKET_DTYPE = np.dtype(
    [
        ("frame", np.int64),  # 1-based record number in the capture, as tshark numbers frames
        ("ts_ns", np.int64),  # capture timestamp, ns since the Unix epoch
        ("iface", np.uint16),  # pcapng interface id (0 for classic pcap)
        ("linktype", np.uint16),  # LINKTYPE_* of the record's interface
        ("caplen", np.uint32),  # bytes captured
        ("wirelen", np.uint32),  # bytes on the wire
        ("ip_version", np.uint8),  # 4 or 6
        ("src_hi", np.uint64),  # source address, high 64 bits (0 for IPv4)
        ("src_lo", np.uint64),  # source address, low 64 bits (0xffff_xxxxxxxx for IPv4)
        ("dst_hi", np.uint64),
        ("dst_lo", np.uint64),
        ("ttl", np.uint8),  # IPv4 TTL or IPv6 hop limit
        ("ip_id", np.uint16),  # IPv4 identification (0 for IPv6)
        ("df", np.bool_),  # IPv4 don't-fragment bit
        ("vlan", np.uint16),  # outermost 802.1Q/802.1ad VLAN id, 0 if untagged
        ("sport", np.uint16),
        ("dport", np.uint16),
        ("seq", np.uint32),  # raw (absolute) sequence number
        ("ack", np.uint32),  # raw acknowledgment number (meaningful when ACK is set)
        ("flags", np.uint16),  # 12 bits as tshark shows them: 9 flags (TH_*) + 3 reserved (0xE00)
        ("window", np.uint16),  # raw window field, not scaled
        ("tcp_hdr_len", np.uint8),  # data offset * 4
        ("payload_len", np.uint32),  # from the IP length fields, right under any snaplen
        ("urgent", np.uint16),
        ("opt_present", np.uint8),  # OPT_* bits
        ("mss", np.uint16),
        ("wscale", np.uint8),  # shift count as sent (tshark shows it uncapped)
        ("sack_count", np.uint8),  # SACK blocks present (<= MAX_SACK_BLOCKS)
        ("sack_left", np.uint32, (MAX_SACK_BLOCKS,)),
        ("sack_right", np.uint32, (MAX_SACK_BLOCKS,)),
        ("tsval", np.uint32),
        ("tsecr", np.uint32),
    ]
)


@dataclass
class FrameBatch:
    """Capture records as the source read them (all arrays have the same length n)."""

    frame: np.ndarray  # int64, 1-based
    ts_ns: np.ndarray  # int64
    iface: np.ndarray  # uint16
    linktype: np.ndarray  # uint16
    caplen: np.ndarray  # uint32
    wirelen: np.ndarray  # uint32
    data: np.ndarray  # uint8 buffer holding the frames
    offset: np.ndarray  # int64 index of each frame's first byte in `data`

    def __len__(self) -> int:
        return int(self.frame.shape[0])

    def frame_bytes(self, i: int) -> bytes:
        """The captured bytes of row i (for tests and debugging, not for hot paths)."""
        start = int(self.offset[i])
        return self.data[start : start + int(self.caplen[i])].tobytes()

    def rows(self, which: slice | np.ndarray) -> FrameBatch:
        """A batch of some rows, sharing the buffer."""
        return FrameBatch(
            frame=self.frame[which],
            ts_ns=self.ts_ns[which],
            iface=self.iface[which],
            linktype=self.linktype[which],
            caplen=self.caplen[which],
            wirelen=self.wirelen[which],
            data=self.data,
            offset=self.offset[which],
        )


@dataclass
class DecodeCounts:
    """What decode saw, beyond the TCP rows it returned. Counts add up across batches."""

    frames: int = 0
    tcp_packets: int = 0
    linktypes: dict[int, int] = field(default_factory=dict)  # LINKTYPE -> frames
    non_tcp: dict[str, int] = field(default_factory=dict)  # e.g. "ipv4/udp", "arp" -> frames
    anomalies: dict[str, int] = field(default_factory=dict)  # reason -> frames
    flag_counts: dict[str, int] = field(default_factory=dict)  # "SYN" -> TCP segments with it

    def merge(self, other: DecodeCounts) -> None:
        self.frames += other.frames
        self.tcp_packets += other.tcp_packets
        for mine, theirs in (
            (self.linktypes, other.linktypes),
            (self.non_tcp, other.non_tcp),
            (self.anomalies, other.anomalies),
            (self.flag_counts, other.flag_counts),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value


def ipv4_to_lo(addr: np.ndarray) -> np.ndarray:
    """uint32 IPv4 addresses -> the low half of their IPv4-mapped IPv6 form."""
    return np.uint64(0xFFFF_0000_0000) | addr.astype(np.uint64)


def format_address(hi: int, lo: int) -> str:
    """One address from its two halves, IPv4-mapped shown as dotted quad (like tshark)."""
    import ipaddress

    hi, lo = int(hi), int(lo)
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return str(ipaddress.IPv4Address(lo & 0xFFFF_FFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def parse_address(text: str) -> tuple[int, int]:
    """'10.0.0.1' or '2001:db8::1' -> (hi, lo) in the packet batch's representation."""
    import ipaddress

    addr = ipaddress.ip_address(text)
    if addr.version == 4:
        value = 0xFFFF_0000_0000 | int(addr)
    else:
        value = int(addr)
    return value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def empty_packets(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=PACKET_DTYPE)

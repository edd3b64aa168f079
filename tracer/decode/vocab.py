"""The closed vocabulary decode reports in: link types, anomaly reasons, non-TCP categories.

Rules: every frame that yields no TCP row is counted under exactly one name, either an anomaly
reason (it was malformed or could not be decoded) or a non-TCP category (it was fine, just not
TCP). A few anomalies mark rows that are still decoded (`KEPT_ROW_ANOMALIES`). Names are stable:
the JSON output and the tests use them.
"""

from __future__ import annotations

import numpy as np

# LINKTYPE_* values (https://www.tcpdump.org/linktypes.html) and the names we print.
LINKTYPE_NULL = 0  # BSD loopback, 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_BSD12 = 12  # DLT_RAW on most BSDs, written as 12 by some of them
LINKTYPE_RAW_BSD14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101  # raw IPv4 or IPv6, version from the first nibble
LINKTYPE_LOOP = 108  # OpenBSD loopback, address family in network byte order
LINKTYPE_LINUX_SLL = 113  # Linux cooked capture v1 (16-byte header)
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276  # Linux cooked capture v2 (20-byte header)
# Not a LINKTYPE: marks pcapng records that Wireshark numbers as frames but that hold no packet
# (custom blocks, systemd journal entries, sysdig events). Reserved range, never in a file.
LINKTYPE_PCAPNG_RECORD = 0xFFFE

LINKTYPE_NAMES = {
    LINKTYPE_NULL: "NULL",
    LINKTYPE_ETHERNET: "ETHERNET",
    LINKTYPE_RAW_BSD12: "RAW",
    LINKTYPE_RAW_BSD14: "RAW",
    LINKTYPE_RAW: "RAW",
    LINKTYPE_LOOP: "LOOP",
    LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4",
    LINKTYPE_IPV6: "IPV6",
    LINKTYPE_LINUX_SLL2: "LINUX_SLL2",
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES) | {LINKTYPE_PCAPNG_RECORD}


def linktype_name(linktype: int) -> str:
    if int(linktype) == LINKTYPE_PCAPNG_RECORD:
        return "PCAPNG_RECORD"
    return LINKTYPE_NAMES.get(int(linktype), f"LINKTYPE_{int(linktype)}")


# Anomaly reasons for frames that yield no TCP row. Index 0 means "no anomaly".
DROP_REASONS = (
    "",
    "unsupported_link_type",  # the native decoder does not know the link type
    "truncated_link_header",  # frame shorter than its link-layer header (incl. VLAN tags)
    "truncated_ip_header",  # fewer bytes than the IPv4/IPv6 fixed header or IHL says
    "bad_ip_version",  # version nibble disagrees with the link layer's protocol field
    "bad_ip_header_length",  # IPv4 IHL < 5
    "bad_ip_total_length",  # IPv4 total length < IHL, IPv6 payload < its extension headers
    "truncated_ipv6_extension_header",  # an IPv6 extension header runs past the capture
    "truncated_tcp_header",  # fewer than 20 TCP header bytes captured
    "bad_tcp_header_length",  # data offset < 5, or the TCP header longer than the IP payload
)
DROP = {name: i for i, name in enumerate(DROP_REASONS)}

# Anomalies on rows that are still decoded and returned.
KEPT_ROW_ANOMALIES = (
    "truncated_tcp_options",  # TCP options cut by the snaplen: parsed as far as captured
    "bad_tcp_option",  # an option length < 2 or running past the header: parsing stops there
    "ip_total_length_zero",  # IPv4 total length 0 (segmentation offload): frame length used
    "ip_length_exceeds_frame",  # IP length fields claim more than the frame's wire length
)

# Non-TCP categories: a code (kind << 16 | value) per frame, named on output.
NONTCP_ETHERTYPE = 1  # value: ethertype (or SLL protocol) that is not IP
NONTCP_IPV4_PROTO = 2  # value: IP protocol number
NONTCP_IPV6_PROTO = 3  # value: next header after the extension headers
NONTCP_IPV4_FRAGMENT = 4  # a non-first IPv4 fragment
NONTCP_IPV6_FRAGMENT = 5  # a non-first IPv6 fragment
NONTCP_NULL_FAMILY = 6  # value: BSD loopback address family that is not IP
NONTCP_LLC = 7  # 802.3 length field instead of an ethertype
NONTCP_PCAPNG_RECORD = 8  # a pcapng record without a packet (custom block ...)

_ETHERTYPE_NAMES = {0x0806: "arp", 0x86DD: "ipv6", 0x0800: "ipv4", 0x88CC: "lldp", 0x8035: "rarp"}
_IP_PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}


def nontcp_name(code: int) -> str:
    kind, value = int(code) >> 16, int(code) & 0xFFFF
    if kind == NONTCP_ETHERTYPE:
        return _ETHERTYPE_NAMES.get(value, f"ethertype-0x{value:04x}")
    if kind == NONTCP_IPV4_PROTO:
        return "ipv4/" + _IP_PROTO_NAMES.get(value, f"proto-{value}")
    if kind == NONTCP_IPV6_PROTO:
        return "ipv6/" + _IP_PROTO_NAMES.get(value, f"proto-{value}")
    if kind == NONTCP_IPV4_FRAGMENT:
        return "ipv4/fragment"
    if kind == NONTCP_IPV6_FRAGMENT:
        return "ipv6/fragment"
    if kind == NONTCP_NULL_FAMILY:
        return f"null-family-{value}"
    if kind == NONTCP_LLC:
        return "llc"
    if kind == NONTCP_PCAPNG_RECORD:
        return "pcapng-record"
    return f"unknown-{code}"


def count_codes(codes: np.ndarray, namer) -> dict[str, int]:
    """{name: count} over the non-zero codes of an array."""
    codes = codes[codes != 0]
    if codes.size == 0:
        return {}
    values, counts = np.unique(codes, return_counts=True)
    out: dict[str, int] = {}
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        name = namer(value)
        out[name] = out.get(name, 0) + count
    return out

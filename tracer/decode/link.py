"""Link layer: where the IP header starts in each frame, and which IP version to expect.

Rules: one pass per link type present in the batch, on the rows of that link type, all rows at
once; the first link-layer fields sit at fixed offsets, so they are strided column reads. VLAN
stacks (802.1Q 0x8100, 802.1ad 0x88a8, and the pre-standard 0x9100) are peeled in a loop over
tag depth, never over packets, on the tagged rows only. Raw-IP link types leave the version to
the IP header's first nibble (`ETHERTYPE_BY_VERSION`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.decode import vocab as v
from tracer.decode.fields import Fields

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_BY_VERSION = 0  # raw IP: decide from the version nibble
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 4

ETHERNET_HEADER = 14
SLL_HEADER = 16  # protocol at offset 14
SLL2_HEADER = 20  # protocol at offset 0
NULL_HEADER = 4
LINK_WINDOW = 22  # covers the protocol field of every link header above

# BSD loopback address families: AF_INET is 2 everywhere; AF_INET6 is 24 (NetBSD, OpenBSD),
# 28 (FreeBSD) or 30 (Darwin).
AF_INET = 2
AF_INET6_VALUES = (24, 28, 30)


@dataclass
class LinkLayer:
    l3: np.ndarray  # int64 offset of the IP header
    ethertype: np.ndarray  # uint32: 0x0800, 0x86DD, ETHERTYPE_BY_VERSION, or something else
    vlan: np.ndarray  # uint16 outermost VLAN id
    drop: np.ndarray  # uint8 DROP code (0 = fine so far)
    nontcp: np.ndarray  # uint32 non-TCP category code (0 = maybe TCP)


def decode_link(f: Fields, linktype: np.ndarray) -> LinkLayer:
    n = f.n
    out = LinkLayer(
        l3=np.zeros(n, np.int64),
        ethertype=np.zeros(n, np.uint32),
        vlan=np.zeros(n, np.uint16),
        drop=np.zeros(n, np.uint8),
        nontcp=np.zeros(n, np.uint32),
    )
    kinds = np.unique(linktype).tolist()
    for lt in kinds:
        rows = slice(None) if len(kinds) == 1 else np.flatnonzero(linktype == lt)
        if lt == v.LINKTYPE_ETHERNET:
            _ethernet_like(f, rows, out, type_at=12, payload_at=ETHERNET_HEADER)
        elif lt == v.LINKTYPE_LINUX_SLL:
            _ethernet_like(f, rows, out, type_at=14, payload_at=SLL_HEADER)
        elif lt == v.LINKTYPE_LINUX_SLL2:
            _ethernet_like(f, rows, out, type_at=0, payload_at=SLL2_HEADER)
        elif lt in (v.LINKTYPE_NULL, v.LINKTYPE_LOOP):
            _bsd_loopback(f, rows, out, network_order=lt == v.LINKTYPE_LOOP)
        elif lt in (v.LINKTYPE_RAW, v.LINKTYPE_RAW_BSD12, v.LINKTYPE_RAW_BSD14):
            out.ethertype[rows] = ETHERTYPE_BY_VERSION
        elif lt == v.LINKTYPE_IPV4:
            out.ethertype[rows] = ETHERTYPE_IPV4
        elif lt == v.LINKTYPE_IPV6:
            out.ethertype[rows] = ETHERTYPE_IPV6
        elif lt == v.LINKTYPE_PCAPNG_RECORD:
            out.nontcp[rows] = v.NONTCP_PCAPNG_RECORD << 16
        else:
            out.drop[rows] = v.DROP["unsupported_link_type"]
    return out


def _is_vlan(ethertype: np.ndarray) -> np.ndarray:
    return (ethertype == 0x8100) | (ethertype == 0x88A8) | (ethertype == 0x9100)


def _ethernet_like(f: Fields, rows, out: LinkLayer, type_at: int, payload_at: int) -> None:
    short = ~f.within(payload_at, rows)
    ethertype = f.window(0, LINK_WINDOW, rows).u16(type_at).astype(np.uint32)
    payload = np.full(short.shape, payload_at, np.int64)
    vlan = np.zeros(short.shape, np.uint16)
    tagged = _is_vlan(ethertype) & ~short
    if tagged.any():
        # Only tagged rows take the per-row-offset path.
        all_rows = np.arange(f.n)[rows]
        sub = np.flatnonzero(tagged)
        sub_rows = all_rows[sub]
        sub_type = ethertype[sub]
        sub_payload = payload[sub]
        sub_short = np.zeros(sub.shape, bool)
        sub_vlan = np.zeros(sub.shape, np.uint16)
        seen = np.zeros(sub.shape, bool)
        for _ in range(MAX_VLAN_TAGS):
            is_tag = _is_vlan(sub_type) & ~sub_short
            if not is_tag.any():
                break
            sub_short |= is_tag & ~f.within(sub_payload + 4, sub_rows)
            is_tag &= ~sub_short
            first = is_tag & ~seen
            sub_vlan[first] = f.u16(sub_payload, sub_rows)[first] & 0x0FFF
            seen |= is_tag
            sub_type = np.where(is_tag, f.u16(sub_payload + 2, sub_rows).astype(np.uint32), sub_type)
            sub_payload = np.where(is_tag, sub_payload + 4, sub_payload)
        ethertype[sub] = sub_type
        payload[sub] = sub_payload
        vlan[sub] = sub_vlan
        short[sub] |= sub_short
    out.l3[rows] = payload
    out.ethertype[rows] = ethertype
    out.vlan[rows] = vlan
    out.drop[rows] = np.where(short, v.DROP["truncated_link_header"], 0).astype(np.uint8)
    ok = ~short
    # Ethernet II types start at 0x0600; smaller values are 802.3 lengths (LLC follows).
    llc = ok & (ethertype < 0x0600) & (type_at == 12)
    other = ok & ~llc & (ethertype != ETHERTYPE_IPV4) & (ethertype != ETHERTYPE_IPV6)
    code = np.zeros(short.shape, np.uint32)
    code[other] = (v.NONTCP_ETHERTYPE << 16) | ethertype[other]
    code[llc] = v.NONTCP_LLC << 16
    out.nontcp[rows] = code


def _bsd_loopback(f: Fields, rows, out: LinkLayer, network_order: bool) -> None:
    short = ~f.within(NULL_HEADER, rows)
    header = f.window(0, NULL_HEADER, rows)
    big = header.u32(0)
    if network_order:
        family = big
    else:
        # Written in the capturing host's byte order: a family is small, so a value with
        # its low bytes empty was written the other way round.
        little = header.u32_le(0)
        family = np.where(little & 0xFFFF0000, big, little)
    ipv4 = family == AF_INET
    ipv6 = np.isin(family, AF_INET6_VALUES)
    out.l3[rows] = NULL_HEADER
    out.ethertype[rows] = np.where(ipv4, ETHERTYPE_IPV4, np.where(ipv6, ETHERTYPE_IPV6, 0xFFFF))
    out.drop[rows] = np.where(short, v.DROP["truncated_link_header"], 0).astype(np.uint8)
    other = ~short & ~ipv4 & ~ipv6
    out.nontcp[rows] = np.where(other, (v.NONTCP_NULL_FAMILY << 16) | (family & 0xFFFF), 0)

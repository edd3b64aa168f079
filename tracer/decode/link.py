"""Link layer: where the IP header starts in each frame, and which IP version to expect.

Rules: one pass per link type present in the batch, on the rows of that link type, all rows at
once; the first link-layer fields sit at fixed offsets, so they are strided column reads of the
head. A batch of one link type (the usual case) is decoded in place, without splitting rows
and scattering results back. VLAN stacks (802.1Q 0x8100, 802.1ad 0x88a8, and the pre-standard
0x9100) are peeled in a loop over tag depth, never over packets, on the tagged rows only.
Raw-IP link types leave the version to the IP header's first nibble (`ETHERTYPE_BY_VERSION`).
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
    vlan: np.ndarray | None  # uint16 outermost VLAN id; None when no frame is tagged
    drop: np.ndarray  # uint8 DROP code (0 = fine so far)
    nontcp: np.ndarray  # uint32 non-TCP category code (0 = maybe TCP)


def decode_link(f: Fields, linktype: np.ndarray) -> LinkLayer:
    n = f.n
    first = int(linktype[0]) if n else 0
    if n == 0 or (linktype == first).all():
        return _decode_one(f, first, None, n)
    out = LinkLayer(
        l3=np.zeros(n, np.int64),
        ethertype=np.zeros(n, np.uint32),
        vlan=np.zeros(n, np.uint16),
        drop=np.zeros(n, np.uint8),
        nontcp=np.zeros(n, np.uint32),
    )
    for lt in np.unique(linktype).tolist():
        rows = np.flatnonzero(linktype == lt)
        part = _decode_one(f, lt, rows, rows.shape[0])
        out.l3[rows] = part.l3
        out.ethertype[rows] = part.ethertype
        if part.vlan is not None:
            out.vlan[rows] = part.vlan
        out.drop[rows] = part.drop
        out.nontcp[rows] = part.nontcp
    return out


def _decode_one(f: Fields, lt: int, rows: np.ndarray | None, n: int) -> LinkLayer:
    """The link layer of `rows` (all rows if None), which share link type `lt`."""
    if lt == v.LINKTYPE_ETHERNET:
        return _ethernet_like(f, rows, n, type_at=12, payload_at=ETHERNET_HEADER)
    if lt == v.LINKTYPE_LINUX_SLL:
        return _ethernet_like(f, rows, n, type_at=14, payload_at=SLL_HEADER)
    if lt == v.LINKTYPE_LINUX_SLL2:
        return _ethernet_like(f, rows, n, type_at=0, payload_at=SLL2_HEADER)
    if lt in (v.LINKTYPE_NULL, v.LINKTYPE_LOOP):
        return _bsd_loopback(f, rows, n, network_order=lt == v.LINKTYPE_LOOP)
    out = LinkLayer(
        l3=np.zeros(n, np.int64),
        ethertype=np.zeros(n, np.uint32),
        vlan=None,
        drop=np.zeros(n, np.uint8),
        nontcp=np.zeros(n, np.uint32),
    )
    if lt in (v.LINKTYPE_RAW, v.LINKTYPE_RAW_BSD12, v.LINKTYPE_RAW_BSD14):
        out.ethertype[:] = ETHERTYPE_BY_VERSION
    elif lt == v.LINKTYPE_IPV4:
        out.ethertype[:] = ETHERTYPE_IPV4
    elif lt == v.LINKTYPE_IPV6:
        out.ethertype[:] = ETHERTYPE_IPV6
    elif lt == v.LINKTYPE_PCAPNG_RECORD:
        out.nontcp[:] = v.NONTCP_PCAPNG_RECORD << 16
    else:
        out.drop[:] = v.DROP["unsupported_link_type"]
    return out


def _is_vlan(ethertype: np.ndarray) -> np.ndarray:
    # 0x8100 and 0x9100 differ in one bit.
    return ((ethertype | 0x1000) == 0x9100) | (ethertype == 0x88A8)


def _ethernet_like(f: Fields, rows, n: int, type_at: int, payload_at: int) -> LinkLayer:
    short = ~f.within(payload_at, rows)
    any_short = bool(short.any())
    ethertype = f.window(0, LINK_WINDOW, rows).u16(type_at).astype(np.uint32)
    payload = np.full(n, payload_at, np.int64)
    vlan = None
    tagged = _is_vlan(ethertype)
    if any_short:
        tagged &= ~short
    if tagged.any():
        # Only tagged rows take this path. A stack is contiguous, so tag d of every row sits
        # at the same column: each depth is a column read, on the rows still tagged.
        sub = np.flatnonzero(tagged)
        sub_rows = sub if rows is None else rows[sub]
        stack = f.window(0, payload_at + 4 * MAX_VLAN_TAGS, sub_rows)
        sub_caplen = f.limit[sub_rows]
        sub_type = ethertype[sub]
        sub_short = np.zeros(sub.shape, bool)
        depth = np.zeros(sub.shape, np.int64)
        tagged_here = np.ones(sub.shape, bool)
        for d in range(MAX_VLAN_TAGS):
            if d:
                tagged_here &= _is_vlan(sub_type)
                if not tagged_here.any():
                    break
            tag_at = payload_at + 4 * d
            fits = sub_caplen >= tag_at + 4
            sub_short |= tagged_here & ~fits
            tagged_here &= fits
            sub_type = np.where(tagged_here, stack.u16(tag_at + 2), sub_type)
            depth += tagged_here
        vlan = np.zeros(n, np.uint16)
        # The outermost tag's id, where that tag was captured.
        vlan[sub] = np.where(sub_caplen >= payload_at + 4, stack.u16(payload_at) & 0x0FFF, 0)
        ethertype[sub] = sub_type
        payload[sub] += depth * 4
        short[sub] |= sub_short
        any_short = bool(short.any())
    drop = (short.view(np.uint8) * np.uint8(v.DROP["truncated_link_header"])) if any_short else (
        np.zeros(n, np.uint8)
    )
    is_ip = (ethertype == ETHERTYPE_IPV4) | (ethertype == ETHERTYPE_IPV6)
    if any_short:
        is_ip |= short
    code = np.zeros(n, np.uint32)
    if not is_ip.all():
        ok = ~short
        # Ethernet II types start at 0x0600; smaller values are 802.3 lengths (LLC follows).
        llc = ok & (ethertype < 0x0600) & (type_at == 12)
        other = ~is_ip & ~llc
        code[other] = (v.NONTCP_ETHERTYPE << 16) | ethertype[other]
        code[llc] = v.NONTCP_LLC << 16
    return LinkLayer(l3=payload, ethertype=ethertype, vlan=vlan, drop=drop, nontcp=code)


def _bsd_loopback(f: Fields, rows, n: int, network_order: bool) -> LinkLayer:
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
    other = ~short & ~ipv4 & ~ipv6
    return LinkLayer(
        l3=np.full(n, NULL_HEADER, np.int64),
        ethertype=np.where(ipv4, ETHERTYPE_IPV4, np.where(ipv6, ETHERTYPE_IPV6, 0xFFFF)).astype(
            np.uint32
        ),
        vlan=None,
        drop=np.where(short, v.DROP["truncated_link_header"], 0).astype(np.uint8),
        nontcp=np.where(other, (v.NONTCP_NULL_FAMILY << 16) | (family & 0xFFFF), 0).astype(
            np.uint32
        ),
    )

"""Network layer: IPv4 (RFC 791) and IPv6 (RFC 8200) headers, to the start of the TCP header.

Rules:
- The transport length comes from the IP length fields, never from the captured length, so it
  stays right under any snaplen; like Wireshark, a length field larger than the frame is clipped
  to the frame (`ip_length_exceeds_frame`), and an IPv4 total length of 0 means segmentation
  offload: the frame length is used (`ip_total_length_zero`).
- IPv6 extension headers (hop-by-hop 0, routing 43, fragment 44, AH 51, destination options 60)
  are walked in a loop over header depth. A non-first fragment (either version) is counted as
  non-TCP; a first fragment's TCP header is decoded.
- Addresses go to the two-uint64 form of tracer.packet (IPv4-mapped for IPv4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.decode import vocab as v
from tracer.decode.fields import Fields
from tracer.decode.link import ETHERTYPE_BY_VERSION, ETHERTYPE_IPV4, ETHERTYPE_IPV6, LinkLayer
from tracer.packet import ipv4_to_lo

IPPROTO_TCP = 6
IPV6_EXTENSION_HEADERS = (0, 43, 44, 51, 60)
IPV6_FRAGMENT = 44
IPV6_AH = 51
MAX_IPV6_EXTENSIONS = 8


def _is_extension(next_header: np.ndarray) -> np.ndarray:
    # Equivalent to np.isin(next_header, IPV6_EXTENSION_HEADERS), without its sorting.
    return ((next_header == 0) | (next_header == 43) | (next_header == 44)
            | (next_header == 51) | (next_header == 60))


@dataclass
class IpLayer:
    version: np.ndarray  # uint8, 0 where not IP
    l4: np.ndarray  # int64 offset of the transport header
    l4_len: np.ndarray  # int64 transport bytes according to the IP length fields
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    ttl: np.ndarray
    ip_id: np.ndarray
    df: np.ndarray
    total_zero: np.ndarray  # bool: kept-row anomaly
    exceeds_frame: np.ndarray  # bool: kept-row anomaly


def decode_ip(f: Fields, link: LinkLayer, wirelen: np.ndarray) -> IpLayer:
    n = f.n
    out = IpLayer(
        version=np.zeros(n, np.uint8),
        l4=np.zeros(n, np.int64),
        l4_len=np.zeros(n, np.int64),
        src_hi=np.zeros(n, np.uint64),
        src_lo=np.zeros(n, np.uint64),
        dst_hi=np.zeros(n, np.uint64),
        dst_lo=np.zeros(n, np.uint64),
        ttl=np.zeros(n, np.uint8),
        ip_id=np.zeros(n, np.uint16),
        df=np.zeros(n, bool),
        total_zero=np.zeros(n, bool),
        exceeds_frame=np.zeros(n, bool),
    )
    candidate = (link.drop == 0) & (link.nontcp == 0)
    nibble = f.u8(link.l3) >> 4
    by_version = link.ethertype == ETHERTYPE_BY_VERSION
    want4 = candidate & ((link.ethertype == ETHERTYPE_IPV4) | (by_version & (nibble == 4)))
    want6 = candidate & ((link.ethertype == ETHERTYPE_IPV6) | (by_version & (nibble == 6)))
    no_header = candidate & ~f.within(link.l3 + 1)
    link.drop[no_header] = v.DROP["truncated_ip_header"]
    # A raw-IP frame of another version, or an IP ethertype whose version disagrees.
    is4 = want4 & (nibble == 4) & ~no_header
    is6 = want6 & (nibble == 6) & ~no_header
    bad_version = candidate & ~no_header & ~is4 & ~is6
    link.drop[bad_version] = v.DROP["bad_ip_version"]
    for mask, decode in ((is4, _ipv4), (is6, _ipv6)):
        count = int(np.count_nonzero(mask))
        if count:
            rows = slice(None) if count == n else np.flatnonzero(mask)
            decode(f, rows, link, out, wirelen)
    return out


def _ipv4(f: Fields, rows, link: LinkLayer, out: IpLayer, wirelen: np.ndarray) -> None:
    l3 = link.l3[rows]
    hdr = f.window(l3, 20, rows)
    drop = np.zeros(l3.shape, np.uint8)
    fixed = f.within(l3 + 20, rows)
    drop[~fixed] = v.DROP["truncated_ip_header"]
    ihl = (hdr.u8(0) & 0x0F).astype(np.int64) * 4
    bad_ihl = (drop == 0) & (ihl < 20)
    drop[bad_ihl] = v.DROP["bad_ip_header_length"]
    options_missing = (drop == 0) & ~f.within(l3 + ihl, rows)
    drop[options_missing] = v.DROP["truncated_ip_header"]
    total = hdr.u16(2).astype(np.int64)
    on_wire = wirelen[rows].astype(np.int64) - l3
    total_zero = total == 0
    total = np.where(total_zero, on_wire, total)
    exceeds = total > on_wire
    total = np.minimum(total, on_wire)
    bad_total = (drop == 0) & (total < ihl)
    drop[bad_total] = v.DROP["bad_ip_total_length"]
    frag = hdr.u16(6)
    proto = hdr.u8(9)
    ok = drop == 0
    code = np.zeros(l3.shape, np.uint32)
    non_first = ok & ((frag & 0x1FFF) != 0)
    code[non_first] = v.NONTCP_IPV4_FRAGMENT << 16
    other = ok & ~non_first & (proto != IPPROTO_TCP)
    code[other] = (v.NONTCP_IPV4_PROTO << 16) | proto[other].astype(np.uint32)
    link.drop[rows] = drop
    link.nontcp[rows] = code
    out.version[rows] = 4
    out.l4[rows] = l3 + ihl
    out.l4_len[rows] = total - ihl
    out.src_lo[rows] = ipv4_to_lo(hdr.u32(12))
    out.dst_lo[rows] = ipv4_to_lo(hdr.u32(16))
    out.ttl[rows] = hdr.u8(8)
    out.ip_id[rows] = hdr.u16(4)
    out.df[rows] = (frag & 0x4000) != 0
    out.total_zero[rows] = total_zero & ok
    out.exceeds_frame[rows] = exceeds & ~total_zero & ok


def _ipv6(f: Fields, rows, link: LinkLayer, out: IpLayer, wirelen: np.ndarray) -> None:
    l3 = link.l3[rows]
    hdr = f.window(l3, 40, rows)
    drop = np.zeros(l3.shape, np.uint8)
    fixed = f.within(l3 + 40, rows)
    drop[~fixed] = v.DROP["truncated_ip_header"]
    payload = hdr.u16(4).astype(np.int64)
    on_wire = wirelen[rows].astype(np.int64) - l3
    jumbo = payload == 0  # jumbogram or offload: trust the frame length, as Wireshark does
    total = np.where(jumbo, on_wire, payload + 40)
    exceeds = total > on_wire
    total = np.minimum(total, on_wire)
    next_header = hdr.u8(6).astype(np.int64)
    pos = l3 + 40
    non_first = np.zeros(l3.shape, bool)
    extended = (drop == 0) & _is_extension(next_header)
    if extended.any():
        # Extension headers: per-row offsets, walked on the rows that have them.
        all_rows = np.arange(f.n)[rows]
        sub = np.flatnonzero(extended)
        r = all_rows[sub]
        nh, p = next_header[sub], pos[sub]
        sub_drop = np.zeros(sub.shape, np.uint8)
        sub_frag = np.zeros(sub.shape, bool)
        for _ in range(MAX_IPV6_EXTENSIONS):
            ext = (sub_drop == 0) & ~sub_frag & _is_extension(nh)
            if not ext.any():
                break
            have_len = f.within(p + 2, r)
            second = f.u8(p + 1, r).astype(np.int64)
            hdr_len = np.where(nh == IPV6_FRAGMENT, 8,
                               np.where(nh == IPV6_AH, (second + 2) * 4, (second + 1) * 8))
            complete = have_len & f.within(p + hdr_len, r)
            missing = ext & ~complete
            sub_drop[missing] = v.DROP["truncated_ipv6_extension_header"]
            ext &= complete
            fragment = ext & (nh == IPV6_FRAGMENT)
            sub_frag |= fragment & ((f.u16(p + 2, r) >> 3) != 0)
            nh = np.where(ext, f.u8(p, r).astype(np.int64), nh)
            p = np.where(ext, p + hdr_len, p)
        next_header[sub], pos[sub], drop[sub], non_first[sub] = nh, p, sub_drop, sub_frag
    l4_len = total - (pos - l3)
    bad_total = (drop == 0) & (l4_len < 0)
    drop[bad_total] = v.DROP["bad_ip_total_length"]
    ok = drop == 0
    code = np.zeros(l3.shape, np.uint32)
    code[ok & non_first] = v.NONTCP_IPV6_FRAGMENT << 16
    other = ok & ~non_first & (next_header != IPPROTO_TCP)
    code[other] = (v.NONTCP_IPV6_PROTO << 16) | next_header[other].astype(np.uint32)
    link.drop[rows] = drop
    link.nontcp[rows] = code
    out.version[rows] = 6
    out.l4[rows] = pos
    out.l4_len[rows] = l4_len
    out.src_hi[rows] = hdr.u64(8)
    out.src_lo[rows] = hdr.u64(16)
    out.dst_hi[rows] = hdr.u64(24)
    out.dst_lo[rows] = hdr.u64(32)
    out.ttl[rows] = hdr.u8(7)
    out.exceeds_frame[rows] = exceeds & ~jumbo & ok

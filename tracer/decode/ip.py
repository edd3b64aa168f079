"""Network layer: IPv4 (RFC 791) and IPv6 (RFC 8200) headers, to the start of the TCP header.

Rules:
- The transport length comes from the IP length fields, never from the captured length, so it
  stays right under any snaplen; like Wireshark, a length field larger than the frame is clipped
  to the frame (`ip_length_exceeds_frame`), and an IPv4 total length of 0 means segmentation
  offload: the frame length is used (`ip_total_length_zero`).
- IPv6 extension headers (hop-by-hop 0, routing 43, fragment 44, AH 51, destination options 60)
  are walked in a loop over header depth. A non-first fragment (either version) is counted as
  non-TCP; a first fragment's TCP header is decoded.
- Addresses go to the two-uint64 form of tracer.packet (IPv4-mapped for IPv4); that is done
  when the packet rows are filled, from the IP window kept here.

Theory of operation: both versions are decoded together, on whole chunk-sized arrays: one
40-byte window at each frame's IP header holds every field either version needs, and where the
versions differ (header length, length field, protocol) one `where` on the IPv6 mask picks the
right value; a chunk of one version skips even that. The checks that drop a frame are first
screened together with a few whole-array comparisons; only the rare rows that fail are then
classified one check after another, in the order that decides their reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.decode import vocab as v
from tracer.decode.fields import Fields, Window
from tracer.decode.link import ETHERTYPE_IPV4, ETHERTYPE_IPV6, LinkLayer

IPPROTO_TCP = 6
IPV6_EXTENSION_HEADERS = (0, 43, 44, 51, 60)
IPV6_FRAGMENT = 44
IPV6_AH = 51
MAX_IPV6_EXTENSIONS = 8
IP_WINDOW = 40  # the IPv6 fixed header; covers every IPv4 field we read

_IS_EXTENSION = np.zeros(256, bool)
_IS_EXTENSION[list(IPV6_EXTENSION_HEADERS)] = True


def _is_extension(next_header: np.ndarray) -> np.ndarray:
    return _IS_EXTENSION[next_header]


@dataclass
class IpLayer:
    version: np.ndarray  # uint8, 0 where not IP (or dropped before the version was known)
    is6: np.ndarray  # bool: decoded as IPv6 (else IPv4 where version is 4)
    any4: bool  # some row is IPv4
    any6: bool  # some row is IPv6
    l4: np.ndarray  # int64 offset of the transport header
    l4_len: np.ndarray  # int64 transport bytes according to the IP length fields
    window: Window  # 40 bytes from each frame's IP header
    df: np.ndarray | None  # bool IPv4 don't-fragment bit (None: no IPv4 row)
    total_zero: np.ndarray | None  # bool: kept-row anomaly (None: no such row)
    exceeds_frame: np.ndarray | None  # bool: kept-row anomaly (None: no such row)


def decode_ip(f: Fields, link: LinkLayer, wirelen: np.ndarray) -> IpLayer:
    """Decode the IP layer of every frame; updates `link.drop` and `link.nontcp` in place."""
    n = f.n
    drop, nontcp = link.drop, link.nontcp
    candidate = (drop == 0) & (nontcp == 0)
    l3 = link.l3
    caplen = f.limit
    hdr = f.window(l3, IP_WINDOW)
    nibble = hdr.u8(0) >> 4
    ethertype = link.ethertype
    # Candidates carry 0x0800, 0x86DD or ETHERTYPE_BY_VERSION: the nibble decides, unless the
    # link layer named the other version.
    no_header = caplen <= l3
    has_header = candidate & ~no_header
    is4 = has_header & (nibble == 4) & (ethertype != ETHERTYPE_IPV6)
    is6 = has_header & (nibble == 6) & (ethertype != ETHERTYPE_IPV4)
    any4, any6 = bool(is4.any()), bool(is6.any())
    is_ip = is4 | is6 if any4 and any6 else (is4 if any4 else is6)
    if not is_ip.all():
        drop[candidate & no_header] = v.DROP["truncated_ip_header"]
        drop[has_header & ~is_ip] = v.DROP["bad_ip_version"]
    version = is4.view(np.uint8) * np.uint8(4)
    if any6:
        version |= is6.view(np.uint8) * np.uint8(6)

    def pick(v6, v4):
        """The IPv6 or IPv4 flavour of a per-row value (each a callable, read only if used)."""
        if not any6:
            return v4()
        if not any4:
            return v6()
        return np.where(is6, v6(), v4())

    ihl = (hdr.u8(0) & 0x0F).astype(np.int64) << 2
    hdr_len = pick(lambda: np.int64(40), lambda: ihl)
    if hdr_len.ndim == 0:
        hdr_len = np.full(n, 40, np.int64)
    length_field = pick(lambda: hdr.raw(">u2", 4), lambda: hdr.raw(">u2", 2)).astype(np.int64)
    on_wire = wirelen.astype(np.int64) - l3
    zero = length_field == 0  # IPv4 offload, IPv6 jumbogram: trust the frame, like Wireshark
    total = length_field + 40 if not any4 else (
        np.where(is6, length_field + 40, length_field) if any6 else length_field
    )
    any_zero = bool(zero.any())
    if any_zero:
        total = np.where(zero, on_wire, total)
    exceeds = total > on_wire
    np.minimum(total, on_wire, out=total)
    proto = pick(lambda: hdr.u8(6), lambda: hdr.u8(9)).astype(np.int64)
    non_first = None
    if any4:
        frag = hdr.raw(">u2", 6).astype(np.uint16)
        non_first = ((frag & 0x1FFF) != 0) & is4
        df = ((frag & 0x4000) != 0) & is4
    else:
        df = None
    if any6:
        extended = is6 & _is_extension(proto) & (caplen >= l3 + 40)
        if extended.any():
            frag6 = _extensions(f, np.flatnonzero(extended), l3, hdr_len, proto, drop)
            non_first = frag6 if non_first is None else non_first | frag6
    l4_len = total - hdr_len
    # Screen every drop check at once; classify the failing rows one check after another.
    trouble = is_ip & ((caplen < l3 + hdr_len) | (hdr_len < 20) | (l4_len < 0)) & (drop == 0)
    if trouble.any():
        rows = np.flatnonzero(trouble)
        fixed = np.where(is6[rows], 40, 20)
        drop[rows] = np.select(
            [
                caplen[rows] < l3[rows] + fixed,
                hdr_len[rows] < 20,
                caplen[rows] < l3[rows] + hdr_len[rows],
                l4_len[rows] < 0,
            ],
            [
                v.DROP["truncated_ip_header"],
                v.DROP["bad_ip_header_length"],
                v.DROP["truncated_ip_header"],
                v.DROP["bad_ip_total_length"],
            ],
            0,
        ).astype(np.uint8)
    ok = is_ip & (drop == 0)
    special = proto != IPPROTO_TCP
    if non_first is not None:
        special |= non_first
    special &= ok
    if special.any():
        rows = np.flatnonzero(special)
        six = is6[rows]
        first = np.zeros(rows.shape, bool) if non_first is None else non_first[rows]
        nontcp[rows] = np.where(
            first,
            np.where(six, v.NONTCP_IPV6_FRAGMENT << 16, v.NONTCP_IPV4_FRAGMENT << 16),
            np.where(six, v.NONTCP_IPV6_PROTO << 16, v.NONTCP_IPV4_PROTO << 16) | proto[rows],
        ).astype(np.uint32)
    total_zero = exceeds_frame = None
    if any_zero and any4:
        total_zero = zero & is4 & ok
    exceeding = exceeds & ok
    if any_zero:
        exceeding &= ~zero
    if exceeding.any():
        exceeds_frame = exceeding
    return IpLayer(
        version=version,
        is6=is6,
        any4=any4,
        any6=any6,
        l4=l3 + hdr_len,
        l4_len=l4_len,
        window=hdr,
        df=df,
        total_zero=total_zero,
        exceeds_frame=exceeds_frame,
    )


def _extensions(f: Fields, sub: np.ndarray, l3, hdr_len, next_header, drop) -> np.ndarray:
    """Walk the IPv6 extension headers of rows `sub`, updating their header length, next
    header and drop code in place; returns the (full-length) non-first-fragment mask."""
    nh, p = next_header[sub], l3[sub] + 40
    sub_drop = np.zeros(sub.shape, np.uint8)
    sub_frag = np.zeros(sub.shape, bool)
    for _ in range(MAX_IPV6_EXTENSIONS):
        ext = (sub_drop == 0) & ~sub_frag & _is_extension(nh)
        if not ext.any():
            break
        have_len = f.within(p + 2, sub)
        second = f.u8(p + 1, sub).astype(np.int64)
        length = np.where(nh == IPV6_FRAGMENT, 8,
                          np.where(nh == IPV6_AH, (second + 2) * 4, (second + 1) * 8))
        complete = have_len & f.within(p + length, sub)
        missing = ext & ~complete
        sub_drop[missing] = v.DROP["truncated_ipv6_extension_header"]
        ext &= complete
        fragment = ext & (nh == IPV6_FRAGMENT)
        sub_frag |= fragment & ((f.u16(p + 2, sub) >> 3) != 0)
        nh = np.where(ext, f.u8(p, sub).astype(np.int64), nh)
        p = np.where(ext, p + length, p)
    next_header[sub] = nh
    hdr_len[sub] = p - l3[sub]
    drop[sub] = sub_drop
    non_first = np.zeros(next_header.shape, bool)
    non_first[sub] = sub_frag
    return non_first

"""Deterministic synthetic captures for link types and layouts that cannot be made for real here.

Rules:
- Deterministic: no clocks, no unseeded randomness; gzip members carry mtime 0. Running the
  script twice gives byte-identical files.
- Documentation addresses only (192.0.2.0/24, 198.51.100.0/24, 2001:db8::/32), locally
  administered MACs, and TCP ports tshark has no dissector for (43080 and 50000+), so tshark
  shows plain TCP.
- Checksums are correct, as on a wire: a decoder must not need them, and tshark flagging them
  would only add noise.
- Well-formed files go to captures/ (named synth-*), malformed ones to captures/malformed/.

Theory of operation:
Packets are built bottom-up (TCP/UDP/ICMP -> IPv4/IPv6 -> link layer) by small functions whose
header layouts are struct formats. Each frame carries an `Expect` record written from the
inputs that built it (never by parsing the bytes back), saying what tshark should show: the
TCP fields, option kinds in order, addresses, VLAN ids, timestamp, lengths. `--check` runs
tshark on every well-formed file and compares field by field, so a generator bug or a tshark
surprise shows up as a named mismatch instead of as a confusing decoder test failure later.

Usage: python3 captures/synth_captures.py [--check] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import ipaddress
import math
import struct
import subprocess
import sys
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------- constants (with sources)

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0  # BSD loopback: 4-byte AF_ value in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_BSD12 = 12  # DLT_RAW on most BSDs, as it appears in some pcap files
LINKTYPE_RAW_BSD14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101  # raw IPv4 or IPv6, version from the first nibble
LINKTYPE_LOOP = 108  # OpenBSD loopback: AF_ value in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

AF_INET = 2
AF_INET6_BSD = 24  # NetBSD, OpenBSD, BSD/OS
AF_INET6_FREEBSD = 28  # FreeBSD, DragonFly BSD
AF_INET6_DARWIN = 30  # macOS, iOS

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_8021Q = 0x8100
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_8021AD = 0x88A8
ETHERTYPE_QINQ_OLD = 0x9100
ETHERTYPE_LLDP = 0x88CC

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ICMPV6 = 58
IPPROTO_DSTOPTS = 60

# TCP flag bits as tshark's 12-bit tcp.flags shows them (RFC 9293, RFC 3168, RFC 3540)
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS = (1 << i for i in range(9))
RESERVED_FLAG_BITS = 0xE00

# Linux SLL packet types (linux/if_packet.h) and ARPHRD types (linux/if_arp.h)
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST, PACKET_OUTGOING = range(5)
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE  # tun devices, no link-layer header

# pcapng block types (draft-ietf-opsawg-pcapng)
SHB, IDB, SPB, NRB, ISB, EPB = 0x0A0D0D0A, 1, 3, 4, 5, 6
DSB = 0x0000000A  # decryption secrets
CUSTOM_COPY, CUSTOM_NOCOPY = 0x00000BAD, 0x40000BAD
BYTE_ORDER_MAGIC = 0x1A2B3C4D

V4_CLIENT, V4_SERVER = "192.0.2.10", "198.51.100.20"
V4_OTHER = "192.0.2.77"
V6_CLIENT, V6_SERVER = "2001:db8:1::10", "2001:db8:2::20"
V6_ROUTER = "2001:db8:ff::1"
MAC_CLIENT = bytes.fromhex("020000000a01")
MAC_SERVER = bytes.fromhex("020000000b02")
SERVER_PORT = 43080
BASE_TS_NS = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


# ---------------------------------------------------------------- expectations


@dataclass
class Expect:
    """What tshark should show for one frame; None means 'tshark shows no such field'."""

    tcp: dict | None = None  # tcp.* fields of the first TCP header tshark dissects
    ip_src: str | None = None
    ip_dst: str | None = None
    ttl: int | None = None
    vlan_ids: list[int] = field(default_factory=list)  # vlan.id occurrences (802.1Q tags)
    qinq_ids: list[int] = field(default_factory=list)  # ieee8021ad.id occurrences
    note: str = ""


@dataclass
class Packet:
    """An IP-layer (or other network-layer) packet and what tshark should show for it."""

    data: bytes
    ethertype: int
    expect: Expect


@dataclass
class Frame:
    data: bytes  # the whole frame; a writer truncates it to the snap length
    ts_ns: int | Fraction
    expect: Expect
    iface: int = 0


# ---------------------------------------------------------------- checksums and TCP


def internet_checksum(data: bytes) -> int:
    # 2**16 == 1 (mod 0xffff): a big-endian integer mod 0xffff is the one's complement sum of
    # its 16-bit words.
    if len(data) % 2:
        data += b"\0"
    return ~(int.from_bytes(data, "big") % 0xFFFF) & 0xFFFF


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        return a.packed + b.packed + struct.pack("!BBH", 0, proto, length)
    return a.packed + b.packed + struct.pack("!I3xB", length, proto)


def tcp_options(*items: tuple) -> tuple[bytes, dict]:
    """Encode options given as tuples; return the bytes and the tshark fields they imply."""
    out = b""
    kinds: list[int] = []
    fields: dict = {}
    for item in items:
        name, args = item[0], item[1:]
        if name == "nop":
            out += b"\x01"
            kinds.append(1)
        elif name == "eol":
            out += b"\x00"
            kinds.append(0)
        elif name == "mss":
            out += struct.pack("!BBH", 2, 4, args[0])
            kinds.append(2)
            fields["mss"] = args[0]
        elif name == "ws":
            out += struct.pack("!BBB", 3, 3, args[0])
            kinds.append(3)
            fields["wscale"] = args[0]
        elif name == "sackok":
            out += b"\x04\x02"
            kinds.append(4)
        elif name == "sack":
            blocks = args[0]
            out += struct.pack("!BB", 5, 2 + 8 * len(blocks))
            out += b"".join(struct.pack("!II", le, re) for le, re in blocks)
            kinds.append(5)
            fields["sack"] = list(blocks)
        elif name == "ts":
            out += struct.pack("!BBII", 8, 10, args[0], args[1])
            kinds.append(8)
            fields["tsval"], fields["tsecr"] = args[0], args[1]
        elif name == "unknown":  # kind, payload
            out += struct.pack("!BB", args[0], 2 + len(args[1])) + args[1]
            kinds.append(args[0])
        elif name == "pad":  # bytes after an EOL: padding, not options
            out += args[0]
            # tshark 4.0 shows each zero padding byte as one more EOL; non-zero padding it flags
            # ("Non-zero header padding") and shows no kinds for
            if not any(args[0]):
                kinds.extend([0] * len(args[0]))
        else:
            raise ValueError(name)
    fields["kinds"] = kinds
    return out, fields


SYN_OPTIONS = (("mss", 1460), ("sackok",), ("ts", 1000, 0), ("nop",), ("ws", 7))
SYNACK_OPTIONS = (("mss", 1440), ("sackok",), ("ts", 5000, 1000), ("nop",), ("ws", 9))


def tcp_segment(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    *,
    window: int = 64240,
    options: tuple = (),
    payload: bytes = b"",
    urgent: int = 0,
    data_offset: int | None = None,
) -> tuple[bytes, dict]:
    opt_bytes, opt_fields = tcp_options(*options)
    seq, ack = seq & 0xFFFFFFFF, ack & 0xFFFFFFFF  # sequence space wraps (RFC 9293 3.4)
    if data_offset is None:
        assert len(opt_bytes) % 4 == 0, "pad options to 32 bits explicitly"
        data_offset = 5 + len(opt_bytes) // 4
    offset_byte = (data_offset << 4) | ((flags >> 8) & 0x0F)
    header = struct.pack(
        "!HHIIBBHHH", sport, dport, seq, ack, offset_byte, flags & 0xFF, window, 0, urgent
    )
    segment = header + opt_bytes + payload
    checksum = internet_checksum(pseudo_header(src, dst, IPPROTO_TCP, len(segment)) + segment)
    segment = segment[:16] + struct.pack("!H", checksum) + segment[18:]
    expect = {
        "srcport": sport,
        "dstport": dport,
        "seq_raw": seq,
        "ack_raw": ack if flags & ACK else None,
        "flags": flags,
        "window": window,
        "hdr_len": data_offset * 4,
        "len": len(payload),
        "urgent": urgent if flags & URG else None,
        **opt_fields,
    }
    return segment, expect


# ---------------------------------------------------------------- IP layer


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0x1234,
    df: bool = True,
    options: bytes = b"",
    frag_offset_bytes: int = 0,
    more_fragments: bool = False,
    ihl: int | None = None,
    total_length: int | None = None,
) -> bytes:
    assert len(options) % 4 == 0
    if ihl is None:
        ihl = 5 + len(options) // 4
    if total_length is None:
        total_length = 20 + len(options) + len(payload)
    flags_frag = (0x4000 if df else 0) | (0x2000 if more_fragments else 0) | frag_offset_bytes // 8
    header = struct.pack(
        "!BBHHHBBH4s4s",
        (4 << 4) | ihl,
        0,
        total_length,
        ident,
        flags_frag,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header += options
    checksum = internet_checksum(header)
    header = header[:10] + struct.pack("!H", checksum) + header[12:]
    return header + payload


def ipv6(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    ext: tuple[tuple[int, bytes], ...] = (),
    flow_label: int = 0,
) -> bytes:
    """ext: (header type, body) pairs in order; each gets the next header's type prepended."""
    chain = b""
    types = [t for t, _ in ext] + [proto]
    for i, (kind, body) in enumerate(ext):
        nxt = types[i + 1]
        if kind == IPPROTO_FRAGMENT:
            assert len(body) == 7
            chain += struct.pack("!B", nxt) + body
        else:
            assert (len(body) + 2) % 8 == 0, "extension headers are multiples of 8 bytes"
            chain += struct.pack("!BB", nxt, (len(body) + 2) // 8 - 1) + body
    first = types[0]
    header = struct.pack(
        "!IHBB16s16s",
        (6 << 28) | flow_label,
        len(chain) + len(payload),
        first,
        hop_limit,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + chain + payload


def fragment_body(offset_bytes: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BHI", 0, (offset_bytes // 8) << 3 | int(more), ident)


def padn(n: int) -> bytes:
    """An IPv6 option filling n bytes: Pad1 for 1, PadN otherwise (RFC 8200 4.2)."""
    return b"\x00" if n == 1 else struct.pack("!BB", 1, n - 2) + b"\0" * (n - 2)


def tcp_packet(
    src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, **kw
) -> Packet:
    """A TCP segment in IPv4 or IPv6 (by address), with IP-level keyword arguments split off."""
    ip_kw = {k: kw.pop(k) for k in list(kw) if k in ("ttl", "ident", "df", "options_ip", "ext")}
    segment, tcp_expect = tcp_segment(src, dst, sport, dport, seq, ack, flags, **kw)
    ttl = ip_kw.pop("ttl", 64)
    if ":" in src:
        data = ipv6(src, dst, IPPROTO_TCP, segment, hop_limit=ttl, ext=ip_kw.pop("ext", ()))
        ethertype = ETHERTYPE_IPV6
    else:
        options = ip_kw.pop("options_ip", b"")
        data = ipv4(src, dst, IPPROTO_TCP, segment, ttl=ttl, options=options, **ip_kw)
        ethertype = ETHERTYPE_IPV4
    return Packet(data, ethertype, Expect(tcp=tcp_expect, ip_src=src, ip_dst=dst, ttl=ttl))


def conversation(client: str, server: str, sport: int, isn_c: int, isn_s: int) -> list[Packet]:
    """A complete connection (handshake, request, response, FIN both ways) and a refused one."""
    c, s = isn_c, isn_s
    request, response = (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 300,
    )
    ts_c, ts_s = 1000 + sport, 5000 + sport
    opt_c = (("nop",), ("nop",), ("ts", ts_c, ts_s))
    opt_s = (("nop",), ("nop",), ("ts", ts_s, ts_c))
    cs = (client, server, sport, SERVER_PORT)
    sc = (server, client, SERVER_PORT, sport)
    syn_opts = (("mss", 1460), ("sackok",), ("ts", ts_c, 0), ("nop",), ("ws", 7))
    synack_opts = (("mss", 1440), ("sackok",), ("ts", ts_s, ts_c), ("nop",), ("ws", 9))
    packets = [
        tcp_packet(*cs, c, 0, SYN, window=64240, options=syn_opts),
        tcp_packet(*sc, s, c + 1, SYN | ACK, window=65160, options=synack_opts, ttl=57),
        tcp_packet(*cs, c + 1, s + 1, ACK, window=502, options=opt_c),
        tcp_packet(*cs, c + 1, s + 1, PSH | ACK, window=502, options=opt_c, payload=request),
        tcp_packet(*sc, s + 1, c + 1 + len(request), ACK, window=509, options=opt_s, ttl=57),
        tcp_packet(
            *sc,
            s + 1,
            c + 1 + len(request),
            PSH | ACK,
            window=509,
            options=opt_s,
            payload=response,
            ttl=57,
        ),
        tcp_packet(
            *cs, c + 1 + len(request), s + 1 + len(response), ACK, window=501, options=opt_c
        ),
        tcp_packet(
            *sc,
            s + 1 + len(response),
            c + 1 + len(request),
            FIN | ACK,
            window=509,
            options=opt_s,
            ttl=57,
        ),
        tcp_packet(
            *cs, c + 1 + len(request), s + 2 + len(response), FIN | ACK, window=501, options=opt_c
        ),
        tcp_packet(
            *sc, s + 2 + len(response), c + 2 + len(request), ACK, window=509, options=opt_s, ttl=57
        ),
        # a refused connection: SYN answered by RST/ACK
        tcp_packet(client, server, sport + 1, SERVER_PORT + 1, c + 7777, 0, SYN, options=syn_opts),
        tcp_packet(
            server, client, SERVER_PORT + 1, sport + 1, 0, c + 7778, RST | ACK, window=0, ttl=57
        ),
    ]
    return packets


def both_conversations(base_port: int) -> list[Packet]:
    return conversation(V4_CLIENT, V4_SERVER, base_port, 0x10000000, 0x90000000) + conversation(
        V6_CLIENT, V6_SERVER, base_port + 10, 0xFFFFFF00, 0x00000100
    )


# ---------------------------------------------------------------- other network protocols


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> Packet:
    length = 8 + len(payload)
    body = struct.pack("!HHHH", sport, dport, length, 0) + payload
    proto = IPPROTO_UDP
    checksum = internet_checksum(pseudo_header(src, dst, proto, length) + body) or 0xFFFF
    body = body[:6] + struct.pack("!H", checksum) + body[8:]
    if ":" in src:
        return Packet(ipv6(src, dst, proto, body), ETHERTYPE_IPV6, Expect(ip_src=src, ip_dst=dst))
    return Packet(ipv4(src, dst, proto, body), ETHERTYPE_IPV4, Expect(ip_src=src, ip_dst=dst))


def icmp_echo(src: str, dst: str) -> Packet:
    body = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"ping" * 8
    body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    return Packet(
        ipv4(src, dst, IPPROTO_ICMP, body), ETHERTYPE_IPV4, Expect(ip_src=src, ip_dst=dst)
    )


def icmp_unreachable_quoting(router: str, quoted: Packet, quote_len: int) -> Packet:
    """ICMP destination unreachable (or ICMPv6) quoting the start of a TCP packet.

    tshark dissects the quoted TCP header, so its tcp.* fields show the quoted values.
    """
    original = quoted.data[:quote_len]
    expect_tcp = dict(quoted.expect.tcp or {})
    src, dst = router, quoted.expect.ip_src
    if quoted.ethertype == ETHERTYPE_IPV4:
        body = (
            struct.pack("!BBHI", 3, 13, 0, 0) + original
        )  # communication administratively prohibited
        body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
        data = ipv4(src, dst, IPPROTO_ICMP, body, ttl=250)
        ethertype = ETHERTYPE_IPV4
    else:
        body = struct.pack("!BBHI", 1, 3, 0, 0) + original  # address unreachable
        checksum = internet_checksum(pseudo_header(src, dst, IPPROTO_ICMPV6, len(body)) + body)
        body = body[:2] + struct.pack("!H", checksum) + body[4:]
        data = ipv6(src, dst, IPPROTO_ICMPV6, body, hop_limit=250)
        ethertype = ETHERTYPE_IPV6
    ip_header_len = 20 if ethertype == ETHERTYPE_IPV4 else 40
    tcp_bytes = quote_len - ip_header_len
    if tcp_bytes < 20:
        # only ports and sequence number are quoted: tshark shows those and nothing more
        expect_tcp = {k: expect_tcp[k] for k in ("srcport", "dstport", "seq_raw")}
    else:
        expect_tcp["len"] = None  # the quoted IP length claims payload that is not there
    return Packet(data, ethertype, Expect(tcp=expect_tcp, ip_src=src, ip_dst=dst, note="icmp"))


def arp(op: int, sender_ip: str, target_ip: str) -> Packet:
    body = struct.pack("!HHBBH", 1, ETHERTYPE_IPV4, 6, 4, op)
    body += MAC_CLIENT + ipaddress.IPv4Address(sender_ip).packed
    body += (MAC_SERVER if op == 2 else b"\0" * 6) + ipaddress.IPv4Address(target_ip).packed
    return Packet(body, ETHERTYPE_ARP, Expect())


# ---------------------------------------------------------------- link layers


def ethernet(
    packet: Packet,
    *,
    tags: tuple[tuple[int, int, int, int], ...] = (),
    dst: bytes = MAC_SERVER,
    src: bytes = MAC_CLIENT,
    pad_to: int = 60,
    pad_byte: int = 0,
) -> tuple[bytes, Expect]:
    """tags: (tpid, pcp, dei, vid), outermost first. Short frames are padded like a NIC does."""
    header = dst + src
    expect = replace(packet.expect, vlan_ids=[], qinq_ids=[])
    for tpid, pcp, dei, vid in tags:
        header += struct.pack("!HH", tpid, (pcp << 13) | (dei << 12) | vid)
        (expect.qinq_ids if tpid == ETHERTYPE_8021AD else expect.vlan_ids).append(vid)
    frame = header + struct.pack("!H", packet.ethertype) + packet.data
    if len(frame) < pad_to:
        frame += bytes([pad_byte]) * (pad_to - len(frame))
    return frame, expect


def null_header(packet: Packet, af6: int, order: str) -> bytes:
    af = AF_INET if packet.ethertype == ETHERTYPE_IPV4 else af6
    return struct.pack(order + "I", af) + packet.data


def sll_header(packet: Packet, pkttype: int, hatype: int, addr: bytes) -> bytes:
    return (
        struct.pack("!HHH", pkttype, hatype, len(addr))
        + addr.ljust(8, b"\0")
        + struct.pack("!H", packet.ethertype)
        + packet.data
    )


def sll2_header(packet: Packet, ifindex: int, pkttype: int, hatype: int, addr: bytes) -> bytes:
    return (
        struct.pack("!HHIHBB", packet.ethertype, 0, ifindex, hatype, pkttype, len(addr))
        + addr.ljust(8, b"\0")
        + packet.data
    )


# ---------------------------------------------------------------- file writers


def timestamps(n: int, start_ns: int = BASE_TS_NS, step_ns: int = 1_000_000) -> list[int]:
    return [start_ns + i * step_ns for i in range(n)]


def frames_from(packets: list[tuple[bytes, Expect]], step_ns: int = 1_001_000) -> list[Frame]:
    return [
        Frame(data, ts, expect)
        for (data, expect), ts in zip(
            packets, timestamps(len(packets), step_ns=step_ns), strict=True
        )
    ]


def pcap_bytes(
    frames: list[Frame],
    linktype: int,
    *,
    order: str = "<",
    nanos: bool = False,
    snaplen: int = 262144,
) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for frame in frames:
        ts = int(frame.ts_ns)
        sec, frac = divmod(ts, 10**9)
        if not nanos:
            assert frac % 1000 == 0, "microsecond files need microsecond timestamps"
            frac //= 1000
        cap = frame.data[:snaplen]
        out.append(struct.pack(order + "IIII", sec, frac, len(cap), len(frame.data)) + cap)
    return b"".join(out)


def pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def block(order: str, block_type: int, body: bytes) -> bytes:
    body = pad4(body)
    total = 12 + len(body)
    return struct.pack(order + "II", block_type, total) + body + struct.pack(order + "I", total)


def options(order: str, items: list[tuple[int, bytes]]) -> bytes:
    if not items:
        return b""
    out = b"".join(struct.pack(order + "HH", code, len(v)) + pad4(v) for code, v in items)
    return out + struct.pack(order + "HH", 0, 0)  # opt_endofopt


def shb(order: str, application: str = "tracer synth_captures.py") -> bytes:
    body = struct.pack(order + "IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    body += options(order, [(2, b"synthetic"), (3, b"none"), (4, application.encode())])
    return block(order, SHB, body)


@dataclass
class Interface:
    linktype: int
    snaplen: int = 262144
    tsresol: int | None = None  # raw if_tsresol byte; None = option absent (10^-6)
    name: str = ""

    def units_per_second(self) -> int:
        if self.tsresol is None:
            return 10**6
        if self.tsresol & 0x80:
            return 2 ** (self.tsresol & 0x7F)
        return 10**self.tsresol


def idb(order: str, iface: Interface) -> bytes:
    opts: list[tuple[int, bytes]] = []
    if iface.name:
        opts.append((2, iface.name.encode()))
    if iface.tsresol is not None:
        opts.append((9, bytes([iface.tsresol])))
    body = struct.pack(order + "HHI", iface.linktype, 0, iface.snaplen) + options(order, opts)
    return block(order, IDB, body)


def ts_units(frame: Frame, iface: Interface) -> int:
    """The frame's time in the interface's units; exact (the generator picks exact times)."""
    units = Fraction(frame.ts_ns) * iface.units_per_second() / 10**9
    assert units.denominator == 1, (frame.ts_ns, iface)
    return int(units)


def epb(order: str, frame: Frame, iface: Interface, opts: list[tuple[int, bytes]] = ()) -> bytes:
    ts = ts_units(frame, iface)
    cap = frame.data[: iface.snaplen]
    body = struct.pack(
        order + "IIIII", frame.iface, ts >> 32, ts & 0xFFFFFFFF, len(cap), len(frame.data)
    )
    return block(order, EPB, body + pad4(cap) + options(order, list(opts)))


def spb(order: str, frame: Frame, iface: Interface) -> bytes:
    cap = frame.data[: iface.snaplen]  # an SPB's captured length is min(snaplen, original)
    return block(order, SPB, struct.pack(order + "I", len(frame.data)) + pad4(cap))


def pcapng_section(order: str, interfaces: list[Interface], frames: list[Frame]) -> bytes:
    out = [shb(order)] + [idb(order, i) for i in interfaces]
    out += [epb(order, f, interfaces[f.iface]) for f in frames]
    return b"".join(out)


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


# ---------------------------------------------------------------- the files


@dataclass
class Capture:
    name: str
    data: bytes
    frames: list[Frame]  # in file order, as tshark numbers them
    interfaces: list[Interface] = field(default_factory=list)
    description: str = ""
    snaplen: int = 262144  # classic pcap only; pcapng has one per interface
    tshark_prefs: tuple[str, ...] = ()


def ethernet_frames(packets: list[Packet], **kw) -> list[tuple[bytes, Expect]]:
    return [ethernet(p, **kw) for p in packets]


def plain(packets: list[Packet], wrap) -> list[tuple[bytes, Expect]]:
    return [(wrap(p), p.expect) for p in packets]


def make_null(order: str, name: str, nanos: bool) -> Capture:
    packets = both_conversations(50100 if order == "<" else 50200)
    v6 = [p for p in packets if p.ethertype == ETHERTYPE_IPV6]
    # spread the three BSD AF_INET6 values over the IPv6 packets
    af_for = {
        id(p): (AF_INET6_BSD, AF_INET6_FREEBSD, AF_INET6_DARWIN)[i % 3] for i, p in enumerate(v6)
    }
    pairs = [(null_header(p, af_for.get(id(p), AF_INET), order), p.expect) for p in packets]
    frames = frames_from(pairs, step_ns=1_000_000 if not nanos else 1_000_001)
    return Capture(
        name,
        pcap_bytes(frames, LINKTYPE_NULL, order=order, nanos=nanos),
        frames,
        description=f"NULL/BSD loopback, {'big' if order == '>' else 'little'}-endian file, AF "
        "in the writer's byte order (2; 24/28/30 for IPv6)",
    )


def make_loop() -> Capture:
    packets = both_conversations(50300)
    pairs = []
    for i, p in enumerate(packets):
        af6 = AF_INET6_BSD if i % 2 else AF_INET6_DARWIN
        pairs.append((null_header(p, af6, ">"), p.expect))  # LOOP: always network order
    frames = frames_from(pairs, step_ns=999_999)
    return Capture(
        "synth-loop.pcap",
        pcap_bytes(frames, LINKTYPE_LOOP, order="<", nanos=True),
        frames,
        description="LOOP (108): AF in network byte order inside a little-endian file",
    )


def make_raw(
    name: str,
    linktype: int,
    order: str,
    nanos: bool,
    base_port: int,
    families: tuple[int, ...] = (4, 6),
    snaplen: int = 262144,
) -> Capture:
    packets = [
        p
        for p in both_conversations(base_port)
        if (4 if p.ethertype == ETHERTYPE_IPV4 else 6) in families
    ]
    frames = frames_from(
        plain(packets, lambda p: p.data), step_ns=2_000_000 if not nanos else 2_000_003
    )
    return Capture(
        name, pcap_bytes(frames, linktype, order=order, nanos=nanos, snaplen=snaplen), frames
    )


def make_snap64() -> Capture:
    """Big-endian, microseconds, raw IP, snaplen 64: payloads cut, headers whole."""
    packets = []
    c, s = 0x20000000, 0x30000000
    big = b"B" * 1400
    for i in range(4):
        packets.append(
            tcp_packet(
                V4_SERVER,
                V4_CLIENT,
                SERVER_PORT,
                50400,
                s + i * 1400,
                c,
                ACK | PSH,
                options=(("nop",), ("nop",), ("ts", 900 + i, 800)),
                payload=big,
            )
        )
        packets.append(
            tcp_packet(
                V4_CLIENT,
                V4_SERVER,
                50400,
                SERVER_PORT,
                c,
                s + (i + 1) * 1400,
                ACK,
                options=(("nop",), ("nop",), ("ts", 801 + i, 900 + i)),
            )
        )
    # IPv6 + TCP without options is exactly 60 bytes: the header fits, the payload does not
    for i in range(3):
        packets.append(
            tcp_packet(
                V6_SERVER, V6_CLIENT, SERVER_PORT, 50401, s + i * 1000, c, ACK, payload=b"6" * 1000
            )
        )
    packets.append(tcp_packet(V6_CLIENT, V6_SERVER, 50401, SERVER_PORT, c, s + 3000, RST | ACK))
    frames = frames_from(plain(packets, lambda p: p.data), step_ns=3_000_000)
    data = pcap_bytes(frames, LINKTYPE_RAW, order=">", nanos=False, snaplen=64)
    return Capture(
        "synth-raw-be-usec-snap64.pcap",
        data,
        frames,
        snaplen=64,
        description="raw IP, big-endian, microseconds, snaplen 64",
    )


def make_sll() -> Capture:
    packets = both_conversations(50500)
    pairs = []
    kinds = [
        (PACKET_OUTGOING, ARPHRD_ETHER, MAC_CLIENT),
        (PACKET_HOST, ARPHRD_ETHER, MAC_SERVER),
        (PACKET_HOST, ARPHRD_LOOPBACK, b"\0" * 6),
        (PACKET_OTHERHOST, ARPHRD_NONE, b""),
    ]
    for i, p in enumerate(packets):
        pkttype, hatype, addr = kinds[i % len(kinds)]
        pairs.append((sll_header(p, pkttype, hatype, addr), p.expect))
    a = arp(1, V4_CLIENT, V4_OTHER)
    pairs.insert(3, (sll_header(a, PACKET_BROADCAST, ARPHRD_ETHER, MAC_CLIENT), a.expect))
    frames = frames_from(pairs)
    return Capture("synth-sll.pcap", pcap_bytes(frames, LINKTYPE_LINUX_SLL, order="<"), frames)


def make_sll2() -> Capture:
    packets = both_conversations(50600)
    pairs = []
    for i, p in enumerate(packets):
        pkttype = (PACKET_OUTGOING, PACKET_HOST)[i % 2]
        hatype = ARPHRD_ETHER if i % 3 else ARPHRD_NONE
        addr = MAC_CLIENT if hatype == ARPHRD_ETHER else b""
        pairs.append((sll2_header(p, 2 + i % 3, pkttype, hatype, addr), p.expect))
    u = udp_packet(V4_CLIENT, V4_SERVER, 50699, SERVER_PORT, b"udp payload")
    pairs.insert(5, (sll2_header(u, 7, PACKET_HOST, ARPHRD_ETHER, MAC_SERVER), u.expect))
    frames = frames_from(pairs, step_ns=1_000_007)
    return Capture(
        "synth-sll2.pcap", pcap_bytes(frames, LINKTYPE_LINUX_SLL2, order=">", nanos=True), frames
    )


def make_vlan() -> Capture:
    packets = both_conversations(50700)
    pairs = []
    for i, p in enumerate(packets):
        if i % 6 == 5:
            pairs.append(ethernet(p))  # untagged frames on the same link
        elif i % 6 == 4:
            pairs.append(ethernet(p, tags=((ETHERTYPE_8021Q, 5, 0, 0),)))  # priority-tagged, VID 0
        else:
            vid = (1, 42, 4094, 42)[i % 4]
            pairs.append(ethernet(p, tags=((ETHERTYPE_8021Q, i % 8, i % 2, vid),)))
    a = arp(1, V4_CLIENT, V4_SERVER)
    pairs.insert(0, ethernet(a, dst=b"\xff" * 6, tags=((ETHERTYPE_8021Q, 0, 0, 42),)))
    frames = frames_from(pairs)
    return Capture(
        "synth-vlan.pcap",
        pcap_bytes(frames, LINKTYPE_ETHERNET, nanos=True),
        frames,
        description="802.1Q tags (PCP/DEI set, VID 0/1/42/4094) and untagged frames",
    )


def make_qinq() -> Capture:
    packets = both_conversations(50800)
    stacks = [
        ((ETHERTYPE_8021AD, 3, 0, 100), (ETHERTYPE_8021Q, 0, 0, 7)),
        ((ETHERTYPE_8021AD, 0, 1, 4000), (ETHERTYPE_8021Q, 7, 0, 4001)),
        ((ETHERTYPE_8021Q, 0, 0, 300), (ETHERTYPE_8021Q, 0, 0, 301)),  # double 802.1Q
        ((ETHERTYPE_QINQ_OLD, 0, 0, 200), (ETHERTYPE_8021Q, 0, 0, 20)),  # pre-standard outer
    ]
    pairs = []
    for i, p in enumerate(packets):
        pairs.append(ethernet(p, tags=stacks[i % len(stacks)]))
    frames = frames_from(pairs)
    return Capture(
        "synth-qinq.pcap",
        pcap_bytes(frames, LINKTYPE_ETHERNET, order=">"),
        frames,
        description="802.1ad+802.1Q, double 802.1Q, 0x9100+802.1Q stacks",
    )


def make_ipv4_options() -> Capture:
    # record route with one of two slots filled (pointer 8), then a NOP
    rr = bytes([7, 11, 8]) + ipaddress.IPv4Address("198.51.100.1").packed + b"\0" * 4 + b"\x01"
    router_alert = bytes([148, 4, 0, 0])
    timestamp = bytes([68, 12, 9, 0]) + struct.pack("!II", 123456, 0)  # ts only, 1 of 2 used
    longest = rr + router_alert + timestamp + b"\x01" * 11 + b"\x00"
    assert len(longest) == 40
    variants = [
        rr,  # record route + NOP
        router_alert,  # IHL 6
        b"\x01\x01\x01\x00",  # NOPs then EOL
        timestamp,
        longest,  # IHL 15: 40 option bytes
    ]
    packets = []
    c, s = 0x40000000, 0x50000000
    for i, opts in enumerate(variants):
        assert len(opts) % 4 == 0
        packets.append(
            tcp_packet(
                V4_CLIENT,
                V4_SERVER,
                50900 + i,
                SERVER_PORT,
                c + i,
                0,
                SYN,
                options=SYN_OPTIONS + (("nop",),) * 4,
                options_ip=opts,
                ident=0x100 + i,
                df=False,
            )
        )
        packets.append(
            tcp_packet(
                V4_SERVER,
                V4_CLIENT,
                SERVER_PORT,
                50900 + i,
                s + i,
                c + i + 1,
                SYN | ACK,
                options=SYNACK_OPTIONS + (("eol",), ("pad", b"\0\0\0")),
                options_ip=opts,
                ttl=1,
                ident=0x200 + i,
            )
        )
    frames = frames_from(ethernet_frames(packets))
    return Capture(
        "synth-ipv4-options.pcap",
        pcap_bytes(frames, LINKTYPE_ETHERNET),
        frames,
        description="IPv4 options (record route, router alert, timestamp, NOP/EOL), IHL 6..15",
    )


def make_ipv6_exthdrs() -> Capture:
    hbh = (IPPROTO_HOPOPTS, padn(6))  # 8 bytes
    hbh_ra = (IPPROTO_HOPOPTS, bytes([5, 2, 0, 0]) + padn(2))  # router alert + PadN
    # segment routing header (type 4), one segment, segments left 0
    srh = (IPPROTO_ROUTING, bytes([4, 0, 0, 0, 0, 0]) + ipaddress.IPv6Address(V6_ROUTER).packed)
    dst_opts = (
        IPPROTO_DSTOPTS,
        bytes([0x1E, 4]) + b"\xaa\xbb\xcc\xdd" + padn(8),
    )  # unknown opt 0x1e
    chains = [
        (hbh,),
        (hbh_ra, dst_opts),
        (hbh, srh, dst_opts),
        (dst_opts,),
        (srh,),
        (hbh, dst_opts, srh, dst_opts),
    ]
    packets = []
    c, s = 0x60000000, 0x70000000
    for i, chain in enumerate(chains):
        packets.append(
            tcp_packet(
                V6_CLIENT,
                V6_SERVER,
                51000 + i,
                SERVER_PORT,
                c + i,
                0,
                SYN,
                options=SYN_OPTIONS,
                ext=chain,
            )
        )
        packets.append(
            tcp_packet(
                V6_SERVER,
                V6_CLIENT,
                SERVER_PORT,
                51000 + i,
                s + i,
                c + i + 1,
                SYN | ACK,
                options=SYNACK_OPTIONS,
                ext=chain,
                ttl=60,
            )
        )
        packets.append(
            tcp_packet(
                V6_CLIENT,
                V6_SERVER,
                51000 + i,
                SERVER_PORT,
                c + i + 1,
                s + i + 1,
                ACK | PSH,
                payload=b"x" * (10 + i),
                ext=chain,
            )
        )
    frames = frames_from(ethernet_frames(packets))
    return Capture(
        "synth-ipv6-exthdrs.pcap",
        pcap_bytes(frames, LINKTYPE_ETHERNET, nanos=True),
        frames,
        description="IPv6 hop-by-hop, routing (SRH), destination options, chained",
    )


def make_fragments() -> tuple[Capture, Capture]:
    """IPv4/IPv6 fragments: first fragments carry a TCP header, later ones do not.

    Two views: tshark's default reassembles fragments and dissects TCP in the frame that
    completes a datagram (a lone first fragment shows no TCP); with defragmentation off it
    dissects TCP in every first fragment. The check runs with it off, like a per-packet
    decoder; the README notes the difference.
    """
    packets: list[Packet] = []
    c, s = 0x0A000000, 0x0B000000
    # IPv4: a lone first fragment (offset 0, MF) with TCP, a lone later fragment
    seg, tcp_e = tcp_segment(
        V4_CLIENT, V4_SERVER, 51100, SERVER_PORT, c, s, ACK | PSH, payload=b"F" * 1000, window=1000
    )
    first = seg[:504]  # fragment payloads are multiples of 8 bytes except the last
    packets.append(
        Packet(
            ipv4(
                V4_CLIENT,
                V4_SERVER,
                IPPROTO_TCP,
                first,
                ident=0xAAAA,
                df=False,
                more_fragments=True,
            ),
            ETHERTYPE_IPV4,
            Expect(
                tcp={**tcp_e, "len": None},
                ip_src=V4_CLIENT,
                ip_dst=V4_SERVER,
                ttl=64,
                note="first fragment",
            ),
        )
    )
    packets.append(
        Packet(
            ipv4(
                V4_CLIENT,
                V4_SERVER,
                IPPROTO_TCP,
                b"G" * 96,
                ident=0xBBBB,
                df=False,
                frag_offset_bytes=1480,
                more_fragments=True,
            ),
            ETHERTYPE_IPV4,
            Expect(ip_src=V4_CLIENT, ip_dst=V4_SERVER, ttl=64, note="non-first fragment"),
        )
    )
    packets.append(
        Packet(
            ipv4(
                V4_CLIENT,
                V4_SERVER,
                IPPROTO_TCP,
                b"H" * 40,
                ident=0xBBBC,
                df=False,
                frag_offset_bytes=2960,
                more_fragments=False,
            ),
            ETHERTYPE_IPV4,
            Expect(ip_src=V4_CLIENT, ip_dst=V4_SERVER, ttl=64, note="last fragment"),
        )
    )
    # IPv6: first fragment (offset 0, M=1) carrying TCP, a non-first fragment, an atomic one
    seg6, tcp6_e = tcp_segment(
        V6_CLIENT, V6_SERVER, 51101, SERVER_PORT, c + 5, s + 5, ACK | PSH, payload=b"S" * 1200
    )
    packets.append(
        Packet(
            ipv6(
                V6_CLIENT,
                V6_SERVER,
                IPPROTO_TCP,
                seg6[:800],
                ext=((IPPROTO_FRAGMENT, fragment_body(0, True, 0xC0FFEE)),),
            ),
            ETHERTYPE_IPV6,
            Expect(
                tcp={**tcp6_e, "len": None},
                ip_src=V6_CLIENT,
                ip_dst=V6_SERVER,
                ttl=64,
                note="first fragment",
            ),
        )
    )
    packets.append(
        Packet(
            ipv6(
                V6_CLIENT,
                V6_SERVER,
                IPPROTO_TCP,
                b"T" * 400,
                ext=((IPPROTO_FRAGMENT, fragment_body(1600, False, 0xBEEF)),),
            ),
            ETHERTYPE_IPV6,
            Expect(ip_src=V6_CLIENT, ip_dst=V6_SERVER, ttl=64, note="non-first fragment"),
        )
    )
    packets.append(
        Packet(
            ipv6(
                V6_CLIENT,
                V6_SERVER,
                IPPROTO_TCP,
                b"U" * 64,
                ext=(
                    (IPPROTO_HOPOPTS, padn(6)),
                    (IPPROTO_FRAGMENT, fragment_body(8, True, 0xBEF0)),
                ),
            ),
            ETHERTYPE_IPV6,
            Expect(
                ip_src=V6_CLIENT,
                ip_dst=V6_SERVER,
                ttl=64,
                note="non-first fragment after hop-by-hop",
            ),
        )
    )
    atomic = tcp_packet(
        V6_CLIENT,
        V6_SERVER,
        51102,
        SERVER_PORT,
        c + 9,
        s + 9,
        ACK,
        ext=((IPPROTO_FRAGMENT, fragment_body(0, False, 0xA70)),),
    )
    atomic.expect.note = "atomic fragment (RFC 6946): offset 0, M=0, a whole datagram"
    packets.append(atomic)
    # plain TCP around them, so a decoder's fragment handling cannot hide the rest
    packets.insert(
        0, tcp_packet(V4_CLIENT, V4_SERVER, 51103, SERVER_PORT, c + 20, 0, SYN, options=SYN_OPTIONS)
    )
    packets.append(tcp_packet(V6_SERVER, V6_CLIENT, SERVER_PORT, 51103, s + 20, c + 21, RST | ACK))
    frames = frames_from(ethernet_frames(packets))
    data = pcap_bytes(frames, LINKTYPE_ETHERNET)
    off = ("-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE")
    view = Capture(
        "synth-fragments.pcap",
        data,
        frames,
        tshark_prefs=off,
        description="IPv4/IPv6 first, non-first and atomic fragments",
    )
    # tshark's default view of the same file, for the README: lone first fragments show no TCP
    default_frames = []
    for f in frames:
        e = f.expect
        if "first fragment" in e.note and "non-first" not in e.note:
            e = replace(e, tcp=None)
        default_frames.append(replace(f, expect=e))
    return view, Capture("synth-fragments.pcap", data, default_frames)


def make_non_tcp() -> Capture:
    pairs: list[tuple[bytes, Expect]] = []
    syn4 = tcp_packet(
        V4_CLIENT, V4_SERVER, 51200, SERVER_PORT, 0x11111111, 0, SYN, options=SYN_OPTIONS
    )
    syn6 = tcp_packet(
        V6_CLIENT, V6_SERVER, 51201, SERVER_PORT, 0x22222222, 0, SYN, options=SYN_OPTIONS
    )
    a_req, a_rep = arp(1, V4_CLIENT, V4_SERVER), arp(2, V4_SERVER, V4_CLIENT)
    pairs.append(ethernet(a_req, dst=b"\xff" * 6))
    pairs.append(ethernet(a_rep, pad_byte=0xEE))  # nonzero padding bytes after ARP
    pairs.append(ethernet(syn4))
    pairs.append(ethernet(icmp_unreachable_quoting("192.0.2.1", syn4, 28)))  # 8 TCP bytes
    pairs.append(ethernet(icmp_unreachable_quoting("192.0.2.1", syn4, 20 + 40)))  # whole header
    pairs.append(ethernet(syn6))
    pairs.append(ethernet(icmp_unreachable_quoting(V6_ROUTER, syn6, 40 + 40)))
    pairs.append(ethernet(udp_packet(V4_CLIENT, V4_SERVER, 51202, SERVER_PORT, b"hello udp")))
    pairs.append(ethernet(udp_packet(V6_CLIENT, V6_SERVER, 51203, SERVER_PORT, b"hello udp6")))
    pairs.append(ethernet(icmp_echo(V4_CLIENT, V4_SERVER)))
    lldp = Packet(
        bytes.fromhex("020704" + "020000000a01" + "0403053031" + "0602" + "0078" + "0000"),
        ETHERTYPE_LLDP,
        Expect(),
    )
    pairs.append(ethernet(lldp, dst=bytes.fromhex("0180c200000e")))
    # an 802.3 frame: the type field is a length (< 1536), followed by LLC (STP BPDU)
    bpdu = bytes.fromhex("424203") + b"\x00" * 35
    frame_8023 = bytes.fromhex("0180c2000000") + MAC_CLIENT + struct.pack("!H", len(bpdu)) + bpdu
    pairs.append((frame_8023.ljust(60, b"\0"), Expect()))
    # a short TCP ACK padded to 60 bytes with nonzero trailer: length must come from IP
    ack4 = tcp_packet(V4_CLIENT, V4_SERVER, 51200, SERVER_PORT, 0x11111112, 0x33333334, ACK)
    pairs.append(ethernet(ack4, pad_byte=0x5A))
    frames = frames_from(pairs)
    return Capture(
        "synth-non-tcp.pcap",
        pcap_bytes(frames, LINKTYPE_ETHERNET),
        frames,
        description="ARP, UDP, ICMP echo, ICMP/ICMPv6 unreachable quoting TCP, LLDP, "
        "802.3/LLC, padded frames",
    )


def make_tcp_options() -> Capture:
    c, s = 0xC0000000, 0xD0000000
    a, b = V4_CLIENT, V4_SERVER
    a6, b6 = V6_CLIENT, V6_SERVER
    p = 51300
    packets = [
        # every SYN option, Linux order
        tcp_packet(a, b, p, SERVER_PORT, c, 0, SYN, options=SYN_OPTIONS),
        # MSS only; window scale 14 (the maximum) and 15 (over it: tshark shows it uncapped)
        tcp_packet(
            b,
            a,
            SERVER_PORT,
            p,
            s,
            c + 1,
            SYN | ACK,
            options=(("mss", 536), ("nop",), ("ws", 14), ("sackok",), ("nop",), ("nop",)),
        ),
        tcp_packet(
            a,
            b,
            p + 1,
            SERVER_PORT,
            c + 100,
            0,
            SYN,
            options=(("ws", 15), ("nop",), ("mss", 9000), ("eol",), ("pad", b"\0" * 3)),
        ),
        # SACK with 1, 2, 3 blocks (with timestamps, as Linux sends them) and 4 blocks (alone)
        tcp_packet(
            a,
            b,
            p,
            SERVER_PORT,
            c + 1,
            s + 1,
            ACK,
            options=(
                ("nop",),
                ("nop",),
                ("ts", 10, 20),
                ("nop",),
                ("nop",),
                ("sack", [(s + 1001, s + 2001)]),
            ),
        ),
        tcp_packet(
            a,
            b,
            p,
            SERVER_PORT,
            c + 1,
            s + 1,
            ACK,
            options=(
                ("nop",),
                ("nop",),
                ("ts", 11, 21),
                ("nop",),
                ("nop",),
                ("sack", [(s + 3001, s + 4001), (s + 1001, s + 2001)]),
            ),
        ),
        tcp_packet(
            a,
            b,
            p,
            SERVER_PORT,
            c + 1,
            s + 1,
            ACK,
            options=(
                ("nop",),
                ("nop",),
                ("ts", 12, 22),
                ("nop",),
                ("nop",),
                ("sack", [(s + 5001, s + 6001), (s + 3001, s + 4001), (s + 1001, s + 2001)]),
            ),
        ),
        tcp_packet(
            a,
            b,
            p,
            SERVER_PORT,
            c + 1,
            s + 1,
            ACK,
            options=(
                ("nop",),
                ("nop",),
                (
                    "sack",
                    [
                        (s + 7001, s + 8001),
                        (s + 5001, s + 6001),
                        (s + 3001, s + 4001),
                        (s + 1001, s + 2001),
                    ],
                ),
            ),
        ),
        # SACK edges across the 2**32 wrap
        tcp_packet(
            a6,
            b6,
            p + 2,
            SERVER_PORT,
            0xFFFFFF00,
            0xFFFFFFF0,
            ACK,
            options=(("nop",), ("nop",), ("sack", [(0xFFFFFFF8, 0x00000010)])),
        ),
        # timestamps alone, then NOP/EOL padding with garbage after EOL
        tcp_packet(
            a6,
            b6,
            p + 2,
            SERVER_PORT,
            0xFFFFFF00,
            0xFFFFFFF0,
            ACK,
            options=(("ts", 0xFFFFFFFF, 0x80000000), ("nop",), ("nop",)),
        ),
        tcp_packet(
            a6,
            b6,
            p + 2,
            SERVER_PORT,
            0xFFFFFF00,
            0xFFFFFFF0,
            ACK,
            options=(("nop",), ("eol",), ("pad", b"\xde\xad")),
        ),
        # unknown and experimental kinds between known ones
        tcp_packet(
            a6,
            b6,
            p + 2,
            SERVER_PORT,
            0xFFFFFF00,
            0xFFFFFFF0,
            ACK,
            options=(
                ("unknown", 99, b"\x01\x02\x03\x04"),
                ("nop",),
                ("nop",),
                ("ts", 1, 2),
                ("nop",),
                ("nop",),
            ),
        ),
        tcp_packet(
            a,
            b,
            p + 3,
            SERVER_PORT,
            c + 200,
            0,
            SYN,
            options=(
                ("mss", 1460),
                ("unknown", 254, b"\xf9\x89"),
                ("sackok",),
                ("unknown", 34, b""),
                ("nop",),
                ("nop",),
                ("nop",),
                ("nop",),
            ),
        ),
        # all 9 flag bits, urgent pointer, window 0
        tcp_packet(
            a, b, p, SERVER_PORT, c + 1, s + 1, 0x1FF, window=0, urgent=0xBEEF, payload=b"!"
        ),
        # all 9 flag bits and the 3 reserved bits
        tcp_packet(
            a6,
            b6,
            p + 2,
            SERVER_PORT,
            0xFFFFFF00,
            0xFFFFFFF0,
            0x1FF | RESERVED_FLAG_BITS,
            window=65535,
            urgent=1,
            payload=b"?",
        ),
        # URG with data, ECE+CWR on a SYN (ECN setup), NS alone
        tcp_packet(
            a, b, p, SERVER_PORT, c + 2, s + 1, ACK | URG | PSH, urgent=3, payload=b"abcdef"
        ),
        tcp_packet(a, b, p + 4, SERVER_PORT, c + 300, 0, SYN | ECE | CWR, options=SYN_OPTIONS),
        tcp_packet(
            b, a, SERVER_PORT, p + 4, s + 300, c + 301, SYN | ACK | ECE, options=SYNACK_OPTIONS
        ),
        tcp_packet(a, b, p + 4, SERVER_PORT, c + 301, s + 301, ACK | NS),
        # a 60-byte header: 40 option bytes (timestamps + 3 SACK blocks + NOPs)
        tcp_packet(
            a6,
            b6,
            p + 2,
            SERVER_PORT,
            0xFFFFFF00,
            0xFFFFFFF0,
            ACK,
            options=(
                ("nop",),
                ("nop",),
                ("ts", 5, 6),
                ("nop",),
                ("nop",),
                ("sack", [(1, 2), (3, 4), (5, 6)]),
            ),
        ),
        # RST with payload (RFC 9293 allows diagnostic text), RST without ACK
        tcp_packet(b, a, SERVER_PORT, p, s + 1, c + 8, RST | ACK, payload=b"reset: testing"),
        tcp_packet(b6, a6, SERVER_PORT, p + 2, 0xFFFFFFF0, 0, RST),
    ]
    frames = frames_from(ethernet_frames(packets))
    return Capture(
        "synth-tcp-options.pcap",
        pcap_bytes(frames, LINKTYPE_ETHERNET),
        frames,
        description="every TCP option, SACK 1-4 blocks, all flag bits, urgent pointer",
    )


def make_multi_interface() -> Capture:
    interfaces = [
        Interface(LINKTYPE_ETHERNET, tsresol=6, name="eth-usec"),
        Interface(LINKTYPE_RAW, tsresol=9, name="raw-nsec"),
        Interface(LINKTYPE_LINUX_SLL, tsresol=0x80 | 10, name="sll-2^-10"),
        Interface(LINKTYPE_NULL, name="null-default-usec", snaplen=128),
        Interface(LINKTYPE_ETHERNET, tsresol=3, name="eth-msec"),
    ]
    packets = both_conversations(51400)
    frames: list[Frame] = []
    for i, p in enumerate(packets):
        iface = i % len(interfaces)
        lt = interfaces[iface].linktype
        if lt == LINKTYPE_ETHERNET:
            data, expect = ethernet(p)
        elif lt == LINKTYPE_RAW:
            data, expect = p.data, p.expect
        elif lt == LINKTYPE_LINUX_SLL:
            data, expect = sll_header(p, PACKET_HOST, ARPHRD_ETHER, MAC_SERVER), p.expect
        else:
            data, expect = null_header(p, AF_INET6_DARWIN, "<"), p.expect
        # times exact in every resolution used: whole milliseconds for the ms interface,
        # 1/1024 s steps for the binary one, odd nanoseconds for the ns one
        sec = 1_700_000_100 + i
        if iface == 0:
            ts: int | Fraction = sec * 10**9 + 123_456_000
        elif iface == 1:
            ts = sec * 10**9 + 987_654_321
        elif iface == 2:
            # not whole nanoseconds: .7587890625 s and .9990234375 s (tshark truncates)
            ts = Fraction(sec * 1024 + (777, 1023)[i % 2], 1024) * 10**9
        elif iface == 3:
            ts = sec * 10**9 + 500_001_000
        else:
            ts = sec * 10**9 + 42_000_000
        frames.append(Frame(data, ts, expect, iface=iface))
    order = "<"
    out = [shb(order)] + [idb(order, i) for i in interfaces]
    for n, f in enumerate(frames):
        opts = []
        if n % 4 == 1:
            opts.append((2, struct.pack(order + "I", 1 + n % 2)))  # epb_flags: inbound/outbound
        if n % 5 == 2:
            opts.append((1, f"comment on record {n + 1}".encode()))
        out.append(epb(order, f, interfaces[f.iface], opts))
    return Capture(
        "synth-multi-if.pcapng",
        b"".join(out),
        frames,
        interfaces,
        description="5 interfaces: Ethernet/raw/SLL/NULL/Ethernet, if_tsresol 10^-6, "
        "10^-9, 2^-10, absent, 10^-3; EPB options",
    )


def make_spb() -> Capture:
    iface = Interface(LINKTYPE_ETHERNET, snaplen=96)
    pairs = ethernet_frames(both_conversations(51500))
    frames = [Frame(d, 0, e) for d, e in pairs]
    out = [shb("<"), idb("<", iface)] + [spb("<", f, iface) for f in frames]
    return Capture(
        "synth-spb.pcapng",
        b"".join(out),
        frames,
        [iface],
        description="Simple Packet Blocks (no timestamps), snaplen 96 cuts payloads",
    )


def make_skipped_blocks() -> Capture:
    """Blocks a reader must step over without a frame number between the EPBs."""
    order = "<"
    iface = Interface(LINKTYPE_ETHERNET, tsresol=9)
    pairs = ethernet_frames(both_conversations(51600))
    frames = [
        Frame(d, ts, e)
        for (d, e), ts in zip(pairs, timestamps(len(pairs), step_ns=1_777), strict=True)
    ]
    extras = [
        # name resolution block: one IPv4 record, one IPv6 record, end of records
        block(
            order,
            NRB,
            struct.pack(order + "HH", 1, 4 + 12)
            + pad4(ipaddress.IPv4Address(V4_SERVER).packed + b"server.test\0")
            + struct.pack(order + "HH", 2, 16 + 13)
            + pad4(ipaddress.IPv6Address(V6_SERVER).packed + b"server6.test\0")
            + struct.pack(order + "HH", 0, 0),
        ),
        # interface statistics
        block(
            order,
            ISB,
            struct.pack(order + "III", 0, 0, 0)
            + options(order, [(4, struct.pack(order + "Q", 24)), (5, struct.pack(order + "Q", 0))]),
        ),
        # decryption secrets: a TLS key log line
        block(order, DSB, struct.pack(order + "II", 0x544C534B, 20) + b"CLIENT_RANDOM 00 00\n"),
        # a block type nobody defined, and one from the local-use range
        block(order, 0x00000123, b"unknown block body"),
        block(order, 0x80000001, b"local use"),
    ]
    out = [shb(order), idb(order, iface)]
    for i, f in enumerate(frames):
        out.append(extras[i % len(extras)])
        out.append(epb(order, f, iface))
    return Capture(
        "synth-skipped-blocks.pcapng",
        b"".join(out),
        frames,
        [iface],
        description="NRB, ISB, DSB, an unknown and a local-use block between EPBs",
    )


def make_custom_blocks() -> Capture:
    """Custom blocks (0x00000BAD, 0x40000BAD) between EPBs.

    tshark 4.0 does not skip these: each becomes a frame of its own (protocol "PCAPNG", no
    timestamp, length = the custom data after the PEN, padding included), so the EPBs after
    them get higher frame numbers. The intended frames below say so.
    """
    order = "<"
    iface = Interface(LINKTYPE_ETHERNET, tsresol=9)
    pairs = ethernet_frames(both_conversations(51650))
    packets = [
        Frame(d, ts, e)
        for (d, e), ts in zip(pairs, timestamps(len(pairs), step_ns=2_333), strict=True)
    ]
    customs = [
        (CUSTOM_COPY, b"tracer custom payload"),  # copyable
        (CUSTOM_NOCOPY, b"\x00" * 13),  # not to be copied to a new file
    ]
    out = [shb(order), idb(order, iface)]
    frames: list[Frame] = []
    for i, f in enumerate(packets):
        if i % 3 == 1:
            kind, payload = customs[(i // 3) % 2]
            out.append(block(order, kind, struct.pack(order + "I", 32473) + payload))
            frames.append(Frame(pad4(payload), 0, Expect(note="custom block")))
        out.append(epb(order, f, iface))
        frames.append(f)
    return Capture(
        "synth-custom-blocks.pcapng",
        b"".join(out),
        frames,
        [iface],
        description="custom blocks (copyable and not) between EPBs; tshark numbers them as frames",
    )


def make_two_sections() -> Capture:
    """A little-endian section then a big-endian one, each with its own interfaces.

    Interface ids are per section (each SHB starts a new list): tshark 4.0's
    frame.interface_id shows section 2's first interface as 0 again, and the check expects that.
    """
    le_ifaces = [Interface(LINKTYPE_ETHERNET, tsresol=9), Interface(LINKTYPE_RAW)]
    be_ifaces = [Interface(LINKTYPE_RAW, tsresol=6), Interface(LINKTYPE_ETHERNET, tsresol=9)]
    packets = both_conversations(51700)
    first, second = packets[:12], packets[12:]

    def build(packets: list[Packet], ifaces: list[Interface], t0: int) -> list[Frame]:
        frames = []
        for i, p in enumerate(packets):
            iface = i % 2
            if ifaces[iface].linktype == LINKTYPE_ETHERNET:
                data, expect = ethernet(p)
            else:
                data, expect = p.data, p.expect
            frames.append(Frame(data, t0 + i * 1_000_000_000 + 1000 * i, expect, iface))
        return frames

    f1, f2 = build(first, le_ifaces, BASE_TS_NS), build(second, be_ifaces, BASE_TS_NS + 100 * 10**9)
    data = pcapng_section("<", le_ifaces, f1) + pcapng_section(">", be_ifaces, f2)
    shown = f1 + f2  # all interfaces have the default snaplen, so the lookup below is safe
    return Capture(
        "synth-two-sections.pcapng",
        data,
        shown,
        le_ifaces + be_ifaces,
        description="section 1 little-endian, section 2 big-endian, own IDBs each",
    )


def make_be_pcapng() -> Capture:
    iface = Interface(LINKTYPE_ETHERNET)  # no if_tsresol: microseconds
    pairs = ethernet_frames(both_conversations(51800), pad_byte=0x55)
    frames = [
        Frame(d, ts, e)
        for (d, e), ts in zip(pairs, timestamps(len(pairs), step_ns=3000), strict=True)
    ]
    return Capture(
        "synth-be.pcapng",
        pcapng_section(">", [iface], frames),
        frames,
        [iface],
        description="big-endian pcapng, default (microsecond) resolution",
    )


def make_header_only() -> Capture:
    return Capture(
        "synth-header-only.pcap",
        pcap_bytes([], LINKTYPE_ETHERNET),
        [],
        description="a valid pcap header and no records",
    )


# ---------------------------------------------------------------- malformed


def malformed_files() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    good = frames_from(ethernet_frames(both_conversations(52000)))
    whole = pcap_bytes(good, LINKTYPE_ETHERNET)
    # a file still being written: the last record's data is cut short
    files["truncated-record.pcap"] = (whole[:-30], "24 records, the last cut 30 bytes short")
    record_header_cut = len(pcap_bytes(good[:10], LINKTYPE_ETHERNET)) + 7
    files["truncated-record-header.pcap"] = (
        whole[:record_header_cut],
        "10 whole records, then 7 bytes of a record header",
    )
    # a corrupt record length in the middle: caplen 0x7fffffff on record 6
    pos = 24
    for frame in good[:5]:
        pos += 16 + len(frame.data)
    bad = bytearray(whole)
    struct.pack_into("<I", bad, pos + 8, 0x7FFFFFFF)
    files["bad-caplen.pcap"] = (
        bytes(bad),
        "record 6 claims caplen 0x7fffffff; 5 good records before it",
    )
    # pcapng cut in the middle of an EPB
    iface = Interface(LINKTYPE_ETHERNET, tsresol=9)
    ng = pcapng_section("<", [iface], good)
    files["truncated-block.pcapng"] = (ng[: len(ng) - 50], "24 EPBs, the last cut mid-block")
    # pcapng whose 6th EPB has mismatched leading/trailing lengths
    blocks = [shb("<"), idb("<", iface)] + [epb("<", f, iface) for f in good]
    sixth = bytearray(blocks[2 + 5])
    struct.pack_into("<I", sixth, len(sixth) - 4, len(sixth) + 8)
    blocks[2 + 5] = bytes(sixth)
    files["bad-block-length.pcapng"] = (b"".join(blocks), "EPB 6: trailing total length differs")
    # well-formed file, malformed frames
    pairs: list[tuple[bytes, Expect]] = []
    ok = tcp_packet(V4_CLIENT, V4_SERVER, 52100, SERVER_PORT, 1, 2, ACK)
    pairs.append(ethernet(ok))
    seg, _ = tcp_segment(V4_CLIENT, V4_SERVER, 52101, SERVER_PORT, 1, 2, ACK)
    pairs.append(
        (
            ethernet(
                Packet(
                    ipv4(V4_CLIENT, V4_SERVER, IPPROTO_TCP, seg, ihl=4), ETHERTYPE_IPV4, Expect()
                )
            )[0],
            Expect(note="IPv4 IHL 4"),
        )
    )
    pairs.append(
        (
            ethernet(
                Packet(
                    ipv4(V4_CLIENT, V4_SERVER, IPPROTO_TCP, seg, ihl=0), ETHERTYPE_IPV4, Expect()
                )
            )[0],
            Expect(note="IPv4 IHL 0"),
        )
    )
    low_doff = tcp_packet(V4_CLIENT, V4_SERVER, 52102, SERVER_PORT, 1, 2, ACK, data_offset=3)
    pairs.append((ethernet(low_doff)[0], Expect(note="TCP data offset 3")))
    big_doff = tcp_packet(
        V6_CLIENT, V6_SERVER, 52103, SERVER_PORT, 1, 2, ACK, data_offset=15, payload=b"x" * 8
    )
    pairs.append((ethernet(big_doff)[0], Expect(note="TCP data offset 15 beyond the segment")))
    short_total = ipv4(V4_CLIENT, V4_SERVER, IPPROTO_TCP, seg, total_length=16)
    pairs.append(
        (
            ethernet(Packet(short_total, ETHERTYPE_IPV4, Expect()))[0],
            Expect(note="IPv4 total length 16 < IHL*4"),
        )
    )
    bad_opt = tcp_packet(
        V4_CLIENT,
        V4_SERVER,
        52104,
        SERVER_PORT,
        1,
        2,
        ACK,
        options=(("unknown", 8, b"\x00" * 6), ("unknown", 2, b""), ("nop",), ("nop",)),
    )
    pairs.append((ethernet(bad_opt)[0], Expect(note="TCP options: short timestamp, short MSS")))
    zero_len_opt = tcp_packet(
        V4_CLIENT, V4_SERVER, 52105, SERVER_PORT, 1, 2, ACK, options=(("pad", b"\x03\x00\x01\x01"),)
    )
    pairs.append((ethernet(zero_len_opt)[0], Expect(note="TCP option length 0")))
    overrun = tcp_packet(
        V4_CLIENT, V4_SERVER, 52106, SERVER_PORT, 1, 2, ACK, options=(("pad", b"\x05\x22\x00\x00"),)
    )
    pairs.append((ethernet(overrun)[0], Expect(note="SACK option length runs past the header")))
    v6_short = ipv6(V6_CLIENT, V6_SERVER, IPPROTO_TCP, seg[:12])
    pairs.append(
        (
            ethernet(Packet(v6_short, ETHERTYPE_IPV6, Expect()))[0],
            Expect(note="IPv6 payload of 12 bytes: TCP header cut by the sender"),
        )
    )
    pairs.append(ethernet(tcp_packet(V6_CLIENT, V6_SERVER, 52107, SERVER_PORT, 1, 2, ACK | FIN)))
    frames = frames_from(pairs)
    files["bad-headers.pcap"] = (
        pcap_bytes(frames, LINKTYPE_ETHERNET),
        "11 frames: 1 and 11 good TCP; 2-10 bad IHL, data offset, total length, options, "
        "short IPv6 payload",
    )
    # TCP headers cut by the snap length (the frames themselves are fine)
    cut = both_conversations(52200)
    cut_frames = frames_from(ethernet_frames(cut))
    files["truncated-tcp-headers.pcap"] = (
        pcap_bytes(cut_frames, LINKTYPE_ETHERNET, snaplen=62),
        "snaplen 62: IPv4 TCP options and IPv6 TCP headers cut short",
    )
    files["not-a-capture.txt"] = (b"This is not a capture file.\nJust text.\n", "plain text")
    files["empty.pcap"] = (b"", "zero bytes")
    return files


# ---------------------------------------------------------------- tshark check

TSHARK_FIELDS = [
    "frame.number",
    "frame.time_epoch",
    "frame.len",
    "frame.cap_len",
    "frame.interface_id",
    "vlan.id",
    "ieee8021ad.id",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "ip.ttl",
    "ipv6.hlim",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.flags",
    "tcp.window_size_value",
    "tcp.hdr_len",
    "tcp.len",
    "tcp.urgent_pointer",
    "tcp.option_kind",
    "tcp.options.mss_val",
    "tcp.options.wscale.shift",
    "tcp.options.sack_le",
    "tcp.options.sack_re",
    "tcp.options.timestamp.tsval",
    "tcp.options.timestamp.tsecr",
]


def run_tshark(path: Path, prefs: tuple[str, ...]) -> tuple[list[dict], str]:
    cmd = [
        "tshark",
        "-r",
        str(path),
        "-n",
        "-o",
        "tcp.relative_sequence_numbers:FALSE",
        "-o",
        "tcp.analyze_sequence_numbers:FALSE",
        *prefs,
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "aggregator=,",
    ]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    rows = []
    for line in proc.stdout.splitlines():
        values = line.split("\t")
        rows.append(dict(zip(TSHARK_FIELDS, values, strict=False)))
    stderr = "\n".join(
        x for x in proc.stderr.splitlines() if "Running as user" not in x and x.strip()
    )
    if proc.returncode != 0:
        stderr = f"exit {proc.returncode}: {stderr}"
    return rows, stderr


def _ints(text: str, base: int = 10) -> list[int]:
    return [int(x, base) for x in text.split(",") if x != ""]


def _first(text: str) -> str:
    return text.split(",")[0] if text else ""


def _num(row: dict, name: str, base: int = 10) -> int | None:
    """The first value tshark printed for a field, or None when it printed nothing."""
    text = _first(row.get(name, ""))
    return int(text, base) if text else None


def compare_frame(frame: Frame, row: dict, n: int, capture: Capture) -> list[str]:
    problems = []
    exp = frame.expect

    def check(what: str, got, want) -> None:
        if got != want:
            problems.append(f"frame {n}: {what}: tshark {got!r}, intended {want!r}")

    if isinstance(frame.ts_ns, Fraction) or frame.ts_ns:
        want_ns = Fraction(frame.ts_ns)
        got = row["frame.time_epoch"]
        sec, _, frac = got.partition(".")
        got_ns = int(sec) * 10**9 + int(frac.ljust(9, "0")[:9])
        if got_ns != math.floor(want_ns):  # tshark truncates sub-nanosecond fractions
            problems.append(f"frame {n}: time {got} vs intended {float(want_ns) / 1e9:.9f}")
    check("frame.len", _num(row, "frame.len"), len(frame.data))
    snap = capture.snaplen
    if capture.interfaces:
        snap = capture.interfaces[frame.iface].snaplen
        check("interface", _num(row, "frame.interface_id") or 0, frame.iface)
    check("frame.cap_len", _num(row, "frame.cap_len"), min(len(frame.data), snap))
    check("vlan.id", _ints(row["vlan.id"]), exp.vlan_ids)
    check("ieee8021ad.id", _ints(row["ieee8021ad.id"]), exp.qinq_ids)
    if exp.ip_src is not None:
        v6 = ":" in exp.ip_src
        check("ip src", _first(row["ipv6.src" if v6 else "ip.src"]), exp.ip_src)
        check("ip dst", _first(row["ipv6.dst" if v6 else "ip.dst"]), exp.ip_dst)
        if exp.ttl is not None:
            check("ttl", _num(row, "ipv6.hlim" if v6 else "ip.ttl"), exp.ttl)
    tcp = exp.tcp
    if tcp is None:
        check("tcp present", row["tcp.srcport"] != "", False)
        return problems
    if row["tcp.srcport"] == "":
        problems.append(f"frame {n}: tshark shows no TCP; intended {tcp}")
        return problems
    check("srcport", _num(row, "tcp.srcport"), tcp["srcport"])
    check("dstport", _num(row, "tcp.dstport"), tcp["dstport"])
    # tshark has no tcp.seq_raw for a TCP header quoted inside an ICMP error, only tcp.seq
    # (raw here, relative sequence numbers are off)
    seq_field = "tcp.seq" if exp.note == "icmp" else "tcp.seq_raw"
    check(seq_field, _num(row, seq_field), tcp["seq_raw"])
    if "flags" not in tcp:  # an ICMP quote of 8 bytes: nothing past the sequence number
        return problems
    if tcp["ack_raw"] is not None:
        check("ack_raw", _num(row, "tcp.ack_raw"), tcp["ack_raw"])
    check("flags", _num(row, "tcp.flags", 16), tcp["flags"])
    check("window", _num(row, "tcp.window_size_value"), tcp["window"])
    check("hdr_len", _num(row, "tcp.hdr_len"), tcp["hdr_len"])
    if tcp.get("len") is not None:
        check("tcp.len", _num(row, "tcp.len"), tcp["len"])
    if tcp["urgent"] is not None:
        check("urgent", _num(row, "tcp.urgent_pointer"), tcp["urgent"])
    check("option kinds", _ints(row["tcp.option_kind"]), tcp.get("kinds", []))
    check("mss", _ints(row["tcp.options.mss_val"]), [tcp["mss"]] if "mss" in tcp else [])
    want_ws = [tcp["wscale"]] if "wscale" in tcp else []
    check("wscale", _ints(row["tcp.options.wscale.shift"]), want_ws)
    sack = tcp.get("sack", [])
    check("sack_le", _ints(row["tcp.options.sack_le"]), [le for le, _ in sack])
    check("sack_re", _ints(row["tcp.options.sack_re"]), [re for _, re in sack])
    if "tsval" in tcp:
        check("tsval", _num(row, "tcp.options.timestamp.tsval"), tcp["tsval"])
        check("tsecr", _num(row, "tcp.options.timestamp.tsecr"), tcp["tsecr"])
    return problems


def check_capture(path: Path, capture: Capture) -> list[str]:
    rows, stderr = run_tshark(path, capture.tshark_prefs)
    problems = [f"tshark stderr: {stderr}"] if stderr else []
    if len(rows) != len(capture.frames):
        problems.append(f"tshark shows {len(rows)} frames, intended {len(capture.frames)}")
    for n, (frame, row) in enumerate(zip(capture.frames, rows, strict=False), start=1):
        if int(row["frame.number"]) != n:
            problems.append(f"frame {n}: tshark numbers it {row['frame.number']}")
        problems += compare_frame(frame, row, n, capture)
    return problems


# ---------------------------------------------------------------- main


def all_captures() -> tuple[list[tuple[str, bytes]], list[tuple[str, Capture]]]:
    """(file name, bytes) to write, and (file name, what tshark should show) to check.

    A file can be checked in more than one view: synth-fragments.pcap with tshark's
    defragmentation off (the decoder's per-packet view) and with tshark's defaults.
    """
    fragments, fragments_default = make_fragments()
    captures = [
        make_null("<", "synth-null-le.pcap", nanos=False),
        make_null(">", "synth-null-be.pcap", nanos=True),
        make_loop(),
        make_raw("synth-raw-101.pcap", LINKTYPE_RAW, "<", True, 52300),
        make_raw("synth-raw-12.pcap", LINKTYPE_RAW_BSD12, "<", False, 52400),
        make_raw("synth-raw-14.pcap", LINKTYPE_RAW_BSD14, ">", True, 52500),
        make_raw("synth-ipv4-228.pcap", LINKTYPE_IPV4, ">", True, 52600, families=(4,)),
        make_raw("synth-ipv6-229.pcap", LINKTYPE_IPV6, "<", True, 52700, families=(6,)),
        make_snap64(),
        make_sll(),
        make_sll2(),
        make_vlan(),
        make_qinq(),
        make_ipv4_options(),
        make_ipv6_exthdrs(),
        fragments,
        make_non_tcp(),
        make_tcp_options(),
        make_multi_interface(),
        make_spb(),
        make_skipped_blocks(),
        make_custom_blocks(),
        make_two_sections(),
        make_be_pcapng(),
        make_header_only(),
    ]
    files = [(c.name, c.data) for c in captures]
    checks = [(c.name, c) for c in captures]
    by_name = {c.name: c for c in captures}
    for gz_name, source in (
        ("synth-tcp-options.pcap.gz", "synth-tcp-options.pcap"),
        ("synth-multi-if.pcapng.gz", "synth-multi-if.pcapng"),
        # gzip inside, no .gz in the name: readers must go by the magic bytes
        ("synth-be-gzipped.pcapng", "synth-be.pcapng"),
    ):
        files.append((gz_name, gzip_bytes(by_name[source].data)))
        checks.append((gz_name, replace(by_name[source], name=gz_name)))
    label = f"{fragments.name} (tshark defaults)"
    checks.append((fragments.name, replace(fragments_default, name=label)))
    return files, checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--check", action="store_true", help="compare every file with tshark")
    args = parser.parse_args(argv)
    out: Path = args.out
    (out / "malformed").mkdir(parents=True, exist_ok=True)
    files, checks = all_captures()
    for name, data in files:
        (out / name).write_bytes(data)
    malformed = malformed_files()
    for name, (data, _) in malformed.items():
        (out / "malformed" / name).write_bytes(data)
    print(f"wrote {len(files)} synthetic captures and {len(malformed)} malformed inputs to {out}")
    if not args.check:
        return 0
    failures = 0
    for name, capture in checks:
        problems = check_capture(out / name, capture)
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        tcp_frames = sum(1 for f in capture.frames if f.expect.tcp is not None)
        print(f"  {capture.name}: {len(capture.frames)} frames, {tcp_frames} with TCP: {status}")
        for problem in problems[:20]:
            print(f"      {problem}")
        failures += bool(problems)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

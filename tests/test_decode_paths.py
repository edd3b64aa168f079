"""Decode's shortcuts must not change its results.

Decode reads most headers from a per-chunk copy of each frame's first bytes (the head), moves
fields in structured copies, recognises common TCP option layouts instead of walking them, and
screens whole chunks before classifying rare rows. Each shortcut is switched off here in turn
(a head too small for any header, chunks of a few rows, no recognised layouts) on randomly built
frames that exercise every branch (VLAN stacks, IPv4 options and bad lengths, IPv6 extension
chains, option layouts recognised or nearly so, truncation anywhere), and the packet rows and
counts must stay identical. The pcapng trailer check, done once the chain is walked, must stop
where a sequential reader stops.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracer.decode as decode
from tracer.decode import decode_frames, fields, tcp
from tracer.packet import FrameBatch
from tracer.source.formats import PcapngParser, _ticks_to_ns

OPTION_LAYOUTS = [
    b"\x01\x01\x08\x0a" + b"TSVLTSER",  # NOP NOP TS
    b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + b"TSVLTSER" + b"\x01\x03\x03\x07",  # Linux SYN
    b"\x02\x04\x05\xb4\x01\x03\x03\x08\x01\x01\x04\x02",  # Windows SYN
    b"\x01\x01\x05\x0a" + b"LEFTRGHT",  # NOP NOP SACK (one block)
    b"\x01\x01\x08\x0a" + b"TSVLTSER" + b"\x01\x01\x05\x0a" + b"LEFTRGHT",
    b"\x02\x04\x05\xb4",
    b"\x00\x00\x00\x00",
    b"\x02\x01\x00\x00",  # impossible option length
]
LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276]


def _tcp(rng) -> bytes:
    if rng.random() < 0.8:
        options = bytearray(OPTION_LAYOUTS[int(rng.integers(len(OPTION_LAYOUTS)))])
        if rng.random() < 0.2:
            options[int(rng.integers(len(options)))] = int(rng.integers(256))
    else:
        options = bytearray(rng.bytes(4 * int(rng.integers(0, 11))))
    options = bytes(options[:40])
    words = (20 + len(options)) // 4 if rng.random() < 0.95 else int(rng.integers(16))
    header = struct.pack(">HHIIHHHH", *(int(x) for x in rng.integers(0, 65536, 2)),
                         *(int(x) for x in rng.integers(0, 2**32, 2)),
                         (words << 12) | int(rng.integers(4096)), int(rng.integers(65536)), 0,
                         int(rng.integers(65536)))
    return header + options + rng.bytes(int(rng.integers(0, 60)))


def _ip(rng, version: int) -> bytes:
    segment = _tcp(rng)
    proto = 6 if rng.random() < 0.85 else int(rng.choice([17, 1, 0, 44]))
    if version == 4:
        ihl = 5 if rng.random() < 0.8 else int(rng.integers(16))
        options = rng.bytes(max(ihl - 5, 0) * 4)
        total = 4 * max(ihl, 5) + len(segment)
        roll = rng.random()
        total = 0 if roll < 0.05 else int(rng.integers(65536)) if roll < 0.1 else total
        frag = 0x4000 if rng.random() < 0.7 else int(rng.choice([0, 0x2000, 0x0010, 0x2005]))
        return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, total, int(rng.integers(65536)), frag,
                           int(rng.integers(256)), proto, 0, rng.bytes(4),
                           rng.bytes(4)) + options + segment
    chain, following = b"", proto
    depth = int(rng.integers(0, 4)) if rng.random() < 0.3 else 0
    for kind in rng.choice([0, 43, 44, 51, 60], depth):
        if kind == 44:
            offset = 0 if rng.random() < 0.6 else int(rng.integers(1, 8192))
            header = struct.pack(">BBHI", following, 0, offset << 3, 1)
        elif kind == 51:
            units = int(rng.integers(1, 4))
            header = bytes([following, units]) + rng.bytes((units + 2) * 4 - 2)
        else:
            units = int(rng.integers(0, 3))
            header = bytes([following, units]) + rng.bytes((units + 1) * 8 - 2)
        chain, following = header + chain, int(kind)
    payload = chain + segment
    length = len(payload) if rng.random() < 0.9 else int(rng.choice([0, rng.integers(65536)]))
    return struct.pack(">IHBB16s16s", 0x60000000, length, following, int(rng.integers(256)),
                       rng.bytes(16), rng.bytes(16)) + payload


def _frame(rng, linktype: int) -> bytes:
    version = 4 if rng.random() < 0.6 else 6
    packet = _ip(rng, version)
    if rng.random() < 0.05:  # a version the link layer did not announce
        packet = bytes([int(rng.integers(16)) << 4 | packet[0] & 15]) + packet[1:]
    ethertype = 0x0800 if version == 4 else 0x86DD
    if rng.random() < 0.05:
        ethertype = int(rng.choice([0x0806, 0x0800, 0x86DD, 0x0100]))
    types = [int(t) for t in rng.choice([0x8100, 0x88A8, 0x9100], int(rng.choice([0, 0, 1, 2, 5])))]
    types.append(ethertype)
    tags = b"".join(struct.pack(">HH", int(rng.integers(65536)), t) for t in types[1:])
    if linktype == 1:
        return rng.bytes(12) + struct.pack(">H", types[0]) + tags + packet
    if linktype == 113:
        return rng.bytes(14) + struct.pack(">H", types[0]) + tags + packet
    if linktype == 276:
        return struct.pack(">H", types[0]) + rng.bytes(18) + tags + packet
    if linktype in (0, 108):
        family = 2 if version == 4 else int(rng.choice([24, 28, 30]))
        return struct.pack(">I" if linktype == 108 or rng.random() < 0.3 else "<I", family) + packet
    return packet


def random_batch(seed: int) -> FrameBatch:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    mixed = rng.random() < 0.4
    linktype = np.array(
        rng.choice(LINKTYPES, n) if mixed else [LINKTYPES[int(rng.integers(len(LINKTYPES)))]] * n,
        np.uint16,
    )
    parts, offset, wirelen, caplen, at = [], [], [], [], 0
    for lt in linktype.tolist():
        frame = bytearray(_frame(rng, lt))
        if rng.random() < 0.1:
            frame[int(rng.integers(len(frame)))] = int(rng.integers(256))
        wirelen.append(len(frame) + (int(rng.integers(3)) if rng.random() < 0.2 else 0))
        if rng.random() < 0.25:
            frame = frame[: int(rng.integers(len(frame) + 1))]
        gap = int(rng.integers(0, 30))
        parts += [b"\xee" * gap, bytes(frame)]
        offset.append(at + gap)
        caplen.append(len(frame))
        at += gap + len(frame)
    return FrameBatch(
        frame=np.arange(1, n + 1, dtype=np.int64),
        ts_ns=np.arange(n, dtype=np.int64),
        iface=np.zeros(n, np.uint16),
        linktype=linktype,
        caplen=np.array(caplen, np.uint32),
        wirelen=np.array(wirelen, np.uint32),
        data=np.frombuffer(b"".join(parts), np.uint8),
        offset=np.array(offset, np.int64),
    )


def _decoded(batch: FrameBatch):
    packets, counts = decode_frames(batch)
    return packets.tobytes(), (counts.frames, counts.tcp_packets, counts.linktypes,
                               counts.non_tcp, counts.anomalies, counts.flag_counts)


NEVER = tcp.OptionLayout(length=99, words=(), present=0)
SHORTCUTS_OFF = {
    "tiny chunks": [(decode, "DECODE_CHUNK_ROWS", 7)],
    "no head": [(fields, "HEAD_BYTES", 16)],
    "no option layouts": [(tcp, "LAYOUT_TS_ONLY", NEVER), (tcp, "RARER_LAYOUTS", ())],
}


@pytest.mark.parametrize("shortcut", sorted(SHORTCUTS_OFF))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_results_do_not_depend_on_shortcuts(shortcut, seed, monkeypatch):
    batch = random_batch(seed)
    want = _decoded(batch)
    with monkeypatch.context() as patch:
        for module, name, value in SHORTCUTS_OFF[shortcut]:
            patch.setattr(module, name, value)
        assert _decoded(batch) == want


def test_random_batches_reach_the_rare_branches():
    reasons: set[str] = set()
    rows = 0
    for seed in range(60):
        packets, counts = decode_frames(random_batch(seed))
        reasons |= set(counts.anomalies)
        rows += packets.shape[0]
    assert rows > 1000
    assert {"truncated_link_header", "bad_ip_version", "bad_ip_header_length",
            "truncated_ipv6_extension_header", "truncated_tcp_options",
            "bad_tcp_option", "ip_length_exceeds_frame"} <= reasons


def _pcapng(blocks: int) -> tuple[bytes, list[int]]:
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 65535) + struct.pack("<I", 20)
    out, starts, at = [shb, idb], [], len(shb) + len(idb)
    for i in range(blocks):
        data = bytes([i % 256]) * (60 + i % 7)
        padded = data + b"\0" * (-len(data) % 4)
        length = 32 + len(padded)
        out.append(struct.pack("<IIIIIII", 6, length, 0, 0, i, len(data), len(data)) + padded
                   + struct.pack("<I", length))
        starts.append(at)
        at += length
    return b"".join(out), starts


@pytest.mark.parametrize("bad", [0, 1, 57, 399])
def test_pcapng_stops_at_the_first_block_with_a_bad_trailer(bad, monkeypatch):
    from tracer.source import records

    monkeypatch.setattr(records, "SEGMENT_BYTES", 1024)
    monkeypatch.setattr(records, "GUESS_WINDOW", 256)
    data, starts = _pcapng(400)
    raw = bytearray(data)
    trailer = (starts[bad + 1] if bad + 1 < len(starts) else len(raw)) - 4
    raw[trailer] ^= 0xFF
    parser = PcapngParser()
    batches, consumed = parser.parse(np.frombuffer(bytes(raw), np.uint8), 0)
    assert sum(len(b) for b in batches) == bad
    assert consumed == starts[bad]
    assert parser.problem is not None and f"offset {starts[bad]}" in parser.problem


def test_huge_decimal_resolution_truncates_to_zero():
    ticks = np.array([0, 1, 2**64 - 1], np.uint64)
    assert _ticks_to_ns(ticks, 10, 29).tolist() == [0, 0, 0]
    assert _ticks_to_ns(ticks[:2], 10, 12).tolist() == [0, 0]
    assert _ticks_to_ns(np.array([5000], np.uint64), 10, 12).tolist() == [5]

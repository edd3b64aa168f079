"""Payload for the leg join: decode's prefix side output against tshark, the PROXY protocol
and header parsers (whole, cut at every length, malformed), and the prefix store's probe.

Rules: real captures (the lab's, read by the real source and decoder) and tshark as the oracle
for the bytes; parser inputs are built by hand byte for byte, as the specifications lay them
out (haproxy.org proxy-protocol.txt), so a parser that misreads a field fails.
"""

from __future__ import annotations

import ipaddress
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tracer.attribution.config import parse_config
from tracer.attribution.payload import (
    PROXY_V2_SIGNATURE,
    client_claim,
    forwarded_for,
    parse_proxy,
    request_headers,
    unique_id_parser,
)
from tracer.attribution.prefixes import StreamPrefixes, has_signal
from tracer.decode import decode_frames, decode_frames_with_payload
from tracer.decode.payload import PayloadRequest, first_payload_rows
from tracer.flows import FlowTracker
from tracer.flows.tables import segments_with_packets
from tracer.packet import parse_address
from tracer.source import open_capture

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "captures" / "lab" / "out"
PROXY_CAPTURE = OUT / "proxy-protocol.pcapng"  # snaplen 512
CUT_CAPTURE = OUT / "client-abort.pcapng"  # snaplen 128: request heads cut
V6_CAPTURE = OUT / "ipv6.pcapng"


# ------------------------------------------------------------------ decode's side output

def _tshark_payloads(path: Path) -> dict[int, bytes]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-o", "tcp.desegment_tcp_streams:FALSE",
         "-Y", "tcp.len > 0", "-T", "fields", "-e", "frame.number", "-e", "tcp.payload"],
        capture_output=True, text=True, check=True, timeout=120).stdout
    payloads = {}
    for line in out.splitlines():
        frame, _, hexed = line.partition("\t")
        payloads[int(frame)] = bytes.fromhex(hexed.replace(":", ""))
    return payloads


@pytest.mark.parametrize("capture", [PROXY_CAPTURE, CUT_CAPTURE, V6_CAPTURE], ids=lambda p: p.stem)
@pytest.mark.parametrize("prefix_bytes", [64, 256])
def test_prefixes_are_the_captured_payload_bytes(capture, prefix_bytes):
    """Every prefix holds the first bytes of the segment's payload as tshark shows them,
    `captured` = what the snaplen left (up to prefix_bytes), zeros after; the packet rows are
    the same as without the request."""
    theirs = _tshark_payloads(capture)
    request = PayloadRequest(prefix_bytes, select=lambda p: np.flatnonzero(p["payload_len"] > 0))
    seen = 0
    cut = 0
    with open_capture(str(capture)) as reader:
        for frames in reader.batches():
            plain, _ = decode_frames(frames)
            packets, _, prefixes = decode_frames_with_payload(frames, request)
            assert np.array_equal(plain, packets)
            by_frame = dict(zip(packets["frame"].tolist(), packets["payload_len"].tolist(),
                                strict=True))
            for row in prefixes:
                frame = int(row["frame"])
                want = theirs[frame][:prefix_bytes]
                got = row["data"][: row["captured"]].tobytes()
                assert got == want, frame
                assert not row["data"][row["captured"]:].any()
                assert row["payload_len"] == by_frame[frame]
                cut += row["captured"] < min(row["payload_len"], prefix_bytes)
                seen += 1
    assert seen == len(theirs)
    if capture == CUT_CAPTURE and prefix_bytes == 256:
        assert cut > 0  # the snaplen did cut some: the captured count is what says so


def test_default_pick_is_the_first_two_payload_segments_of_each_directed_pair():
    with open_capture(str(PROXY_CAPTURE)) as reader:
        packets, _ = decode_frames(next(iter(reader.batches())))
    rows = first_payload_rows(packets).tolist()
    expected, seen = [], {}
    for i, p in enumerate(packets):
        if p["payload_len"] == 0:
            continue
        key = (int(p["src_hi"]), int(p["src_lo"]), int(p["sport"]), int(p["dst_hi"]),
               int(p["dst_lo"]), int(p["dport"]))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= 2:
            expected.append(i)
    assert rows == expected and rows


def _stream_prefixes(capture: Path, **kwargs) -> tuple[StreamPrefixes, np.ndarray]:
    store = StreamPrefixes(256, **kwargs)
    tracker = FlowTracker(keep_flows=True, keep_segments=True)
    with open_capture(str(capture)) as reader:
        for frames in reader.batches():
            packets, _, prefixes = decode_frames_with_payload(frames, PayloadRequest(256))
            tracker.add(packets)
            seg, _ = segments_with_packets(packets, tracker.take_segments())
            store.add(seg, prefixes)
    tracker.finish()
    return store, tracker.flows


def test_stream_starts_hold_the_proxy_header_and_request():
    store, flows = _stream_prefixes(PROXY_CAPTURE)
    starts = [store.start(int(f)) for f in flows["flow_id"]]
    v1 = sum(s.startswith(b"PROXY TCP4 10.232.1.10 10.232.1.1 ") for s in starts)
    v2 = sum(s.startswith(PROXY_V2_SIGNATURE) for s in starts)
    assert v1 and v2
    assert all(len(s) <= 256 for s in starts)


def test_probe_turns_payload_off_without_signals_and_keeps_it_with_them():
    store, _ = _stream_prefixes(CUT_CAPTURE, probe=True, probe_starts=20)
    assert not store.active and store.probed == 20
    store, _ = _stream_prefixes(PROXY_CAPTURE, probe=True, probe_starts=20)
    assert store.active and not store.probing


# ------------------------------------------------------------------ PROXY protocol

def _v1(src="10.232.1.10", dst="10.232.1.1", sport=40000, dport=8000, fam="TCP4") -> bytes:
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def _v2(src="10.232.1.10", dst="10.232.1.1", sport=40000, dport=8000, command=1,
        tlv=b"") -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x11 if a.version == 4 else 0x21
    block = a.packed + b.packed + struct.pack(">HH", sport, dport) + tlv
    return PROXY_V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack(">H", len(block)) + block


REQUEST = b"GET /c/001/ok HTTP/1.1\r\nHost: lab\r\nX-Forwarded-For: 10.232.1.10\r\n\r\n"


def test_proxy_v1_tcp4_tcp6_unknown():
    h = parse_proxy(_v1() + REQUEST)
    assert (h.version, h.src, h.sport, h.dst, h.dport) == (1, "10.232.1.10", 40000, "10.232.1.1", 8000)
    assert (_v1() + REQUEST)[h.length:] == REQUEST
    h = parse_proxy(_v1("fd00:232:1::10", "fd00:232:1::1", 1, 65535, "TCP6"))
    assert (h.src, h.sport, h.dport) == ("fd00:232:1::10", 1, 65535)
    h = parse_proxy(b"PROXY UNKNOWN\r\n" + REQUEST)
    assert h.src is None and h.length == 15


@pytest.mark.parametrize("bad", [
    _v1(fam="TCP6"),  # IPv4 addresses under TCP6
    _v1(sport=70000),
    b"PROXY TCP4 10.232.1.10 10.232.1.1 40000\r\n",
    b"PROXY TCP4 10.232.1.x 10.232.1.1 40000 8000\r\n",
    b"PROXY UDP4 10.232.1.10 10.232.1.1 40000 8000\r\n",
    b"PROXY TCP4 10.232.1.10 10.232.1.1 40000 8000" + b" " * 120 + b"\r\n",  # past 107 bytes
])
def test_proxy_v1_malformed_is_no_header(bad):
    assert parse_proxy(bad) is None
    assert client_claim(bad + REQUEST) is None


def test_proxy_v2_tcp4_tcp6_local_and_tlvs():
    h = parse_proxy(_v2(tlv=b"\x04\x00\x01x") + REQUEST)
    assert (h.version, h.src, h.sport, h.dst, h.dport, h.length) == (
        2, "10.232.1.10", 40000, "10.232.1.1", 8000, 16 + 12 + 4)
    h = parse_proxy(_v2("fd00:232:1::10", "fd00:232:1::1", 5, 6))
    assert (h.src, h.sport, h.dst, h.dport, h.length) == ("fd00:232:1::10", 5, "fd00:232:1::1", 6, 52)
    h = parse_proxy(_v2(command=0))
    assert h.src is None  # LOCAL: a health check names no client
    assert parse_proxy(PROXY_V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12)) is None  # version 1


@pytest.mark.parametrize("make", [_v1, _v2, lambda: _v2("fd00::10", "fd00::1", 7, 8)],
                         ids=["v1", "v2", "v2-ipv6"])
def test_proxy_header_cut_at_every_length_is_no_match(make):
    """What a snaplen leaves of a header: no match until the address part is whole, then the
    exact client; never a wrong one."""
    whole = make() + REQUEST
    full = parse_proxy(whole)
    needed = full.length if full.version == 1 else (28 if ":" not in full.src else 52)
    for n in range(len(whole) + 1):
        h = parse_proxy(whole[:n])
        if n < needed:
            assert h is None, n
            assert client_claim(whole[:n]) is None, n
        else:
            assert (h.src, h.sport) == (full.src, full.sport), n
            claim = client_claim(whole[:n])
            assert claim.address == parse_address(full.src) and claim.port == full.sport


# ------------------------------------------------------------------ HTTP headers

def _head(*lines: str, end: bool = True) -> bytes:
    return ("GET / HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines)
            + ("\r\n" if end else "")).encode()


def test_forwarded_for_lists_and_hops():
    headers, whole = request_headers(_head("Host: x", "X-Forwarded-For: 192.0.2.1, 10.0.0.2",
                                           "x-forwarded-for: 10.232.1.10"))
    assert whole
    assert forwarded_for(headers) == "10.232.1.10"  # the last hop: what HAProxy appended
    assert forwarded_for(headers, hop=0) == "192.0.2.1"
    assert forwarded_for(headers, hop=-2) == "10.0.0.2"
    assert forwarded_for(headers, hop=5) is None
    headers, _ = request_headers(_head("X-Forwarded-For: [2001:db8::1]:4711, 10.1.1.1:80"))
    assert forwarded_for(headers, hop=0) == "2001:db8::1"
    assert forwarded_for(headers) == "10.1.1.1"
    headers, _ = request_headers(_head("X-Forwarded-For: unknown"))
    assert forwarded_for(headers) is None
    headers, _ = request_headers(_head("X-Client: 10.9.9.9"))
    assert forwarded_for(headers, "X-Client") == "10.9.9.9"


def test_address_headers_need_the_whole_head():
    """A head the snaplen cut may have lost the line HAProxy appended after the client's own:
    no address claim from it (the client's would be wrong)."""
    head = _head("Host: x", "X-Forwarded-For: 192.0.2.66", "X-Forwarded-For: 10.232.1.10")
    claim = client_claim(head)
    assert claim.source == "forwarded_for" and claim.address == parse_address("10.232.1.10")
    for n in range(len(head) - 1):
        assert client_claim(head[:n]) is None, n
    claim = client_claim(_head("X-Real-IP: 10.232.1.20"))
    assert claim.source == "real_ip" and claim.port is None


UID_FORMAT = r"%{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid"
UID = "0AE8010A:BC61_0AE80101:1F44_6B026784_0000:3C46"  # from the lab's HAProxy log


def test_unique_id_format_reads_the_client_back():
    parser = unique_id_parser(UID_FORMAT)
    assert parser.client(UID) == ("10.232.1.10", 0xBC61)
    assert parser.client("0AE8010A:BC6") is None  # cut
    assert unique_id_parser("%ci:%cp-%rt").client("10.1.2.3:4455-7") == ("10.1.2.3", 4455)
    assert unique_id_parser("%{+X}o %ci_%Ts").client("0A010203_1234") == ("10.1.2.3", None)
    assert unique_id_parser("%Ts_%rt") is None  # names no client


def test_unique_id_header_is_exact_even_in_a_cut_head():
    head = _head("X-Forwarded-For: 10.232.1.10", f"X-Unique-ID: {UID}", "X-More: y" * 40)
    cut = head[: head.index(b"X-More") + 4]
    claim = client_claim(cut, unique_id_header="x-unique-id", unique_id=unique_id_parser(UID_FORMAT))
    assert claim.source == "unique_id" and claim.port == 0xBC61 and claim.unique_id == UID
    # the id's own line cut: not read
    cut = head[: head.index(UID.encode()) + 10]
    assert client_claim(cut, unique_id_header="X-Unique-ID",
                        unique_id=unique_id_parser(UID_FORMAT)) is None
    # without the format: the id for the log, the address from forwarded-for
    claim = client_claim(head, unique_id_header="X-Unique-ID")
    assert claim.source == "forwarded_for" and claim.unique_id == UID


def test_proxy_header_outranks_headers_and_local_falls_through():
    data = _v1("10.232.1.20", sport=1234) + _head("X-Forwarded-For: 10.232.1.10")
    claim = client_claim(data)
    assert claim.source == "proxy_v1" and claim.port == 1234
    data = _v2(command=0) + _head("X-Forwarded-For: 10.232.1.30")
    claim = client_claim(data)
    assert claim.source == "forwarded_for" and claim.address == parse_address("10.232.1.30")


def test_signals_and_no_signals():
    assert has_signal(_v1()) and has_signal(_v2()[:12])
    assert has_signal(_head("x-real-ip: 1.2.3.4"))
    assert not has_signal(_head("Host: x")) and not has_signal(b"\x16\x03\x01")


def test_config_names_the_payload_signals():
    config = parse_config("""
defaults
    mode http
    option forwardfor header X-Client
frontend fe
    bind 10.0.0.1:80
    unique-id-format %{+X}o\\ %ci:%cp_%Ts
    unique-id-header X-Req
    default_backend be
backend be
    server a 10.0.0.2:80 send-proxy
    server b 10.0.0.3:80 send-proxy-v2 check
    server c 10.0.0.4:80
""")
    assert config.payload_signals
    fe = config.frontends[0]
    assert (fe.forwardfor_header, fe.unique_id_header) == ("X-Client", "X-Req")
    assert unique_id_parser(fe.unique_id_format).client("0A000005:0050_12") == ("10.0.0.5", 80)
    assert [s.send_proxy for s in config.backends[0].servers] == [1, 2, 0]
    plain = parse_config("frontend fe\n    bind :80\n    default_backend be\n"
                         "backend be\n    server a 10.0.0.2:80\n")
    assert not plain.payload_signals

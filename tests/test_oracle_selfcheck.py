"""The oracle checks itself, and the pyshark engine agrees with it.

Two kinds of ground truth, neither taken from tracer's decoder:
- a real capture made here: dumpcap on `lo` (capture filter on a port this module picks) while
  Python sockets on 127.0.0.1 and ::1 do a handshake, send known payloads, close with FINs, and
  abort a second connection with an RST (SO_LINGER 0). What the kernel must have sent (ports,
  payload sizes, MSS from the MTU, options from the sysctls) is known without decoding.
- a crafted pcapng whose every header we wrote ourselves: the awkward cases (IP-in-IP, 6in4,
  QinQ, raw SACK edges, fragments, snaplen cuts, reserved flag bits, ICMP-quoted TCP, a bogus
  data offset, a repeated option, three link types) with the values each row must hold.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from oracle import (
    LINKTYPE_UNKNOWN,
    compare_packets,
    parse_epoch_ns,
    tshark_decode,
    tshark_frame_count,
    tshark_linktypes,
    tshark_packets,
    wtap_encap_to_linktype,
)

from tracer.errors import CaptureOpenError, EngineError
from tracer.packet import (
    OPT_MSS,
    OPT_SACK,
    OPT_SACK_PERM,
    OPT_TIMESTAMP,
    OPT_WSCALE,
    PACKET_DTYPE,
    TCP_FLAG_NAMES,
    TH_ACK,
    TH_CWR,
    TH_ECE,
    TH_FIN,
    TH_NS,
    TH_PSH,
    TH_RST,
    TH_SYN,
    TH_URG,
    DecodeCounts,
    parse_address,
)
from tracer.source.pyshark_engine import encap_to_linktype, read_packets_pyshark

SOCKET_TIMEOUT_S = 5.0
FIRST_PAYLOADS = (b"a" * 100, b"b" * 3000)  # client -> server on the normal connection
REPLY = b"goodbye"  # server -> client after the client's FIN
ABORTED_PAYLOAD = b"hello"  # client -> server on the connection the client resets


# --- the real capture -----------------------------------------------------------------------


@dataclass
class Conversation:
    family: int
    host: str
    normal_port: int = 0  # client port of the connection closed with FINs
    aborted_port: int = 0  # client port of the connection closed with an RST


@dataclass
class LoopbackCapture:
    path: Path
    server_port: int
    started_ns: int
    ended_ns: int
    conversations: list[Conversation] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _converse(conv: Conversation, server_port: int) -> None:
    """One FIN-closed and one RST-aborted connection, every wait bounded."""
    received_abort = threading.Event()
    errors: list[BaseException] = []
    with socket.socket(conv.family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.settimeout(SOCKET_TIMEOUT_S)
        listener.bind((conv.host, server_port))
        listener.listen(4)

        def serve() -> None:
            try:
                peer, _ = listener.accept()
                with peer:
                    peer.settimeout(SOCKET_TIMEOUT_S)
                    wanted = sum(len(p) for p in FIRST_PAYLOADS)
                    got = b""
                    for _ in range(1000):
                        chunk = peer.recv(65536)
                        if not chunk:
                            break
                        got += chunk
                    assert len(got) == wanted, (len(got), wanted)
                    peer.sendall(REPLY)
                peer, _ = listener.accept()
                with peer:
                    peer.settimeout(SOCKET_TIMEOUT_S)
                    assert peer.recv(len(ABORTED_PAYLOAD)) == ABORTED_PAYLOAD
                    received_abort.set()
                    try:
                        peer.recv(16)  # returns when the client's RST arrives
                    except ConnectionResetError:
                        pass
            except BaseException as err:  # reported by the main thread
                errors.append(err)
                received_abort.set()

        server = threading.Thread(target=serve)
        server.start()
        try:
            with socket.create_connection((conv.host, server_port), SOCKET_TIMEOUT_S) as client:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conv.normal_port = client.getsockname()[1]
                for payload in FIRST_PAYLOADS:
                    client.sendall(payload)
                    time.sleep(0.05)  # one segment per send, whatever autocorking does
                client.shutdown(socket.SHUT_WR)
                reply = b""
                for _ in range(100):
                    chunk = client.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                assert reply == REPLY
            client = socket.create_connection((conv.host, server_port), SOCKET_TIMEOUT_S)
            conv.aborted_port = client.getsockname()[1]
            client.sendall(ABORTED_PAYLOAD)
            assert received_abort.wait(SOCKET_TIMEOUT_S)
            time.sleep(0.05)  # let the server's ACK arrive, so the RST is the last word
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        finally:
            server.join(SOCKET_TIMEOUT_S * 3)
    assert not server.is_alive(), "server thread did not finish"
    if errors:
        raise errors[0]


def _start_dumpcap(path: Path, port: int) -> subprocess.Popen:
    dumpcap = subprocess.Popen(
        ["dumpcap", "-q", "-i", "lo", "-f", f"tcp port {port}", "-w", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    # dumpcap says "Capturing on 'Loopback: lo'" once the filter is attached.
    deadline = time.monotonic() + 10
    line = b""
    os.set_blocking(dumpcap.stderr.fileno(), False)
    while time.monotonic() < deadline and b"Capturing on" not in line:
        if dumpcap.poll() is not None:
            break
        line += dumpcap.stderr.read() or b""
        time.sleep(0.05)
    if b"Capturing on" not in line:
        _stop(dumpcap)
        pytest.fail(f"dumpcap did not start: {line.decode(errors='replace').strip()}")
    time.sleep(0.2)
    return dumpcap


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if process.stderr:
        process.stderr.close()


@pytest.fixture(scope="module")
def loopback_capture(tmp_path_factory) -> LoopbackCapture:
    path = tmp_path_factory.mktemp("selfcheck") / "lo.pcapng"
    port = _free_port()
    conversations = [Conversation(socket.AF_INET, "127.0.0.1")]
    if _ipv6_loopback_works():
        conversations.append(Conversation(socket.AF_INET6, "::1"))
    dumpcap = _start_dumpcap(path, port)
    try:
        started_ns = time.time_ns()
        for conv in conversations:
            _converse(conv, port)
        time.sleep(0.3)  # the last RST reaches dumpcap's buffer
        ended_ns = time.time_ns()
    finally:
        _stop(dumpcap)
    return LoopbackCapture(path, port, started_ns, ended_ns, conversations)


def _sysctl(name: str) -> int:
    return int(Path("/proc/sys", *name.split(".")).read_text().split()[0])


def _flow(rows: np.ndarray, host: str, sport: int, dport: int) -> np.ndarray:
    hi, lo = parse_address(host)
    return rows[(rows["src_hi"] == hi) & (rows["src_lo"] == lo) & (rows["sport"] == sport)
                & (rows["dport"] == dport)]


def test_tshark_packets_match_what_the_sockets_did(loopback_capture):
    cap = loopback_capture
    rows = tshark_packets(str(cap.path))
    assert len(rows) == tshark_frame_count(str(cap.path))  # the filter let only our TCP in
    assert np.all(np.diff(rows["frame"]) == 1) and rows["frame"][0] == 1
    assert np.all(np.diff(rows["ts_ns"]) >= 0)
    assert cap.started_ns - 10**9 <= rows["ts_ns"][0] and rows["ts_ns"][-1] <= cap.ended_ns
    assert set(rows["linktype"].tolist()) == {1}  # Linux lo captures as Ethernet
    assert np.all(rows["caplen"] == rows["wirelen"]) and np.all(rows["iface"] == 0)

    mtu = int(Path("/sys/class/net/lo/mtu").read_text())
    expected_options = OPT_MSS | OPT_TIMESTAMP * _sysctl("net.ipv4.tcp_timestamps")
    expected_options |= OPT_WSCALE * _sysctl("net.ipv4.tcp_window_scaling")
    expected_options |= OPT_SACK_PERM * _sysctl("net.ipv4.tcp_sack")
    for conv in cap.conversations:
        v6 = conv.family == socket.AF_INET6
        ttl = _sysctl("net.ipv6.conf.lo.hop_limit") if v6 else _sysctl("net.ipv4.ip_default_ttl")
        out = _flow(rows, conv.host, conv.normal_port, cap.server_port)
        back = _flow(rows, conv.host, cap.server_port, conv.normal_port)
        syn, synack = out[0], back[0]
        assert syn["flags"] == TH_SYN and synack["flags"] == TH_SYN | TH_ACK
        assert syn["ip_version"] == (6 if v6 else 4) and syn["ttl"] == ttl
        assert syn["opt_present"] == expected_options == synack["opt_present"]
        # MSS = what fits in one IP packet of the MTU (IPv4 total length tops out at 65535).
        assert syn["mss"] == (min(mtu - 40, 0xFFFF) - 20 if v6 else min(mtu, 0xFFFF) - 40)
        assert synack["ack"] == (int(syn["seq"]) + 1) % 2**32
        if expected_options & OPT_TIMESTAMP:
            assert syn["tsval"] != 0 and syn["tsecr"] == 0 and synack["tsecr"] == syn["tsval"]
        if not v6:
            assert syn["df"] and _sysctl("net.ipv4.ip_no_pmtu_disc") == 0
        else:
            assert syn["ip_id"] == 0 and not syn["df"]
        assert out["payload_len"].sum() == sum(len(p) for p in FIRST_PAYLOADS)
        assert sorted(out["payload_len"][out["payload_len"] > 0].tolist()) == sorted(
            len(p) for p in FIRST_PAYLOADS)
        assert back["payload_len"].sum() == len(REPLY)
        data = out[out["payload_len"] > 0]
        assert data["seq"][0] == (int(syn["seq"]) + 1) % 2**32
        assert data["seq"][1] == (int(data["seq"][0]) + len(FIRST_PAYLOADS[0])) % 2**32
        assert np.count_nonzero(out["flags"] & TH_FIN) == 1
        assert np.count_nonzero(back["flags"] & TH_FIN) == 1
        assert not np.any(out["flags"] & TH_RST) and not np.any(back["flags"] & TH_RST)
        if expected_options & OPT_TIMESTAMP:
            assert np.all(out["tcp_hdr_len"][1:] == 32)  # 20 + NOP NOP timestamps

        aborted = _flow(rows, conv.host, conv.aborted_port, cap.server_port)
        resets = aborted[(aborted["flags"] & TH_RST) != 0]
        assert len(resets) == 1 and resets[0]["payload_len"] == 0
        assert resets[0]["frame"] == aborted["frame"].max()  # the client's last word
        assert aborted["payload_len"].sum() == len(ABORTED_PAYLOAD)
        # The RST carries the next sequence number after everything the client sent.
        assert resets[0]["seq"] == (int(aborted[0]["seq"]) + 1 + len(ABORTED_PAYLOAD)) % 2**32


def _read_all_pyshark(path, **kwargs) -> tuple[np.ndarray, DecodeCounts, int]:
    parts, total, batches = [], DecodeCounts(), 0
    for packets, counts in read_packets_pyshark(str(path), **kwargs):
        assert packets.dtype == PACKET_DTYPE
        assert counts.tcp_packets == len(packets)
        parts.append(packets)
        total.merge(counts)
        batches += 1
    rows = np.concatenate(parts) if parts else np.zeros(0, PACKET_DTYPE)
    return rows, total, batches


def test_pyshark_engine_agrees_with_tshark_on_the_loopback_capture(loopback_capture):
    path = loopback_capture.path
    theirs = tshark_packets(str(path))
    ours, counts, batches = _read_all_pyshark(path, batch_size=7)
    assert compare_packets(ours, theirs) == []
    frames = tshark_frame_count(str(path))
    assert counts.frames == frames and batches == -(-frames // 7)
    assert counts.tcp_packets == len(theirs) and counts.non_tcp == {} and counts.anomalies == {}
    assert counts.linktypes == {1: frames}
    for bit, name in enumerate(TCP_FLAG_NAMES):
        assert counts.flag_counts[name] == np.count_nonzero(theirs["flags"] & (1 << bit))
    assert counts.flag_counts["RST"] == len(loopback_capture.conversations)


def test_pyshark_engine_runs_under_the_uvloop_policy_and_in_a_worker_thread(loopback_capture):
    uvloop = pytest.importorskip("uvloop")
    theirs = tshark_packets(str(loopback_capture.path))
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        ours, _, _ = _read_all_pyshark(loopback_capture.path)

        async def from_a_running_loop() -> np.ndarray:
            with pytest.raises(RuntimeError, match="worker thread"):
                read_packets_pyshark(str(loopback_capture.path))
            result = await asyncio.to_thread(_read_all_pyshark, loopback_capture.path)
            return result[0]

        threaded = asyncio.run(from_a_running_loop())
    finally:
        asyncio.set_event_loop_policy(previous)
    assert compare_packets(ours, theirs) == []
    assert compare_packets(threaded, theirs) == []


# --- the crafted capture --------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp(sport, dport, seq, ack, flags, *, window=1000, urgent=0, options=b"", payload=b"",
         data_offset=None) -> bytes:
    options += b"\x01" * (-len(options) % 4)
    offset = data_offset if data_offset is not None else (20 + len(options)) // 4
    return struct.pack("!HHIIHHHH", sport, dport, seq, ack, (offset << 12) | flags, window, 0,
                       urgent) + options + payload


def _ipv4(src, dst, proto, payload, *, ttl=64, ident=0x1234, df=True, mf=False, frag_words=0,
          total_len=None) -> bytes:
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | frag_words
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total_len or 20 + len(payload), ident, flags,
                         ttl, proto, 0, ipaddress.IPv4Address(src).packed,
                         ipaddress.IPv4Address(dst).packed)
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + payload


def _ipv6(src, dst, next_header, payload, *, hop_limit=64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x6000_0000, len(payload), next_header, hop_limit,
                       ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def _eth(ethertype, payload, tags=()) -> bytes:
    head = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02"
    head += b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags)
    return head + struct.pack("!H", ethertype) + payload


def _pcapng(linktypes, records) -> bytes:
    """records: (interface, ts_ns, captured bytes, wire length); nanosecond interfaces."""
    def block(block_type, body):
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", block_type, 12 + len(body)) + body + struct.pack(
            "<I", 12 + len(body))

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for linktype in linktypes:
        tsresol = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
        out += block(1, struct.pack("<HHI", linktype, 0, 65535) + tsresol)
    for iface, ts_ns, data, wire_len in records:
        out += block(6, struct.pack("<IIIII", iface, ts_ns >> 32, ts_ns & 0xFFFF_FFFF, len(data),
                                    wire_len) + data)
    return out


A, B = "10.0.0.1", "10.0.0.2"
A6, B6 = "2001:db8::1", "2001:db8::2"
T0_NS = 1_700_000_000_123_456_789
ALL_OPTIONS = (struct.pack("!BBH", 2, 4, 1460) + struct.pack("!BBB", 3, 3, 14) + b"\x04\x02"
               + struct.pack("!BBII", 8, 10, 111, 222) + b"\x01\x01"
               + struct.pack("!BBIIII", 5, 18, 4_000_000_000, 4_000_000_100, 5, 10))


def _crafted_frames() -> list[tuple[int, bytes, int, dict | None]]:
    """(interface, frame, wire length, expected row fields or None for "no row")."""
    frames: list[tuple[int, bytes, int, dict | None]] = []

    def add(frame, expected, *, iface=0, wire_len=None):
        frames.append((iface, frame, wire_len or len(frame), expected))

    every_flag = TH_NS | TH_CWR | TH_ECE | TH_URG | TH_ACK | TH_PSH
    add(_eth(0x0800, _ipv4(A, B, 6, _tcp(1000, 80, 4294967000, 17, every_flag, urgent=7,
                                         options=ALL_OPTIONS, payload=b"abc"))),
        dict(sport=1000, flags=every_flag, urgent=7, payload_len=3, tcp_hdr_len=60, mss=1460,
             wscale=14, tsval=111, tsecr=222, sack_count=2, seq=4294967000, ack=17,
             opt_present=OPT_MSS | OPT_WSCALE | OPT_SACK_PERM | OPT_TIMESTAMP | OPT_SACK,
             sack_left=[4_000_000_000, 5, 0, 0], sack_right=[4_000_000_100, 10, 0, 0]))
    add(_eth(0x0800, _ipv4(A, B, 6, _tcp(1001, 80, 1, 2, TH_ACK)), tags=[(0x8100, 100)]),
        dict(sport=1001, vlan=100))
    add(_eth(0x86DD, _ipv6(A6, B6, 6, _tcp(1002, 443, 3, 4, TH_SYN)),
             tags=[(0x88A8, 200), (0x8100, 300)]),
        dict(sport=1002, vlan=200, ip_version=6, src=A6, dst=B6, ip_id=0, df=False))
    quoted = _ipv4(B, A, 6, _tcp(80, 1000, 99, 0, TH_SYN)[:8])
    add(_eth(0x0800, _ipv4(A, B, 1, struct.pack("!BBHI", 3, 3, 0, 0) + quoted)), None)
    add(_eth(0x0800, _ipv4("192.168.0.1", "192.168.0.2", 4,
                           _ipv4(A, B, 6, _tcp(1003, 80, 5, 6, TH_FIN | TH_ACK), ttl=33, ident=77),
                           ttl=55, ident=99)),
        dict(sport=1003, src=A, dst=B, ttl=33, ip_id=77))
    add(_eth(0x0800, _ipv4("192.168.0.1", "192.168.0.2", 41,
                           _ipv6(A6, B6, 6, _tcp(1004, 80, 7, 8, TH_RST), hop_limit=12))),
        dict(sport=1004, ip_version=6, src=A6, dst=B6, ttl=12, ip_id=0, df=False))
    segment = _tcp(1005, 80, 9, 10, TH_PSH | TH_ACK, payload=b"P" * 40)
    add(_eth(0x0800, _ipv4(A, B, 6, segment[:32], mf=True, df=False, total_len=52)),
        dict(sport=1005, payload_len=12, df=False))
    add(_eth(0x0800, _ipv4(A, B, 6, segment[32:], df=False, frag_words=4)), None)
    whole = _eth(0x0800, _ipv4(A, B, 6, _tcp(1006, 80, 11, 12, TH_ACK, payload=b"Z" * 1000)))
    add(whole[:14 + 20 + 20], dict(sport=1006, payload_len=1000, caplen=54, wirelen=len(whole)),
        wire_len=len(whole))
    add(_eth(0x86DD, _ipv6(A6, B6, 0, bytes([6, 0, 1, 4, 0, 0, 0, 0])
                           + _tcp(1007, 80, 13, 14, TH_ACK))),
        dict(sport=1007, ip_version=6, src=A6, dst=B6, ip_id=0, df=False))
    add(_eth(0x0800, _ipv4(A, B, 6, _tcp(1008, 80, 15, 16, 0xE00 | TH_ACK))),
        dict(sport=1008, flags=0xE00 | TH_ACK))  # reserved bits kept, as tshark shows them
    add(_eth(0x0800, _ipv4(A, B, 17, struct.pack("!HHHH", 53, 53, 12, 0) + b"abcd")), None)
    add(_eth(0x0806, bytes(28)), None)
    add(_ipv4(A, B, 6, _tcp(1009, 80, 17, 18, TH_ACK)), dict(sport=1009, linktype=101, iface=1),
        iface=1)
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", 0x0800)
    add(sll + _ipv4(A, B, 6, _tcp(1010, 80, 19, 20, TH_ACK)),
        dict(sport=1010, linktype=113, iface=2), iface=2)
    add(_eth(0x0800, _ipv4(A, B, 6, _tcp(1011, 80, 21, 22, TH_ACK, data_offset=3))), None)
    two_mss = struct.pack("!BBH", 2, 4, 1000) + struct.pack("!BBH", 2, 4, 2000)
    add(_eth(0x0800, _ipv4(A, B, 6, _tcp(1012, 80, 23, 24, TH_SYN, options=two_mss))),
        dict(sport=1012, mss=1000, opt_present=OPT_MSS, tcp_hdr_len=28))
    cut_options = _eth(0x0800, _ipv4(A, B, 6, _tcp(1013, 80, 25, 26, TH_ACK,
                                                   options=ALL_OPTIONS[:9])))
    add(cut_options[:14 + 20 + 26], None, wire_len=len(cut_options))
    # Data offsets longer than the IP payload (tshark: "Short segment"), IPv4 and IPv6.
    long_header = _tcp(1014, 80, 27, 28, TH_ACK, options=ALL_OPTIONS[:9])
    add(_eth(0x0800, _ipv4(A, B, 6, long_header, total_len=20 + 24)), None)
    short6 = bytearray(_ipv6(A6, B6, 6, _tcp(1015, 80, 29, 30, TH_ACK, options=ALL_OPTIONS[:9])))
    short6[4:6] = struct.pack("!H", 24)
    add(_eth(0x86DD, bytes(short6)), None)
    return frames


CRAFTED_LINKTYPES = (1, 101, 113)


@pytest.fixture(scope="module")
def crafted_capture(tmp_path_factory) -> tuple[Path, list]:
    frames = _crafted_frames()
    records = [(iface, T0_NS + 1000 * i, frame, wire)
               for i, (iface, frame, wire, _) in enumerate(frames)]
    path = tmp_path_factory.mktemp("crafted") / "awkward.pcapng"
    path.write_bytes(_pcapng(CRAFTED_LINKTYPES, records))
    return path, frames


def test_oracle_rows_hold_the_crafted_values(crafted_capture):
    path, frames = crafted_capture
    result = tshark_decode(str(path))
    rows = {int(row["frame"]): row for row in result.packets}
    expected_frames = {i + 1 for i, (*_, expected) in enumerate(frames) if expected is not None}
    assert set(rows) == expected_frames
    assert set(result.rejected) == {16, 18, 19, 20}
    assert "< 20" in result.rejected[16] and "option" in result.rejected[18]
    assert all("longer than the ip payload" in result.rejected[f] for f in (19, 20))
    defaults = dict(ip_version=4, src=A, dst=B, ttl=64, ip_id=0x1234, df=True, vlan=0, dport=80,
                    window=1000, tcp_hdr_len=20, payload_len=0, urgent=0, opt_present=0,
                    linktype=1, iface=0)
    for number, row in rows.items():
        iface, frame, wire, expected = frames[number - 1]
        want = {**defaults, "caplen": len(frame), "wirelen": wire, **expected}
        if number == 3:
            want["dport"] = 443
        assert row["ts_ns"] == T0_NS + 1000 * (number - 1)
        for name, value in want.items():
            if name in ("src", "dst"):
                assert (row[f"{name}_hi"], row[f"{name}_lo"]) == parse_address(value), number
            elif name in ("sack_left", "sack_right"):
                assert row[name].tolist() == value, (number, name)
            else:
                assert row[name] == value, (number, name, row[name], value)


def test_pyshark_engine_agrees_with_tshark_on_the_crafted_capture(crafted_capture):
    path, frames = crafted_capture
    ours, counts, _ = _read_all_pyshark(path, batch_size=5)
    # Frame 18's options were cut by the snaplen: the oracle gives no row, the engine keeps
    # the segment with the options tshark could show (like the native decoder).
    cut = ours[ours["frame"] == 18]
    assert len(cut) == 1 and cut[0]["opt_present"] == OPT_MSS and cut[0]["mss"] == 1460
    assert compare_packets(ours[ours["frame"] != 18], tshark_packets(str(path))) == []
    assert counts.frames == len(frames)
    assert counts.anomalies == {"bad_tcp_header_length": 3, "truncated_tcp_options": 1}
    assert counts.non_tcp == {"ipv4/icmp": 1, "ipv4/fragment": 1, "ipv4/udp": 1, "arp": 1}
    assert counts.linktypes == {1: len(frames) - 2, 101: 1, 113: 1}


def test_linktype_maps_round_trip_through_tshark(crafted_capture):
    probe = (1, 0, 101, 228, 229, 108, 113, 276)
    for mapping in (wtap_encap_to_linktype(), encap_to_linktype(shutil.which("tshark"))):
        assert set(probe) <= set(mapping.values())
        assert len(set(mapping.values())) == len(mapping)  # one LINKTYPE per encapsulation
    assert wtap_encap_to_linktype() == encap_to_linktype(shutil.which("tshark"))
    assert LINKTYPE_UNKNOWN not in wtap_encap_to_linktype().values()
    assert tshark_linktypes(str(crafted_capture[0])) == ["ether", "rawip", "linux-sll"]


def test_compare_packets_reports_each_difference(crafted_capture):
    theirs = tshark_packets(str(crafted_capture[0]))
    ours = theirs.copy()
    assert compare_packets(ours, theirs) == []
    ours["seq"][0] += 1
    ours["sack_left"][1, 3] = 9
    ours["src_lo"][2] ^= 1
    messages = compare_packets(ours[:-1], theirs)
    first, second, third = (int(theirs["frame"][i]) for i in range(3))
    assert f"frame {first}: seq ours={int(theirs['seq'][0]) + 1} theirs={theirs['seq'][0]}" \
        in messages
    assert f"frame {second}: sack_left ours=[0,0,0,9] theirs=[0,0,0,0]" in messages
    assert f"frame {third}: src ours=2001:db8::" in messages[2]
    assert messages[-1] == f"frame {theirs['frame'][-1]}: only in theirs"
    assert len(compare_packets(ours[:0], theirs, limit=3)) == 3


def test_epoch_text_becomes_exact_nanoseconds():
    assert parse_epoch_ns("1700000000.123456789") == 1_700_000_000_123_456_789
    assert parse_epoch_ns("1795306643.729064000") == 1_795_306_643_729_064_000
    assert parse_epoch_ns("0.000000001") == 1


# --- the engine's edges ---------------------------------------------------------------------


def _tshark_children() -> list[int]:
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if rest.split()[1] == me and name == "tshark":
            found.append(int(entry))
    return found


def test_stopping_early_ends_tshark(loopback_capture):
    batches = read_packets_pyshark(str(loopback_capture.path), batch_size=1)
    packets, counts = next(batches)
    assert len(packets) == 1 and counts.frames == 1
    assert _tshark_children()  # still reading
    batches.close()
    assert _tshark_children() == []


def test_user_errors_are_typed_and_one_line(tmp_path, loopback_capture):
    with pytest.raises(CaptureOpenError):
        read_packets_pyshark(str(tmp_path / "missing.pcap"))
    with pytest.raises(CaptureOpenError):
        read_packets_pyshark(str(tmp_path))
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(bytes([0xDE, 0xAD, 0xBE, 0xEF]) * 16)
    with pytest.raises(EngineError) as raised:
        list(read_packets_pyshark(str(junk)))
    assert "\n" not in str(raised.value) and "format" in str(raised.value)

    cut = tmp_path / "cut.pcapng"
    data = loopback_capture.path.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    ours, counts, _ = _read_all_pyshark(cut)
    assert counts.anomalies == {"capture_cut_short": 1}
    assert compare_packets(ours, tshark_packets(str(cut), tolerate_cut_short=True)) == []
    assert counts.frames == tshark_frame_count(str(cut), tolerate_cut_short=True) > 0

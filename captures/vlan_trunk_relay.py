"""A userspace VLAN trunk between two network namespaces, for the tagged real captures.

Why it exists: the kernel these captures were made on is built without CONFIG_VLAN_8021Q, so
`ip link add ... type vlan` fails ("Unknown device type"), and bridge VLAN filtering and the tc
`vlan` action (which depend on or sit beside it) are missing too. Yet a reset tracer meets
802.1Q and 802.1ad+802.1Q (QinQ) frames on real trunks, and a capture whose tags went through
the kernel's receive path (tag stripped into metadata, put back by libpcap from the packet
socket's auxiliary data) is worth having next to the synthetic ones.

Theory of operation: the relay plays the two VLAN sub-interfaces. Each host namespace has an
untagged veth whose peer lives in the relay's namespace (`access` ports); a third veth pair
(`trunk` ports, both ends in the relay's namespace) is the tagged wire that dumpcap watches:

    client ns: cli0 <-> acc_c  [relay: push tags]  trunk_c ==tagged== trunk_s  [relay: pop tags]
    server ns: srv0 <-> acc_s                       (and the same in reverse)

Frames from an access port get the tag stack pushed and are sent out of the near trunk end;
frames arriving on a trunk end lose every tag and go out of the far access port.

Rules:
- Frames we sent ourselves come back to our packet sockets as PACKET_OUTGOING: skip them, or
  every frame would loop.
- Hosts hand their veth frames over with offloaded (partial) TCP/UDP checksums. Frames written
  by a packet socket are not marked as such, so the receiving host would verify and drop them:
  the relay fills in the real checksums (which also makes the trunk capture look like a wire).
- The hosts' veths must not send GSO super-frames (set `gso_max_segs 1` on them): a packet
  socket cannot send a frame longer than the MTU without a virtio-net header.
- Bounded: the relay exits after --duration seconds or on SIGTERM/SIGINT. A Python loop per
  frame is fine here: this is a fixture that moves a few thousand frames.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # linux/if_packet.h
TAG_TPIDS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, old pre-standard QinQ
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17


def tag_stack(spec: str) -> bytes:
    """'8100:42' or '88a8:100,8100:7' (outermost first) -> the bytes pushed after the MACs."""
    out = b""
    for item in spec.split(","):
        tpid, vid = item.split(":")
        out += struct.pack("!HH", int(tpid, 16), int(vid) & 0x0FFF)
    return out


def internet_checksum(data: bytes) -> int:
    # 2**16 == 1 (mod 0xffff), so a big-endian integer mod 0xffff is the one's complement sum
    # of its 16-bit words; 0 and 0xffff are the same number in one's complement.
    if len(data) % 2:
        data += b"\0"
    return ~(int.from_bytes(data, "big") % 0xFFFF) & 0xFFFF


def fill_transport_checksum(frame: bytearray) -> None:
    """Recompute the TCP or UDP checksum of an untagged Ethernet frame, in place."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == ETHERTYPE_IPV4 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        total_length = struct.unpack_from("!H", frame, 16)[0]
        proto = frame[23]
        start, end = 14 + ihl, 14 + total_length
        pseudo = bytes(frame[26:34]) + struct.pack("!BBH", 0, proto, end - start)
    elif ethertype == ETHERTYPE_IPV6 and len(frame) >= 54:
        proto = frame[20]  # only a transport header right after the fixed header is handled
        payload_length = struct.unpack_from("!H", frame, 18)[0]
        start, end = 54, 54 + payload_length
        pseudo = bytes(frame[22:54]) + struct.pack("!IxxxB", end - start, proto)
    else:
        return
    if end > len(frame):
        return
    offset = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}.get(proto)
    if offset is None:
        return
    frame[start + offset : start + offset + 2] = b"\0\0"
    value = internet_checksum(pseudo + bytes(frame[start:end]))
    if proto == IPPROTO_UDP and value == 0:
        value = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    struct.pack_into("!H", frame, start + offset, value)


def push_tags(frame: bytes, tags: bytes) -> bytes:
    untagged = bytearray(frame)
    fill_transport_checksum(untagged)
    return bytes(untagged[:12]) + tags + bytes(untagged[12:])


def pop_tags(frame: bytes) -> bytes:
    # The receiving kernel already moved the outermost tag into skb metadata; inner tags are
    # still inline.
    out = bytearray(frame)
    for _ in range(4):
        if len(out) < 18 or struct.unpack_from("!H", out, 12)[0] not in TAG_TPIDS:
            break
        del out[12:16]
    return bytes(out)


def open_port(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def run(pairs: list[tuple[str, str]], tags: bytes, duration_s: float) -> int:
    """pairs: (access port, its trunk end), one per host side."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    sockets: dict[str, socket.socket] = {}
    for access, trunk in pairs:
        sockets[access] = open_port(access)
        sockets[trunk] = open_port(trunk)
    (access_a, trunk_a), (access_b, trunk_b) = pairs
    # where a frame read on a port goes, and how it is changed
    routes = {
        access_a: (trunk_a, lambda f: push_tags(f, tags)),
        access_b: (trunk_b, lambda f: push_tags(f, tags)),
        trunk_a: (access_a, pop_tags),  # arrived over the wire from side b
        trunk_b: (access_b, pop_tags),
    }
    selector = selectors.DefaultSelector()
    for name, sock in sockets.items():
        selector.register(sock, selectors.EVENT_READ, name)
    print("READY", flush=True)
    relayed = dropped = 0
    deadline = time.monotonic() + duration_s
    while not stop and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            for _ in range(64):  # drain a bounded number of frames per wake-up
                try:
                    frame, address = key.fileobj.recvfrom(65535)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue
                out_port, change = routes[key.data]
                try:
                    sockets[out_port].send(change(frame))
                    relayed += 1
                except OSError:
                    dropped += 1  # e.g. a full queue; TCP recovers, as on a real wire
    print(f"relay: {relayed} frames relayed, {dropped} dropped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side-a", required=True, help="ACCESS,TRUNK interface names")
    parser.add_argument("--side-b", required=True, help="ACCESS,TRUNK interface names")
    parser.add_argument("--tags", required=True, help="e.g. 8100:42 or 88a8:100,8100:7")
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    pairs = [tuple(args.side_a.split(",")), tuple(args.side_b.split(","))]
    return run(pairs, tag_stack(args.tags), args.duration)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())

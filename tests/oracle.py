"""tshark as the test oracle for decode: Wireshark's own reading of a capture, as packet rows.

Rules:
- `tshark_packets(path)` returns one `PACKET_DTYPE` row per TCP segment that tshark dissects
  outside ICMP (display filter `tcp && !icmp && !icmpv6`, so TCP headers quoted inside ICMP
  errors get no row), with every field taken from tshark's `-T fields` output, never from our
  own decoder. Tests compare the tracer's rows to these with `compare_packets`.
- tshark runs with `ORACLE_PREFS`: no IPv4/IPv6 reassembly (a first fragment's TCP header is
  dissected in its own frame, as the native decoder sees it), no TCP desegmentation and no
  sequence analysis (each frame stands alone, whatever came before), and absolute sequence
  numbers (so SACK edges come out raw, like tcp.seq_raw).
- A row needs the whole TCP header: tshark showed `tcp.flags` and `tcp.urgent_pointer`,
  `tcp.hdr_len` >= 20, the IP payload holds the header (else tshark leaves `tcp.len` out of a
  non-fragment: "Short segment"), and all `tcp.hdr_len - 20` option bytes were captured
  (`tcp.options` holds the captured option bytes only). Frames with a TCP layer that fail this
  are listed in `OracleResult.rejected` with the reason (only the snaplen-cut options reason
  mentions "option"), and get no row.

Awkward fields, and the rule taken for each:
- IP version and addresses come from the IP header that carries the TCP segment, i.e. the
  last `ip`/`ipv6` in `frame.protocols` before the first `tcp`. With IP-in-IP or 6in4, tshark
  lists every IP header's fields in order, so that header's values are occurrence k of
  `ip.*` (k = how many `ip` layers came before it). `ip.version` is useless for this: the
  IPv6 dissector fills it too.
- VLAN: the outermost tag, i.e. the first `vlan` or `ieee8021ad` layer in `frame.protocols`
  (tshark dissects an 802.1ad S-tag as `ieee8021ad`, with its id in `ieee8021ad.id`).
- Several occurrences of one TCP option (two MSS options): the first one wins. SACK blocks
  are taken in order, at most `MAX_SACK_BLOCKS`.
- `tcp.flags` is tshark's 12-bit field, kept whole (9 flags and the 3 reserved bits), as in PACKET_DTYPE.
- `payload_len` is `tcp.len`, which tshark computes from the IP length fields (so it is right
  under a snaplen). tshark omits `tcp.len` on IP fragments; there it is
  `ip.len - ip.hdr_len - tcp.hdr_len` for IPv4 and the captured `tcp.payload` length for IPv6
  (tshark does not show the extension-header length needed to do better).
- `ts_ns` is parsed from the decimal text of `frame.time_epoch`, never through a float; records
  without a timestamp (pcapng Simple Packet Blocks: tshark shows no frame.time_epoch) get 0.
- `iface` is `frame.interface_id` (absent for classic pcap: 0).
- `linktype`: tshark only shows `frame.encap_type`, Wireshark's internal WTAP_ENCAP number,
  which is not the pcap LINKTYPE and may change between Wireshark versions. We learn the
  mapping from the installed tshark itself (`wtap_encap_to_linktype`): one pcapng with one
  interface per LINKTYPE in `LINKTYPE_PROBES` and one record each, read back through tshark.
  Where several LINKTYPEs share one WTAP encapsulation (101, 12 and 14 are all raw IP), the
  first in `LINKTYPE_PROBES` is the answer. Unknown encapsulations give `LINKTYPE_UNKNOWN`.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

from tracer.packet import (
    MAX_SACK_BLOCKS,
    OPT_MSS,
    OPT_SACK,
    OPT_SACK_PERM,
    OPT_TIMESTAMP,
    OPT_WSCALE,
    PACKET_DTYPE,
    format_address,
    parse_address,
)

TCP_DISPLAY_FILTER = "tcp && !icmp && !icmpv6"

ORACLE_PREFS: tuple[str, ...] = (
    "ip.defragment:FALSE",
    "ipv6.defragment:FALSE",
    "tcp.desegment_tcp_streams:FALSE",
    "tcp.analyze_sequence_numbers:FALSE",
    "tcp.relative_sequence_numbers:FALSE",
)

LINKTYPE_UNKNOWN = 0xFFFF

# LINKTYPE values (tcpdump.org/linktypes.html) whose WTAP encapsulation we learn from tshark,
# in order of preference when two share an encapsulation. Each takes a record of zero bytes
# without wiretap refusing the file (types with a mandatory pseudo-header would).
LINKTYPE_PROBES: tuple[int, ...] = (
    1,  # ETHERNET
    0,  # NULL (BSD loopback)
    101,  # RAW (IPv4 or IPv6)
    228,  # IPV4
    229,  # IPV6
    108,  # LOOP (OpenBSD loopback)
    113,  # LINUX_SLL
    276,  # LINUX_SLL2
    9,  # PPP
    50,  # PPP_HDLC
    104,  # C_HDLC
    105,  # IEEE802_11
    127,  # IEEE802_11_RADIOTAP
    239,  # NFLOG
    12,  # DLT_RAW on OpenBSD, written as-is by some tools
    14,  # DLT_RAW on BSD/OS
)

# Fields asked of tshark, in output order. Several occurrences are joined with ",".
_FIELDS: tuple[str, ...] = (
    "frame.number",
    "frame.time_epoch",
    "frame.interface_id",
    "frame.encap_type",
    "frame.cap_len",
    "frame.len",
    "frame.protocols",
    "ip.src",
    "ip.dst",
    "ip.ttl",
    "ip.id",
    "ip.flags.df",
    "ip.flags.mf",
    "ip.frag_offset",
    "ip.len",
    "ip.hdr_len",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.hlim",
    "vlan.id",
    "ieee8021ad.id",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.flags",
    "tcp.window_size_value",
    "tcp.hdr_len",
    "tcp.len",
    "tcp.urgent_pointer",
    "tcp.options",
    "tcp.payload",
    "tcp.options.mss_val",
    "tcp.options.wscale.shift",
    "tcp.options.sack_perm",
    "tcp.options.sack_le",
    "tcp.options.sack_re",
    "tcp.options.timestamp.tsval",
    "tcp.options.timestamp.tsecr",
)
_COLUMN = {name: i for i, name in enumerate(_FIELDS)}


class OracleError(RuntimeError):
    """tshark or capinfos failed on a capture the test expected them to read."""


@dataclass
class OracleResult:
    packets: np.ndarray  # PACKET_DTYPE, one row per complete TCP header outside ICMP
    rejected: dict[int, str] = field(default_factory=dict)  # frame -> why it got no row


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise OracleError(f"{name} is not installed (apt-get install tshark)")
    return path


def _run(argv: Sequence[str], *, tolerate_cut_short: bool = False) -> str:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, errors="replace", check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip()]
        message = last[-1] if last else f"exit status {proc.returncode}"
        if not (tolerate_cut_short and "cut short" in proc.stderr):
            raise OracleError(f"{os.path.basename(argv[0])} failed: {message}")
    return proc.stdout


def tshark_command(path: str, fields: Iterable[str], display_filter: str | None,
                   extra_prefs: Iterable[str] = ()) -> list[str]:
    argv = [_tool("tshark"), "-n", "-r", path]
    for pref in (*ORACLE_PREFS, *extra_prefs):
        argv += ["-o", pref]
    if display_filter:
        argv += ["-Y", display_filter]
    argv += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in fields:
        argv += ["-e", name]
    return argv


def parse_epoch_ns(text: str) -> int:
    """'1700000000.123456789' -> 1700000000123456789, exactly (no float on the way)."""
    return int(Decimal(text).scaleb(9).to_integral_value())


def _values(cell: str) -> list[str]:
    return cell.split(",") if cell else []


def _int(text: str) -> int:
    return int(text, 0) if text.startswith("0x") else int(text)


def _first_int(cell: str, default: int = 0) -> int:
    values = _values(cell)
    return _int(values[0]) if values else default


def _hex_len(cell: str) -> int:
    """Byte count of tshark's FT_BYTES text in -T fields form (hex digits, no separators)."""
    values = _values(cell)
    return len(values[0]) // 2 if values else 0


def _occurrence(cell: str, index: int) -> str:
    values = _values(cell)
    if index >= len(values):
        raise OracleError(f"tshark printed {len(values)} values, wanted occurrence {index}")
    return values[index]


def _row_from_fields(cols: list[str], encap_map: dict[int, int], row: np.ndarray) -> str | None:
    """Fill `row` from one line of tshark fields; return a reason instead if it gets no row."""
    c = _COLUMN
    protocols = cols[c["frame.protocols"]].split(":")
    tcp_at = protocols.index("tcp")
    if not cols[c["tcp.hdr_len"]]:
        return "tcp header cut by the capture length"
    hdr_len = _first_int(cols[c["tcp.hdr_len"]])
    if hdr_len < 20:
        return f"tcp header length {hdr_len} < 20"
    if not cols[c["tcp.flags"]] or not cols[c["tcp.urgent_pointer"]]:
        return "tcp header not fully dissected"
    carriers = [i for i, name in enumerate(protocols[:tcp_at]) if name in ("ip", "ipv6")]
    if not carriers:
        return "tcp without an ip/ipv6 layer"
    carrier = carriers[-1]
    occurrence = protocols[:carrier].count(protocols[carrier])
    if protocols[carrier] == "ip":
        fragment = (_occurrence(cols[c["ip.flags.mf"]], occurrence) in ("1", "True")
                    or _int(_occurrence(cols[c["ip.frag_offset"]], occurrence)) != 0)
    else:
        fragment = "ipv6.fraghdr" in protocols[carrier:tcp_at]
    if not cols[c["tcp.len"]] and not fragment:
        # tshark: "Short segment. Segment/fragment does not contain a full TCP header".
        return "tcp header longer than the ip payload"
    if _hex_len(cols[c["tcp.options"]]) != hdr_len - 20:
        return "tcp options cut by the capture length"

    row["frame"] = int(cols[c["frame.number"]])
    if cols[c["frame.time_epoch"]]:  # records without a timestamp (pcapng SPB) keep 0
        row["ts_ns"] = parse_epoch_ns(cols[c["frame.time_epoch"]])
    row["iface"] = _first_int(cols[c["frame.interface_id"]])
    row["linktype"] = encap_map.get(_first_int(cols[c["frame.encap_type"]]), LINKTYPE_UNKNOWN)
    row["caplen"] = int(cols[c["frame.cap_len"]])
    row["wirelen"] = int(cols[c["frame.len"]])

    if protocols[carrier] == "ip":
        row["ip_version"] = 4
        src = _occurrence(cols[c["ip.src"]], occurrence)
        dst = _occurrence(cols[c["ip.dst"]], occurrence)
        row["ttl"] = _int(_occurrence(cols[c["ip.ttl"]], occurrence))
        row["ip_id"] = _int(_occurrence(cols[c["ip.id"]], occurrence))
        row["df"] = _occurrence(cols[c["ip.flags.df"]], occurrence) in ("1", "True")
    else:
        row["ip_version"] = 6
        src = _occurrence(cols[c["ipv6.src"]], occurrence)
        dst = _occurrence(cols[c["ipv6.dst"]], occurrence)
        row["ttl"] = _int(_occurrence(cols[c["ipv6.hlim"]], occurrence))
    row["src_hi"], row["src_lo"] = parse_address(src)
    row["dst_hi"], row["dst_lo"] = parse_address(dst)

    tags = [name for name in protocols if name in ("vlan", "ieee8021ad")]
    if tags:
        row["vlan"] = _first_int(cols[c["vlan.id" if tags[0] == "vlan" else "ieee8021ad.id"]])

    row["sport"] = _first_int(cols[c["tcp.srcport"]])
    row["dport"] = _first_int(cols[c["tcp.dstport"]])
    row["seq"] = _first_int(cols[c["tcp.seq_raw"]])
    row["ack"] = _first_int(cols[c["tcp.ack_raw"]])
    row["flags"] = _first_int(cols[c["tcp.flags"]])  # all 12 bits, reserved included
    row["window"] = _first_int(cols[c["tcp.window_size_value"]])
    row["tcp_hdr_len"] = hdr_len
    row["urgent"] = _first_int(cols[c["tcp.urgent_pointer"]])
    if cols[c["tcp.len"]]:
        row["payload_len"] = _first_int(cols[c["tcp.len"]])
    elif protocols[carrier] == "ip":  # a fragment: tshark leaves tcp.len out
        ip_len = _int(_occurrence(cols[c["ip.len"]], occurrence))
        ip_hdr_len = _int(_occurrence(cols[c["ip.hdr_len"]], occurrence))
        row["payload_len"] = max(ip_len - ip_hdr_len - hdr_len, 0)
    else:
        row["payload_len"] = _hex_len(cols[c["tcp.payload"]])

    present = 0
    if cols[c["tcp.options.mss_val"]]:
        present |= OPT_MSS
        row["mss"] = _first_int(cols[c["tcp.options.mss_val"]])
    if cols[c["tcp.options.wscale.shift"]]:
        present |= OPT_WSCALE
        row["wscale"] = _first_int(cols[c["tcp.options.wscale.shift"]])
    if cols[c["tcp.options.sack_perm"]]:
        present |= OPT_SACK_PERM
    lefts = [_int(v) for v in _values(cols[c["tcp.options.sack_le"]])][:MAX_SACK_BLOCKS]
    rights = [_int(v) for v in _values(cols[c["tcp.options.sack_re"]])][:MAX_SACK_BLOCKS]
    if lefts:
        present |= OPT_SACK
        count = min(len(lefts), len(rights))
        row["sack_count"] = count
        row["sack_left"][:count] = lefts[:count]
        row["sack_right"][:count] = rights[:count]
    if cols[c["tcp.options.timestamp.tsval"]]:
        present |= OPT_TIMESTAMP
        row["tsval"] = _first_int(cols[c["tcp.options.timestamp.tsval"]])
        row["tsecr"] = _first_int(cols[c["tcp.options.timestamp.tsecr"]])
    row["opt_present"] = present
    return None


def tshark_decode(path: str, extra_prefs: Iterable[str] = (), *,
                  tolerate_cut_short: bool = False) -> OracleResult:
    """tshark's TCP rows for a capture, plus the TCP frames it could not give a row."""
    out = _run(
        tshark_command(os.fspath(path), _FIELDS, TCP_DISPLAY_FILTER, extra_prefs),
        tolerate_cut_short=tolerate_cut_short,
    )
    lines = [line for line in out.split("\n") if line]
    encap_map = wtap_encap_to_linktype()
    packets = np.zeros(len(lines), dtype=PACKET_DTYPE)
    rejected: dict[int, str] = {}
    kept = 0
    for line in lines:
        cols = line.split("\t")
        if len(cols) != len(_FIELDS):
            raise OracleError(f"tshark printed {len(cols)} columns, expected {len(_FIELDS)}")
        reason = _row_from_fields(cols, encap_map, packets[kept])
        if reason is None:
            kept += 1
        else:
            packets[kept] = 0
            rejected[int(cols[_COLUMN["frame.number"]])] = reason
    return OracleResult(packets[:kept].copy(), rejected)


def tshark_packets(path: str, extra_prefs: Iterable[str] = (), *,
                   tolerate_cut_short: bool = False) -> np.ndarray:
    """One PACKET_DTYPE row per TCP segment tshark sees outside ICMP (see module rules)."""
    return tshark_decode(path, extra_prefs, tolerate_cut_short=tolerate_cut_short).packets


def tshark_frame_count(path: str, *, tolerate_cut_short: bool = False) -> int:
    """Number of records tshark reads from the capture (every frame, TCP or not)."""
    out = _run([_tool("tshark"), "-n", "-r", os.fspath(path), "-T", "fields",
                "-e", "frame.number"], tolerate_cut_short=tolerate_cut_short)
    return sum(1 for line in out.split("\n") if line.strip())


def tshark_linktypes(path: str) -> list[str]:
    """Wiretap's short encapsulation name per interface ("ether", "linux-sll", "rawip"...).

    From `capinfos -I` (interface #i -> "Encapsulation = Ethernet (1 - ether)"); formats
    without interface records fall back to the file encapsulation of `capinfos -E`.
    """
    out = _run([_tool("capinfos"), "-I", "-M", os.fspath(path)])
    names = []
    for line in out.splitlines():
        text = line.strip()
        if text.startswith("Encapsulation = ") and text.endswith(")") and " - " in text:
            names.append(text.rsplit(" - ", 1)[1][:-1])
    if names:
        return names
    out = _run([_tool("capinfos"), "-T", "-r", "-E", os.fspath(path)])
    return [out.strip().split("\t")[-1]] if out.strip() else []


def _probe_pcapng(linktypes: Sequence[int]) -> bytes:
    def block(block_type: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", block_type, 12 + len(body)) + body + struct.pack(
            "<I", 12 + len(body))

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for linktype in linktypes:
        out += block(0x00000001, struct.pack("<HHI", linktype, 0, 65535))
    for iface in range(len(linktypes)):
        out += block(0x00000006, struct.pack("<IIIII", iface, 0, 0, 0, 0))
    return out


@functools.cache
def wtap_encap_to_linktype() -> dict[int, int]:
    """The installed tshark's WTAP_ENCAP -> LINKTYPE map, learned by probing (see rules)."""
    with tempfile.TemporaryDirectory(prefix="tracer-oracle-") as tmp:
        probe = os.path.join(tmp, "linktypes.pcapng")
        with open(probe, "wb") as f:
            f.write(_probe_pcapng(LINKTYPE_PROBES))
        out = _run([_tool("tshark"), "-n", "-r", probe, "-T", "fields",
                    "-e", "frame.interface_id", "-e", "frame.encap_type"])
    mapping: dict[int, int] = {}
    for line in out.splitlines():
        iface, encap = (int(v) for v in line.split("\t"))
        if encap != 0:  # WTAP_ENCAP_UNKNOWN: this tshark does not know the LINKTYPE
            mapping.setdefault(encap, LINKTYPE_PROBES[iface])
    return mapping


def _describe(name: str, value) -> str:
    if isinstance(value, np.ndarray):
        return "[" + ",".join(str(int(v)) for v in value) + "]"
    if name == "flags":
        return f"0x{int(value):03x}"
    return str(value.item() if hasattr(value, "item") else value)


_ADDRESS_PAIRS = {"src_hi": "src", "src_lo": "src", "dst_hi": "dst", "dst_lo": "dst"}


def compare_packets(ours: np.ndarray, theirs: np.ndarray, *,
                    fields: Sequence[str] | None = None, limit: int = 50) -> list[str]:
    """Field-by-field differences, keyed by frame number; an empty list means agreement.

    Rows are matched on `frame`. Frames present on one side only are reported as such.
    `fields` limits the comparison (default: every PACKET_DTYPE field); at most `limit`
    messages are returned, the last one saying how many were left out.
    """
    names = list(fields) if fields is not None else list(PACKET_DTYPE.names)
    problems: list[tuple[int, str]] = []
    for label, rows in (("ours", ours), ("theirs", theirs)):
        frames, counts = np.unique(rows["frame"], return_counts=True)
        for frame in frames[counts > 1]:
            problems.append((int(frame), f"frame {frame}: {counts[frames == frame][0]} rows "
                                         f"in {label}"))
    only_ours = np.setdiff1d(ours["frame"], theirs["frame"])
    only_theirs = np.setdiff1d(theirs["frame"], ours["frame"])
    problems += [(int(f), f"frame {f}: only in ours") for f in only_ours]
    problems += [(int(f), f"frame {f}: only in theirs") for f in only_theirs]

    common, our_index, their_index = np.intersect1d(
        ours["frame"], theirs["frame"], return_indices=True)
    a, b = ours[our_index], theirs[their_index]
    reported_addresses: set[tuple[int, str]] = set()
    for name in names:
        differ = a[name] != b[name]
        if differ.ndim > 1:
            differ = differ.any(axis=tuple(range(1, differ.ndim)))
        for i in np.flatnonzero(differ):
            frame = int(common[i])
            if name in _ADDRESS_PAIRS:
                side = _ADDRESS_PAIRS[name]
                if (frame, side) in reported_addresses:
                    continue
                reported_addresses.add((frame, side))
                mine = format_address(a[i][f"{side}_hi"], a[i][f"{side}_lo"])
                other = format_address(b[i][f"{side}_hi"], b[i][f"{side}_lo"])
                problems.append((frame, f"frame {frame}: {side} ours={mine} theirs={other}"))
                continue
            problems.append((frame, f"frame {frame}: {name} ours={_describe(name, a[i][name])} "
                                    f"theirs={_describe(name, b[i][name])}"))
    problems.sort(key=lambda item: item[0])
    messages = [message for _, message in problems]
    if len(messages) > limit:
        left_out = len(messages) - (limit - 1)
        messages = messages[: limit - 1] + [f"... and {left_out} more differences"]
    return messages

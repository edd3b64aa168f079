"""`--engine pyshark`: packet batches from Wireshark's dissectors, through pyshark 0.6.

Rules:
- The compatibility path: any capture tshark can read (formats and encapsulations the native
  reader and decoder do not handle) becomes the same `PACKET_DTYPE` batches and
  `DecodeCounts` as the native path. One row per TCP segment outside ICMP, in capture order.
- pyshark is imported at call time, so `import tracer` and the core stages never need it.
- tshark runs with `TSHARK_PREFS` (the same preferences as the test oracle, tests/oracle.py):
  no IP reassembly, no TCP desegmentation or sequence analysis, absolute sequence numbers, so
  every frame is dissected on its own and SACK edges are raw.
- A row needs the fixed TCP header (flags and urgent pointer dissected, data offset >= 5, the
  IP payload long enough to hold the header); other frames with TCP are counted in
  `anomalies`. Options cut by the snaplen keep their row, with the options tshark could show,
  and count `truncated_tcp_options` (as the native decoder does; the oracle gives no row).
  Counts use decode's vocabulary (tracer.decode.vocab) so both engines report alike. The
  field rules for awkward cases (IP-in-IP, QinQ, repeated options, fragments) are the
  oracle's; see its module comment.
- Errors the user can cause become typed, one-line errors: `ToolMissingError` (no tshark, no
  pyshark), `CaptureOpenError` (missing, a directory, unreadable), `EngineError` (tshark
  refused or failed on the file). A capture cut short in the middle of a record is not an
  error: the frames before the cut are yielded and `anomalies["capture_cut_short"]` is 1.

Theory of operation: pyshark starts `tshark -T ek` (one JSON document per frame; the fastest
of pyshark 0.6's output modes) and hands us one `Packet` per frame without keeping it
(`keep_packets=False`). We read the raw EK dicts of the few layers we need (`-J` keeps tshark
from printing the others), append one tuple per TCP row, and build the numpy batch once per
`batch_size` frames. This per-frame Python work is inherent to pyshark (it parses one JSON
document per frame) and is why this engine is the slow path.

pyshark 0.6 pitfalls handled here:
- Without `eventloop=`, pyshark calls `asyncio.get_event_loop_policy().get_event_loop()`,
  which fails under uvloop's policy ("There is no current event loop") and inside a running
  loop. We create a fresh loop per read, pass it, and close it (and the capture) at the end,
  also when the consumer stops iterating early (the generator's `finally`).
- At end of file pyshark kills tshark even when it has already exited. `Popen.kill` reaps the
  child itself (CPython checks `poll()` first), so asyncio's child watcher then finds no child,
  logs "Unknown child process pid N" and reports exit status 255, which pyshark turns into a
  `TSharkCrashException` on a perfectly good read. `_capture_class` waits for tshark to exit
  on its own after EOF and only then lets pyshark clean up.
- pyshark's synchronous iterator runs the event loop once per packet (`run_until_complete`
  per frame), which cost more than our conversion; `_read` drives pyshark's callback
  coroutine instead, stopping the loop when a batch is full.
- pyshark loads Wireshark's whole EK field-type map (`tshark -G elastic-mapping`, 20 MB,
  cached under ~/.cache/pyshark) at the first EK read of a process; we skip it.
- With a protocol repeated in a frame (IP-in-IP), EK prints the layer as a list of dicts and
  pyshark keeps that list as one layer's "fields dict"; `_occurrence_fields` unwraps it.
- pyshark's EK parser raises KeyError on a record without a timestamp (pcapng Simple Packet
  Block); our parser gives such a record an empty one (ts_ns 0, as the oracle does).
- EK names some option fields without the doubled prefix (`tcp_options_sack_perm` rather than
  `tcp_tcp_options_sack_perm`); both spellings are accepted.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import struct
import subprocess
import tempfile
from collections import deque
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np

from tracer.decode import vocab
from tracer.errors import CaptureOpenError, EngineError, ToolMissingError
from tracer.packet import (
    MAX_SACK_BLOCKS,
    OPT_MSS,
    OPT_SACK,
    OPT_SACK_PERM,
    OPT_TIMESTAMP,
    OPT_WSCALE,
    PACKET_DTYPE,
    TCP_FLAG_NAMES,
    DecodeCounts,
    parse_address,
)

TSHARK_PREFS: dict[str, str] = {
    "ip.defragment": "FALSE",
    "ipv6.defragment": "FALSE",
    "tcp.desegment_tcp_streams": "FALSE",
    "tcp.analyze_sequence_numbers": "FALSE",
    "tcp.relative_sequence_numbers": "FALSE",
}

# Only these layers are printed by tshark (-J); frame.protocols still names every layer.
PRINTED_LAYERS = "frame vlan ieee8021ad ip ipv6 tcp"

# Rows of an encapsulation that has no pcap LINKTYPE (or one this tshark does not map).
LINKTYPE_UNKNOWN = 0xFFFF

# LINKTYPEs whose Wireshark encapsulation (WTAP_ENCAP, what tshark shows as frame.encap_type)
# is learned from the installed tshark, in order of preference when two share one.
LINKTYPE_PROBES: tuple[int, ...] = (
    1, 0, 101, 228, 229, 108, 113, 276, 9, 50, 104, 105, 127, 239, 12, 14,
)

# Seconds to wait for tshark to exit by itself after it closed its output.
TSHARK_EXIT_WAIT_S = 10.0

_LINK_LAYERS = {"eth", "ethertype", "vlan", "ieee8021ad", "sll", "raw", "null", "loop",
                "ppp", "chdlc", "wlan", "radiotap", "nflog", "llc", "snap"}


def _bytes_len(text: Any) -> int:
    """Byte count of EK's FT_BYTES text ("02:04:05:b4")."""
    if not text:
        return 0
    if isinstance(text, list):
        text = text[0]
    return (len(text) + 1) // 3


def _num(value: Any) -> int:
    """An EK number: "64", "0x1234", a bool, or a list of those (first occurrence wins)."""
    try:
        return int(value)
    except ValueError:
        return int(value, 16)
    except TypeError:
        return _num(value[0])


# Addresses repeat on every packet of a flow; parsing them is the costliest conversion.
_address = functools.lru_cache(maxsize=1 << 16)(parse_address)


def _epoch_ns(text: str) -> int:
    """EK's decimal epoch text -> int ns, exactly; no timestamp (pcapng SPB) -> 0."""
    if not text:
        return 0
    seconds, _, fraction = text.partition(".")
    if seconds.startswith("-") or len(fraction) > 9:
        return int(Decimal(text).scaleb(9).to_integral_value())
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)


def _occurrence_fields(layer_fields: Any, index: int) -> dict:
    if isinstance(layer_fields, list):
        return layer_fields[index]
    if index != 0:
        raise IndexError(f"tshark printed one layer where occurrence {index} was expected")
    return layer_fields


def _other_frame(protocols: list[str], layers: dict[str, Any]) -> tuple[str, str]:
    """("non_tcp" | "anomaly", name) for a frame without a TCP row, in decode's vocabulary.

    IP frames are named by the outermost IP header, as the native decoder does: its protocol
    number ("ipv4/udp", "ipv4/proto-4"), a non-first fragment, or the length fault that made
    tshark stop. Other frames: "llc", or Wireshark's name for what the ethertype carried
    ("arp", "lldp", "eapol"...), since the ethertype itself is not printed (see `PRINTED_LAYERS`).
    """
    for name in protocols:
        if name == "ip" and "ip" in layers:
            ip = _occurrence_fields(layers["ip"], 0)
            hdr_len, total_len = _num(ip.get("ip_ip_hdr_len", 20)), _num(ip.get("ip_ip_len", 0))
            if hdr_len < 20:
                return "anomaly", "bad_ip_header_length"
            if 0 < total_len < hdr_len:
                return "anomaly", "bad_ip_total_length"
            if _num(ip.get("ip_ip_frag_offset", 0)):
                return "non_tcp", "ipv4/fragment"
            code = vocab.NONTCP_IPV4_PROTO << 16 | _num(ip["ip_ip_proto"])
            return "non_tcp", vocab.nontcp_name(code)
        if name == "ipv6" and "ipv6" in layers:
            ipv6 = _occurrence_fields(layers["ipv6"], 0)
            next_header = _num(ipv6["ipv6_ipv6_nxt"])
            for value in ipv6.values():  # extension headers are nested dicts, in order
                if isinstance(value, dict):
                    for inner_key, inner in value.items():
                        if inner_key.endswith("_nxt"):
                            next_header = _num(inner)
                        elif inner_key.endswith("fraghdr_offset") and _num(inner):
                            return "non_tcp", "ipv6/fragment"
            code = vocab.NONTCP_IPV6_PROTO << 16 | next_header
            return "non_tcp", vocab.nontcp_name(code)
        if name in ("ip", "ipv6"):
            break
    for name in protocols:
        if name == "llc":
            return "non_tcp", "llc"
        if name not in _LINK_LAYERS:
            return "non_tcp", name
    return "non_tcp", protocols[-1] if protocols else "unknown"


def _tcp_row(frame: dict, layers: dict[str, Any], protocols: list[str], linktype: int,
             anomalies: dict[str, int]) -> tuple | str:
    """One PACKET_DTYPE tuple (with kept-row anomalies added to `anomalies`), or the anomaly
    reason why the frame gets no row. Anomaly names are decode's (tracer.decode.vocab)."""
    tcp_at = protocols.index("tcp")
    tcp = layers.get("tcp")
    if tcp is None:
        return "tcp_layer_missing"
    tcp = _occurrence_fields(tcp, 0)
    hdr_len = tcp.get("tcp_tcp_hdr_len")
    if hdr_len is not None and _num(hdr_len) < 20:
        return "bad_tcp_header_length"
    if hdr_len is None or "tcp_tcp_flags" not in tcp or "tcp_tcp_urgent_pointer" not in tcp:
        return "truncated_tcp_header"
    hdr_len = _num(hdr_len)
    carriers = [i for i, name in enumerate(protocols[:tcp_at]) if name in ("ip", "ipv6")]
    if not carriers:
        return "tcp_without_ip"
    carrier = carriers[-1]
    ip_name = protocols[carrier]
    ip = _occurrence_fields(layers[ip_name], protocols[:carrier].count(ip_name))
    if ip_name == "ip":
        version, ttl = 4, _num(ip["ip_ip_ttl"])
        src, dst = ip["ip_ip_src"], ip["ip_ip_dst"]
        ip_id, df = _num(ip["ip_ip_id"]), bool(_num(ip.get("ip_ip_flags_df", 0)))
        fragment = bool(_num(ip.get("ip_ip_flags_mf", 0))) or _num(ip["ip_ip_frag_offset"]) != 0
        if _num(ip["ip_ip_len"]) == 0:
            anomalies["ip_total_length_zero"] = anomalies.get("ip_total_length_zero", 0) + 1
    else:
        version, ttl = 6, _num(ip["ipv6_ipv6_hlim"])
        src, dst = ip["ipv6_ipv6_src"], ip["ipv6_ipv6_dst"]
        ip_id, df = 0, False
        fragment = "ipv6.fraghdr" in protocols[carrier:tcp_at]
    if "tcp_tcp_len" in tcp:
        payload_len = _num(tcp["tcp_tcp_len"])
    elif not fragment:  # tshark's "Short segment": the IP payload cannot hold the header
        return "bad_tcp_header_length"
    elif ip_name == "ip":  # tshark leaves tcp.len out of fragments
        payload_len = max(_num(ip["ip_ip_len"]) - _num(ip["ip_ip_hdr_len"]) - hdr_len, 0)
    else:
        payload_len = _bytes_len(tcp.get("tcp_tcp_payload"))
    if _bytes_len(tcp.get("tcp_tcp_options")) != hdr_len - 20:
        # Kept, like the native decoder does: the options tshark could show are there.
        anomalies["truncated_tcp_options"] = anomalies.get("truncated_tcp_options", 0) + 1
    src_hi, src_lo = _address(src)
    dst_hi, dst_lo = _address(dst)

    vlan = 0
    for name in protocols:
        if name == "vlan" or name == "ieee8021ad":
            tag = layers.get(name)
            if tag is not None:
                vlan = _num(_occurrence_fields(tag, 0)[f"{name}_{name}_id"])
            break

    present = mss = wscale = tsval = tsecr = sack_count = 0
    sack_left = [0] * MAX_SACK_BLOCKS
    sack_right = [0] * MAX_SACK_BLOCKS
    if "tcp_tcp_options_mss_val" in tcp:
        present |= OPT_MSS
        mss = _num(tcp["tcp_tcp_options_mss_val"])
    if "tcp_tcp_options_wscale_shift" in tcp:
        present |= OPT_WSCALE
        wscale = _num(tcp["tcp_tcp_options_wscale_shift"])
    if "tcp_options_sack_perm" in tcp or "tcp_tcp_options_sack_perm" in tcp:
        present |= OPT_SACK_PERM
    lefts = tcp.get("tcp_tcp_options_sack_le")
    if lefts is not None:
        rights = tcp.get("tcp_tcp_options_sack_re", [])
        lefts = lefts if isinstance(lefts, list) else [lefts]
        rights = rights if isinstance(rights, list) else [rights]
        sack_count = min(len(lefts), len(rights), MAX_SACK_BLOCKS)
        for i in range(sack_count):
            sack_left[i] = _num(lefts[i])
            sack_right[i] = _num(rights[i])
        present |= OPT_SACK
    if "tcp_tcp_options_timestamp_tsval" in tcp and "tcp_tcp_options_timestamp_tsecr" in tcp:
        present |= OPT_TIMESTAMP
        tsval = _num(tcp["tcp_tcp_options_timestamp_tsval"])
        tsecr = _num(tcp["tcp_tcp_options_timestamp_tsecr"])

    return (
        _num(frame["frame_frame_number"]),
        _epoch_ns(frame.get("frame_frame_time_epoch", "")),
        _num(frame.get("frame_frame_interface_id", 0)),
        linktype,
        _num(frame["frame_frame_cap_len"]),
        _num(frame["frame_frame_len"]),
        version, src_hi, src_lo, dst_hi, dst_lo, ttl, ip_id, df, vlan,
        _num(tcp["tcp_tcp_srcport"]),
        _num(tcp["tcp_tcp_dstport"]),
        _num(tcp["tcp_tcp_seq_raw"]),
        _num(tcp["tcp_tcp_ack_raw"]),
        _num(tcp["tcp_tcp_flags"]),  # all 12 bits, reserved included
        _num(tcp["tcp_tcp_window_size_value"]),
        hdr_len,
        payload_len,
        _num(tcp["tcp_tcp_urgent_pointer"]),
        present, mss, wscale, sack_count, sack_left, sack_right, tsval, tsecr,
    )


class _Batch:
    """Rows and counts of the frames read since the last yield."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.counts = DecodeCounts()

    def add_frame(self, packet: Any, encap_to_linktype: dict[int, int]) -> None:
        frame = packet.frame_info._fields_dict
        counts = self.counts
        counts.frames += 1
        if "frame_frame_encap_type" in frame:
            linktype = encap_to_linktype.get(_num(frame["frame_frame_encap_type"]),
                                             LINKTYPE_UNKNOWN)
        else:  # a pcapng record that holds no packet (custom block, journal entry...)
            linktype = vocab.LINKTYPE_PCAPNG_RECORD
        counts.linktypes[linktype] = counts.linktypes.get(linktype, 0) + 1
        if linktype == vocab.LINKTYPE_PCAPNG_RECORD:
            counts.non_tcp["pcapng-record"] = counts.non_tcp.get("pcapng-record", 0) + 1
            return
        protocols = frame.get("frame_frame_protocols", "").split(":")
        layers: dict[str, Any] = {}
        for layer in packet.layers:
            layers.setdefault(layer.layer_name, layer._fields_dict)
        if "tcp" in protocols and not _inside_icmp(protocols):
            try:
                row = _tcp_row(frame, layers, protocols, linktype, counts.anomalies)
            except (KeyError, ValueError, IndexError, TypeError):
                row = "tcp_fields_missing"
            if not isinstance(row, str):
                self.rows.append(row)
                return
            kind, name = "anomaly", row
        else:
            try:
                kind, name = _other_frame(protocols, layers)
            except (KeyError, ValueError, IndexError, TypeError):
                kind, name = "non_tcp", "unknown"
        table = counts.anomalies if kind == "anomaly" else counts.non_tcp
        table[name] = table.get(name, 0) + 1

    def take(self) -> tuple[np.ndarray, DecodeCounts]:
        packets = np.array(self.rows, dtype=PACKET_DTYPE) if self.rows else np.zeros(
            0, dtype=PACKET_DTYPE)
        counts = self.counts
        counts.tcp_packets = len(packets)
        flags = packets["flags"]
        for bit, name in enumerate(TCP_FLAG_NAMES):
            counts.flag_counts[name] = int(np.count_nonzero(flags & (1 << bit)))
        self.rows, self.counts = [], DecodeCounts()
        return packets, counts


def _inside_icmp(protocols: list[str]) -> bool:
    tcp_at = protocols.index("tcp")
    return "icmp" in protocols[:tcp_at] or "icmpv6" in protocols[:tcp_at]


def _probe_pcapng(linktypes: tuple[int, ...]) -> bytes:
    """A pcapng with one interface per LINKTYPE and one empty record on each."""
    def block(block_type: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        size = 12 + len(body)
        return struct.pack("<II", block_type, size) + body + struct.pack("<I", size)

    data = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    data += b"".join(block(1, struct.pack("<HHI", lt, 0, 65535)) for lt in linktypes)
    data += b"".join(block(6, struct.pack("<5I", i, 0, 0, 0, 0)) for i in range(len(linktypes)))
    return data


@functools.cache
def encap_to_linktype(tshark: str) -> dict[int, int]:
    """This tshark's WTAP_ENCAP -> LINKTYPE map (WTAP numbers are internal to Wireshark and
    may differ between versions, so they are learned from the installed tshark, not listed)."""
    with tempfile.TemporaryDirectory(prefix="tracer-linktypes-") as tmp:
        probe = os.path.join(tmp, "probe.pcapng")
        with open(probe, "wb") as f:
            f.write(_probe_pcapng(LINKTYPE_PROBES))
        proc = subprocess.run(
            [tshark, "-n", "-r", probe, "-T", "fields", "-e", "frame.interface_id",
             "-e", "frame.encap_type"],
            capture_output=True, text=True, check=False,
        )
    if proc.returncode != 0:
        raise EngineError("tshark failed on its link-type probe: "
                          + _tshark_reason(proc.stderr.splitlines()))
    mapping: dict[int, int] = {}
    for line in proc.stdout.splitlines():
        iface, encap = (int(v) for v in line.split("\t"))
        if encap != 0:  # WTAP_ENCAP_UNKNOWN
            mapping.setdefault(encap, LINKTYPE_PROBES[iface])
    return mapping


def _tshark_reason(lines: list[str]) -> str:
    """tshark's error as one line: from its last "tshark: ..." line to the end."""
    lines = [line for line in lines if line and "Running as user" not in line]
    starts = [i for i, line in enumerate(lines) if line.startswith("tshark:")]
    reason = " ".join(lines[starts[-1] if starts else max(len(lines) - 1, 0):])
    return reason.removeprefix("tshark: ")


@functools.cache
def _capture_class() -> type:
    """pyshark's FileCapture with two fixes (see the module's pitfalls)."""
    import json

    import pyshark
    from pyshark.tshark.output_parser.tshark_ek import TsharkEkJsonParser, packet_from_ek_packet

    class EkParser(TsharkEkJsonParser):
        def _parse_single_packet(self, packet: bytes) -> Any:
            try:
                return packet_from_ek_packet(packet)
            except KeyError:
                # pyshark requires a timestamp; records without one (pcapng Simple Packet
                # Blocks) get an empty one, which becomes ts_ns 0.
                document = json.loads(packet)
                frame = document["layers"]["frame"]
                frame.setdefault("frame_frame_time_epoch", "")
                frame.setdefault("frame_frame_len", frame.get("frame_frame_cap_len", "0"))
                return packet_from_ek_packet(json.dumps(document).encode())

    class FileCapture(pyshark.FileCapture):
        def _setup_tshark_output_parser(self) -> Any:
            # pyshark would load the EK field-type map (`tshark -G elastic-mapping`, 20 MB of
            # JSON, cached under ~/.cache/pyshark) only to cast values for EkLayer.get_field;
            # we read the raw field dicts and convert them ourselves.
            return EkParser()

        async def _handle_process_stderr_forever(self, stderr: Any) -> None:
            # pyshark keeps only the last line; tshark's reason often spans two.
            self.stderr_lines: list[str] = []
            while line := await stderr.readline():
                self._last_error_line = line.decode(errors="replace").strip()
                self.stderr_lines.append(self._last_error_line)

        async def _cleanup_subprocess(self, process: Any) -> None:
            if self._eof_reached and process.returncode is None:
                try:
                    await asyncio.wait_for(process.wait(), TSHARK_EXIT_WAIT_S)
                except TimeoutError:
                    pass  # pyshark kills it
            if self._eof_reached and self._stderr_handling_tasks:
                # The last stderr line is tshark's reason for failing; let it arrive first.
                await asyncio.wait(self._stderr_handling_tasks, timeout=TSHARK_EXIT_WAIT_S)
            await super()._cleanup_subprocess(process)

    return FileCapture


def _check_capture_path(path: str) -> None:
    if not os.path.exists(path):
        raise CaptureOpenError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CaptureOpenError(f"{path}: is a directory")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise CaptureOpenError(f"{path}: {err.strerror or err}") from None


def read_packets_pyshark(path: str, batch_size: int = 10000,
                         display_filter: str | None = None,
                         ) -> Iterator[tuple[np.ndarray, DecodeCounts]]:
    """Yield (PACKET_DTYPE rows, DecodeCounts) per `batch_size` frames of the capture.

    Blocks while tshark works: call it from a worker thread, not from a running event loop.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    path = os.fspath(path)
    try:
        import pyshark  # noqa: F401  (only checks that it is there)
    except ImportError:
        raise ToolMissingError("pyshark is not installed (pip install pyshark==0.6)") from None
    tshark = shutil.which("tshark")
    if tshark is None:
        raise ToolMissingError("tshark is not installed or not on PATH (apt-get install tshark)")
    _check_capture_path(path)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("read_packets_pyshark blocks: run it in a worker thread "
                           "(asyncio.to_thread), not inside a running event loop")
    return _read(path, batch_size, display_filter, tshark)


def _read(path: str, batch_size: int, display_filter: str | None,
          tshark: str) -> Iterator[tuple[np.ndarray, DecodeCounts]]:
    """Run pyshark's reading coroutine on our own loop, pausing it whenever a batch is full.

    pyshark's synchronous iterator runs the event loop once per packet, which costs more than
    the conversion itself; its callback coroutine runs through whole buffers instead. The
    callback stops the loop when a batch fills, we yield, and the next `run_forever` resumes
    the read where it stood. Frames decoded past a full batch go to the next one, so batches
    hold exactly `batch_size` frames (the overshoot is bounded by pyshark's read buffer).
    """
    from pyshark.capture.capture import TSharkCrashException

    linktypes = encap_to_linktype(tshark)
    loop = asyncio.new_event_loop()
    capture = _capture_class()(
        path, keep_packets=False, use_ek=True, eventloop=loop, tshark_path=tshark,
        display_filter=display_filter, override_prefs=TSHARK_PREFS,
        custom_parameters=["-J", PRINTED_LAYERS],
    )
    batches = deque([_Batch()])

    def on_packet(packet: Any) -> None:
        if batches[-1].counts.frames >= batch_size:
            batches.append(_Batch())
            loop.stop()  # takes effect once pyshark next waits for tshark's output
        batches[-1].add_frame(packet, linktypes)

    reading = loop.create_task(capture.packets_from_tshark(on_packet))
    reading.add_done_callback(lambda _: loop.stop())
    try:
        while not reading.done():
            loop.run_forever()
            while len(batches) > 1:
                yield batches.popleft().take()
        try:
            reading.result()
        except TSharkCrashException:
            message = _tshark_reason(getattr(capture, "stderr_lines", []))
            if "cut short" not in message:
                raise EngineError(f"tshark: {message}" if message else
                                  f"tshark could not read {path}") from None
            batches[-1].counts.anomalies["capture_cut_short"] = 1
        except Exception as err:  # pyshark choked on tshark's output (e.g. a frame without
            # a timestamp, which pyshark 0.6's EK parser requires)
            raise EngineError(f"pyshark could not parse tshark's output for {path}: "
                              f"{type(err).__name__}: {err}") from err
        last = batches.pop()
        if last.counts.frames or last.counts.anomalies:
            yield last.take()
    finally:
        _close(capture, reading, loop)


def _close(capture: Any, reading: asyncio.Task, loop: asyncio.AbstractEventLoop) -> None:
    """Stop tshark, close the capture and the loop, whether or not the read finished.

    When the consumer stops early the read is cancelled, and pyshark's own `finally` kills
    tshark; the crash it then reports, like any error already raised, is not news.
    """
    try:
        if not reading.done():
            reading.cancel()
        for finish in (lambda: loop.run_until_complete(reading), capture.close):
            try:
                finish()
            except (Exception, asyncio.CancelledError):
                pass
    finally:
        capture._running_processes.clear()  # else pyshark's __del__ uses the closed loop
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

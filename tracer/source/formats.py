"""Classic pcap and pcapng, parsed incrementally from byte buffers into frame batches.

Rules:
- A parser is fed a buffer whose first byte is a record boundary and returns the frame batches
  of every complete record in it (pointing into that buffer, which the caller must not modify
  while they live) plus how many bytes it consumed; the caller keeps the rest and
  feeds it again with more data. The parsers do no I/O, so files (mmap), pipes, gzip streams and
  the live source share them.
- Records are found with `records.walk_records` (vectorized), which also returns each record's
  header: classic pcap's four fields are columns of it; a pcapng packet block's fixed fields
  come in one more gather. Python-level work is per block kind, never per packet: pcapng blocks
  that are not packets (section and interface descriptions, statistics, name resolution, custom
  and unknown blocks) are rare and handled one by one.
- A corrupt length stops the parser for good; `problem` says what and at which stream offset,
  and everything before it has been returned. This mirrors tshark, which stops at the first
  corrupt record.

Formats: pcap per draft-ietf-opsawg-pcap (magics a1b2c3d4 us / a1b23c4d ns, either byte order);
pcapng per draft-ietf-opsawg-pcapng (SHB 0x0A0D0D0A, IDB 1, PB 2 (obsolete), SPB 3, EPB 6).
"""

from __future__ import annotations

import struct

import numpy as np

from tracer.decode.vocab import LINKTYPE_PCAPNG_RECORD
from tracer.packet import FrameBatch
from tracer.source.records import RecordLayout, gather_padded, read_u32, walk_records

BATCH_FRAMES = 65536

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_IDB = 1
PCAPNG_PB = 2
PCAPNG_SPB = 3
PCAPNG_EPB = 6
# Blocks that Wireshark reads as records of their own, numbered as frames like packets although
# they carry none: custom blocks (copyable / not), systemd journal exports, sysdig events.
PCAPNG_RECORD_BLOCKS = (0x00000BAD, 0x40000BAD, 0x00000009, 0x204, 0x208, 0x216, 0x217)

# Wireshark refuses records larger than this (WTAP_MAX_PACKET_SIZE_STANDARD).
MAX_PCAP_CAPLEN = 262144
MAX_PCAPNG_BLOCK = 16 * 1024 * 1024 + 4096

IDB_OPT_TSRESOL = 9
IDB_OPT_TSOFFSET = 14


def sniff_format(magic: bytes) -> str | None:
    """'pcap', 'pcapng' or None from a file's first four bytes."""
    if len(magic) < 4:
        return None
    le, be = struct.unpack("<I", magic[:4])[0], struct.unpack(">I", magic[:4])[0]
    if PCAP_MAGIC_US in (le, be) or PCAP_MAGIC_NS in (le, be):
        return "pcap"
    if le == PCAPNG_SHB:
        return "pcapng"
    return None


def _split(batch: FrameBatch) -> list[FrameBatch]:
    n = len(batch)
    if n == 0:
        return []
    return [batch.rows(slice(lo, lo + BATCH_FRAMES)) for lo in range(0, n, BATCH_FRAMES)]


class CaptureParser:
    """Common state of both formats: frame numbering, problems, link types seen."""

    format_name = ""

    def __init__(self) -> None:
        self.frames_emitted = 0
        self.problem: str | None = None  # set once, when the parser stopped at corrupt data
        self.finished = False  # no more records will be accepted
        self.linktypes: list[int] = []  # in order of first appearance
        self.anomalies: dict[str, int] = {}

    def _note_linktype(self, linktype: int) -> None:
        if linktype not in self.linktypes:
            self.linktypes.append(linktype)

    def _count(self, reason: str, n: int = 1) -> None:
        if n:
            self.anomalies[reason] = self.anomalies.get(reason, 0) + n

    def _frames(self, ts_ns, iface, linktype, caplen, wirelen, buf, data_start) -> FrameBatch:
        n = data_start.shape[0]
        frame = np.arange(self.frames_emitted + 1, self.frames_emitted + 1 + n, dtype=np.int64)
        self.frames_emitted += n
        return FrameBatch(
            frame=frame,
            ts_ns=ts_ns.astype(np.int64, copy=False),
            iface=iface.astype(np.uint16, copy=False),
            linktype=linktype.astype(np.uint16, copy=False),
            caplen=caplen.astype(np.uint32, copy=False),
            wirelen=wirelen.astype(np.uint32, copy=False),
            data=buf,
            offset=data_start.astype(np.int64, copy=False),
        )

    def parse(self, buf: np.ndarray, base_offset: int) -> tuple[list[FrameBatch], int]:
        raise NotImplementedError


class PcapParser(CaptureParser):
    format_name = "pcap"

    def __init__(self) -> None:
        super().__init__()
        self.little: bool | None = None
        self.nanoseconds = False
        self.snaplen = 0
        self.linktype = 0
        self._layout: RecordLayout | None = None

    def _parse_header(self, buf: np.ndarray) -> None:
        raw = bytes(buf[:24])
        magic_le = struct.unpack("<I", raw[:4])[0]
        self.little = magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS)
        magic = magic_le if self.little else struct.unpack(">I", raw[:4])[0]
        self.nanoseconds = magic == PCAP_MAGIC_NS
        order = "<" if self.little else ">"
        _major, _minor, _zone, _sigfigs, snaplen, linkfield = struct.unpack(order + "HHiIII", raw[4:24])
        self.snaplen = snaplen
        # The upper bits of the link-type field carry FCS information (pcap draft 4).
        self.linktype = linkfield & 0xFFFF
        self._note_linktype(self.linktype)
        self._header_dtype = np.dtype(
            [(name, order + "u4") for name in ("sec", "frac", "caplen", "wirelen")]
        )
        self._layout = self._make_layout()

    def _make_layout(self) -> RecordLayout:
        little = self.little
        max_caplen = max(self.snaplen, MAX_PCAP_CAPLEN)
        frac_limit = 1_000_000_000 if self.nanoseconds else 1_000_000
        sane_caplen = min(max(self.snaplen, 1), MAX_PCAP_CAPLEN) if self.snaplen else MAX_PCAP_CAPLEN

        header_dtype = self._header_dtype

        def plausible(buf, pos, length, header):
            fields = header.view(header_dtype)
            caplen = length - 16
            wirelen = fields["wirelen"].astype(np.int64)
            frac = fields["frac"]
            return (
                (caplen <= sane_caplen)
                & (caplen <= wirelen)
                & (wirelen <= 0x10000 + caplen * 64)
                & (frac < frac_limit)
            )

        def signature(buf, first):
            # The high half of the seconds field: the same for every record within 18 hours.
            at = 2 if little else 0
            return at, bytes(buf[first + at : first + at + 2])

        # Record length = captured length (at offset 8) + the 16-byte record header.
        return RecordLayout(
            header_bytes=16,
            length_at=8,
            length_bias=16,
            little=little,
            min_length=16,
            max_length=16 + max_caplen,
            plausible=plausible,
            signature=signature,
        )

    def parse(self, buf: np.ndarray, base_offset: int) -> tuple[list[FrameBatch], int]:
        if self.finished:
            return [], 0
        consumed = 0
        if self.little is None:
            if buf.shape[0] < 24:
                return [], 0
            self._parse_header(buf)
            consumed = 24
        walk = walk_records(buf, consumed, buf.shape[0], self._layout, base_offset)
        if walk.corrupt:
            caplen = int(read_u32(buf, np.array([walk.stop + 8]), self.little)[0])
            self.problem = (
                f"corrupt record at offset {base_offset + walk.stop}: "
                f"captured length {caplen} exceeds the maximum {max(self.snaplen, MAX_PCAP_CAPLEN)}"
            )
            self.finished = True
        starts = walk.starts
        # The walk read each record's 16-byte header; its four fields are strided columns.
        header = walk.headers.view(self._header_dtype)
        caplen = header["caplen"].astype(np.uint32)
        wirelen = header["wirelen"].astype(np.uint32)
        ts_ns = header["sec"].astype(np.int64)
        ts_ns *= 1_000_000_000
        ts_ns += header["frac"] if self.nanoseconds else header["frac"].astype(np.int64) * 1000
        n = starts.shape[0]
        batch = self._frames(
            ts_ns,
            np.zeros(n, np.uint16),
            np.full(n, self.linktype, np.uint16),
            caplen,
            wirelen,
            buf,
            starts + 16,
        )
        return _split(batch), walk.stop


class _Interface:
    __slots__ = ("linktype", "snaplen", "tsresol_base", "tsresol_exp", "tsoffset_s")

    def __init__(self, linktype: int, snaplen: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.tsresol_base = 10
        self.tsresol_exp = 6
        self.tsoffset_s = 0


def _offset_ns(seconds: int) -> int:
    """An interface's time offset in ns, wrapped to 64 bits like the tick arithmetic."""
    return (seconds * 1_000_000_000 + (1 << 63)) % (1 << 64) - (1 << 63)


def _ticks_to_ns(ticks: np.ndarray, base: int, exp: int) -> np.ndarray:
    """Timestamps in units of base**-exp to int64 ns, truncating like Wireshark does."""
    ticks = ticks.astype(np.uint64)
    if base == 10:
        if exp <= 9:
            return (ticks * np.uint64(10 ** (9 - exp))).astype(np.int64)
        divisor = 10 ** (exp - 9)
        if divisor > np.iinfo(np.uint64).max:  # every 64-bit tick count is below a nanosecond
            return np.zeros(ticks.shape, np.int64)
        return (ticks // np.uint64(divisor)).astype(np.int64)
    # Binary resolution: split into whole seconds and the fraction to keep 64-bit exactness.
    exp = min(exp, 63)
    whole = ticks >> np.uint64(exp)
    frac = ticks & np.uint64((1 << exp) - 1)
    if exp > 34:  # frac * 1e9 would overflow; drop the bits below a nanosecond first
        frac >>= np.uint64(exp - 34)
        exp = 34
    frac_ns = (frac * np.uint64(1_000_000_000)) >> np.uint64(exp)
    return (whole * np.uint64(1_000_000_000) + frac_ns).astype(np.int64)


class PcapngParser(CaptureParser):
    format_name = "pcapng"

    def __init__(self) -> None:
        super().__init__()
        self.little: bool | None = None  # byte order of the current section
        self.in_section = False
        self.interfaces: list[_Interface] = []
        self.sections = 0
        self.skipped_blocks: dict[int, int] = {}
        self._corrupt_at = 0  # buffer offset of a corrupt packet block found by _packets

    def _layout(self) -> RecordLayout:
        little = self.little
        block_dtype = self._block_dtype

        def valid(buf, pos, length):
            return read_u32(buf, pos + length - 4, little).astype(np.int64) == length

        def plausible(buf, pos, length, header):
            kind = header.view(block_dtype)["kind"]
            caplen = read_u32(buf, pos + 20, little).astype(np.int64)
            return (
                (kind == PCAPNG_EPB)
                & (read_u32(buf, pos + length - 4, little).astype(np.int64) == length)
                & (caplen + 32 <= length)
                & (length - 32 - caplen < 4)
            )

        def barrier(headers):
            # The section header's block type reads the same in either byte order.
            return headers.view(block_dtype)["kind"] == PCAPNG_SHB

        def signature(buf, first):
            return 0, (PCAPNG_EPB).to_bytes(4, "little" if little else "big")

        # Block length at offset 4 counts the whole block; it repeats in the block's last word.
        return RecordLayout(
            header_bytes=8,
            length_at=4,
            length_bias=0,
            little=little,
            min_length=12,
            max_length=MAX_PCAPNG_BLOCK,
            length_multiple=4,
            plausible=plausible,
            alignment=4,
            barrier=barrier,
            check_tail=True,
            valid=valid,
            signature=signature,
        )

    def _stop(self, why: str) -> None:
        self.problem = why
        self.finished = True

    def _parse_shb(self, buf: np.ndarray, at: int, base_offset: int) -> int:
        """Start a section at `at`; returns its length, 0 if incomplete, -1 if corrupt."""
        if buf.shape[0] - at < 12:
            return 0
        raw = bytes(buf[at : at + 12])
        bom_le = struct.unpack("<I", raw[8:12])[0]
        if bom_le == PCAPNG_BYTE_ORDER_MAGIC:
            little = True
        elif struct.unpack(">I", raw[8:12])[0] == PCAPNG_BYTE_ORDER_MAGIC:
            little = False
        else:
            self._stop(f"corrupt section header at offset {base_offset + at}: bad byte-order magic")
            return -1
        length = struct.unpack("<I" if little else ">I", raw[4:8])[0]
        if length < 28 or length % 4 or length > MAX_PCAPNG_BLOCK:
            self._stop(f"corrupt section header at offset {base_offset + at}: length {length}")
            return -1
        if buf.shape[0] - at < length:
            return 0
        self.little = little
        self.in_section = True
        self.interfaces = []
        self.sections += 1
        return length

    def _parse_idb(self, block: bytes) -> None:
        order = "<" if self.little else ">"
        linktype, _reserved, snaplen = struct.unpack(order + "HHI", block[8:16])
        iface = _Interface(linktype, snaplen)
        opt = 16
        end = len(block) - 4
        while opt + 4 <= end:
            code, length = struct.unpack(order + "HH", block[opt : opt + 4])
            value = block[opt + 4 : opt + 4 + length]
            if code == 0:
                break
            if code == IDB_OPT_TSRESOL and length >= 1:
                iface.tsresol_base = 2 if value[0] & 0x80 else 10
                iface.tsresol_exp = value[0] & 0x7F
            elif code == IDB_OPT_TSOFFSET and length == 8:
                iface.tsoffset_s = struct.unpack(order + "q", value)[0]
            opt += 4 + length + (-length % 4)
        self.interfaces.append(iface)
        self._note_linktype(linktype)

    def parse(self, buf: np.ndarray, base_offset: int) -> tuple[list[FrameBatch], int]:
        out: list[FrameBatch] = []
        consumed = 0
        while not self.finished:
            at_shb = buf.shape[0] - consumed >= 4 and bytes(buf[consumed : consumed + 4]) == b"\n\r\r\n"
            if at_shb or not self.in_section:
                if not at_shb:
                    if buf.shape[0] - consumed >= 4:
                        self._stop(f"corrupt data at offset {base_offset + consumed}: expected a section header")
                    break
                length = self._parse_shb(buf, consumed, base_offset)
                if length <= 0:
                    break
                consumed += length
                continue
            walk = walk_records(buf, consumed, buf.shape[0], self._layout(), base_offset)
            out.extend(self._packets(buf, walk.starts, walk.headers, base_offset))
            if self.finished:  # a packet block inside the walk was corrupt
                consumed = self._corrupt_at
                break
            consumed = walk.stop
            if walk.corrupt:
                length = int(read_u32(buf, np.array([walk.stop + 4]), self.little)[0])
                self._stop(f"corrupt block at offset {base_offset + walk.stop}: block length {length}")
                break
            if not walk.barrier:
                break
        return out, consumed

    @property
    def _block_dtype(self) -> np.dtype:
        """Block type and total length: the 8-byte header the walk reads."""
        order = "<" if self.little else ">"
        return np.dtype([("kind", order + "u4"), ("length", order + "u4")])

    def _packets(
        self, buf: np.ndarray, starts: np.ndarray, headers: np.ndarray, base_offset: int
    ) -> list[FrameBatch]:
        """Frame batches for the packet blocks among `starts`; other blocks handled in order."""
        if starts.size == 0:
            return []
        little = self.little
        kinds = headers.view(self._block_dtype)["kind"]
        is_epb = kinds == PCAPNG_EPB
        if is_epb.all():  # the usual case: nothing but enhanced packet blocks
            is_packet = is_epb
            other = np.empty(0, np.int64)
        else:
            is_record = np.isin(kinds, PCAPNG_RECORD_BLOCKS)
            is_packet = is_epb | (kinds == PCAPNG_SPB) | (kinds == PCAPNG_PB) | is_record
            other = np.flatnonzero(~is_packet)
        # Interfaces are numbered in order of their IDBs within the section, and a packet may
        # only use one described before it.
        idb_positions = []
        before = len(self.interfaces)
        for i in other:
            kind = int(kinds[i])
            if kind == PCAPNG_IDB:
                lo = int(starts[i])
                length = int(read_u32(buf, np.array([lo + 4]), little)[0])
                self._parse_idb(bytes(buf[lo : lo + length]))
                idb_positions.append(lo)
            else:
                self.skipped_blocks[kind] = self.skipped_blocks.get(kind, 0) + 1
        if other.size:
            pk, kinds = starts[is_packet], kinds[is_packet]
        else:
            pk, kinds = starts, np.asarray(kinds)
        if pk.size == 0:
            return []
        # Every packet block's fixed fields in one 28-byte gather (EPB and PB share a layout;
        # SPB has its original length at 8; record blocks have none).
        order = "<" if little else ">"
        words = gather_padded(buf, pk, 28).view(
            np.dtype([(name, order + "u4") for name in
                      ("kind", "length", "iface", "ts_high", "ts_low", "caplen", "wirelen")])
        )
        length = words["length"].astype(np.int64)
        is_epb = kinds == PCAPNG_EPB
        is_spb = kinds == PCAPNG_SPB
        is_pb = kinds == PCAPNG_PB
        is_record = ~is_epb & ~is_spb & ~is_pb
        iface = words["iface"].astype(np.int64)
        ticks = (words["ts_high"].astype(np.uint64) << np.uint64(32)) | words["ts_low"]
        caplen = words["caplen"].astype(np.int64)
        wirelen = words["wirelen"].astype(np.int64)
        data_start = pk + 28
        if not is_epb.all():
            if is_pb.any():
                # The obsolete packet block has a 16-bit interface id and 16 bits of drops.
                pb_iface = words.view(np.dtype({"names": ["iface"], "formats": [order + "u2"],
                                                "offsets": [8], "itemsize": 28}))["iface"]
                iface[is_pb] = pb_iface[is_pb]
            if is_spb.any():
                spb_wirelen = words["iface"][is_spb].astype(np.int64)
                wirelen[is_spb] = spb_wirelen
                room = length[is_spb] - 16
                snap = self.interfaces[0].snaplen if self.interfaces else 0
                cap = np.minimum(spb_wirelen, room)
                if snap:
                    cap = np.minimum(cap, snap)
                caplen[is_spb] = cap
                data_start[is_spb] = pk[is_spb] + 12
                iface[is_spb] = 0
                ticks[is_spb] = 0
            iface[is_record] = 0
            caplen[is_record] = 0
            wirelen[is_record] = 0
            ticks[is_record] = 0
        data_start[is_record] = pk[is_record]  # no packet bytes: caplen stays 0
        overhead = np.where(is_spb, 16, 32)
        too_long = (caplen + overhead > length) & ~is_record
        # Interfaces defined so far at each packet: those from earlier chunks plus earlier IDBs.
        known = before + np.searchsorted(np.array(idb_positions, np.int64), pk)
        unknown_iface = (iface >= known) & ~is_record
        bad = too_long | unknown_iface
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            self._corrupt_at = int(pk[first])
            where = base_offset + self._corrupt_at
            if too_long[first]:
                self._stop(f"corrupt packet block at offset {where}: captured length exceeds the block")
            else:
                self._stop(f"corrupt packet block at offset {where}: interface {int(iface[first])} not described")
            keep = slice(0, first)
            pk, iface, caplen, wirelen, ticks, data_start = (
                pk[keep], iface[keep], caplen[keep], wirelen[keep], ticks[keep], data_start[keep]
            )
            is_spb, is_record = is_spb[keep], is_record[keep]
        n = pk.shape[0]
        if n == 0:
            return []
        table = self.interfaces
        link_of = np.array([t.linktype for t in table] + [LINKTYPE_PCAPNG_RECORD], np.uint16)
        link = link_of[np.where(is_record, len(table), iface)]
        stamped = ~is_spb & ~is_record  # simple packet blocks and record blocks carry no time
        first = int(iface[0])
        if stamped.all() and (iface == first).all():
            t = table[first]
            ts_ns = _ticks_to_ns(ticks, t.tsresol_base, t.tsresol_exp)
            if t.tsoffset_s:
                ts_ns += _offset_ns(t.tsoffset_s)
        else:
            ts_ns = np.zeros(n, np.int64)
            for i in np.unique(iface):
                sel = (iface == i) & stamped
                if sel.any():
                    t = table[int(i)]
                    ts_ns[sel] = _ticks_to_ns(ticks[sel], t.tsresol_base, t.tsresol_exp)
                    ts_ns[sel] += _offset_ns(t.tsoffset_s)
        batch = self._frames(ts_ns, iface, link, caplen, wirelen, buf, data_start)
        return _split(batch)

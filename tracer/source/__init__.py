"""Capture sources (the I/O edge): files, gzip streams and stdin to frame batches.

Rules:
- The format is decided by magic numbers, never by file name: gzip (1f 8b) is unwrapped first,
  then pcap or pcapng is recognised; anything else is a `NotACaptureError` naming the magic.
- Memory does not grow with the file: regular files are memory-mapped one window at a time
  (MAP_POPULATE, then unmapped), streams are read into one reused buffer. Only the frame batches
  of the current window exist at once.
- A file that ends inside a record (still being written, or cut off) yields every complete
  record; `leftover_bytes` says how many bytes were left over. Corrupt data stops the reader
  with `problem` set to a message naming the offset.
"""

from __future__ import annotations

import io
import mmap
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tracer.errors import CaptureOpenError, NotACaptureError
from tracer.packet import FrameBatch
from tracer.source.formats import CaptureParser, PcapngParser, PcapParser, sniff_format

WINDOW_BYTES = 64 * 1024 * 1024  # mmap window / stream buffer size
MAX_WINDOW_BYTES = 256 * 1024 * 1024  # a single record larger than this cannot be read
GZIP_MAGIC = b"\x1f\x8b"

__all__ = ["CaptureReader", "open_capture"]


def open_capture(path: str | os.PathLike, *, window_bytes: int = WINDOW_BYTES) -> CaptureReader:
    """Open a capture file (pcap, pcapng, optionally gzip-compressed) or '-' for stdin."""
    return CaptureReader(str(path), window_bytes=window_bytes)


class _GunzipStream(io.RawIOBase):
    """gzip decompression that hands out every byte it could decode, also from a cut stream.

    GzipFile raises on a stream that ends early and drops what it had decoded in that read;
    a capture still being written or cut off must keep all of it. Members that follow each
    other (concatenated gzip files) are read one after the other, as gunzip does.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflate = zlib.decompressobj(wbits=31)
        self._out = b""
        self._seen_input = False
        self.truncated = False  # the stream ended inside a gzip member

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._out:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                tail = self._inflate.flush()
                if tail:
                    self._out = tail
                    break
                # The stream ended: inside a member (cut short) or cleanly between members.
                self.truncated = not self._inflate.eof and bool(self._seen_input)
                return 0
            self._seen_input = True
            data = self._inflate.decompress(chunk)
            while self._inflate.eof and self._inflate.unused_data:
                rest = self._inflate.unused_data
                self._inflate = zlib.decompressobj(wbits=31)
                data += self._inflate.decompress(rest)
            self._out = data
        n = min(len(target), len(self._out))
        target[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


class _PrefixedStream(io.RawIOBase):
    """A stream with some already-read bytes put back in front of it."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        if self._prefix:
            n = min(len(target), len(self._prefix))
            target[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._rest.readinto(target)


class CaptureReader:
    """One capture: iterate `batches()`, then read the facts about what was read."""

    def __init__(self, path: str, *, window_bytes: int = WINDOW_BYTES) -> None:
        self.path = path
        self.window_bytes = window_bytes
        self.compressed = False
        self.bytes_total: int | None = None  # size of the (decompressed) stream if known
        self.bytes_read = 0  # bytes consumed as complete records (progress)
        self.leftover_bytes = 0
        self.stream_error: str | None = None  # why a compressed stream ended early
        self._gunzip: _GunzipStream | None = None
        self._file: BinaryIO | None = None
        self._stream: BinaryIO | None = None
        self._mmap_fd: int | None = None
        self._open()

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> None:
        if self.path == "-":
            raw: BinaryIO = sys.stdin.buffer
            head = _read_exactly(raw, 4)
            self._stream = _PrefixedStream(head, raw)
        else:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            except FileNotFoundError:
                raise CaptureOpenError(f"{self.path}: no such file") from None
            except IsADirectoryError:
                raise CaptureOpenError(f"{self.path}: is a directory, not a capture file") from None
            except PermissionError:
                raise CaptureOpenError(f"{self.path}: permission denied") from None
            except OSError as exc:
                raise CaptureOpenError(f"{self.path}: {exc.strerror or exc}") from None
            head = _read_exactly(self._file, 4)
            self._file.seek(0)
        if head[:2] == GZIP_MAGIC:
            self.compressed = True
            source = self._stream if self._stream is not None else self._file
            self._gunzip = _GunzipStream(source)
            try:
                head = _read_exactly(self._gunzip, 4)
            except zlib.error as exc:
                raise NotACaptureError(f"{self.path}: broken gzip data ({exc})") from None
            self._stream = _PrefixedStream(head, self._gunzip)
        fmt = sniff_format(head)
        if fmt is None:
            shown = head.hex(" ") if head else "an empty file"
            raise NotACaptureError(
                f"{self.path}: not a pcap or pcapng capture (starts with {shown})"
            )
        self.format = fmt
        self.parser: CaptureParser = PcapParser() if fmt == "pcap" else PcapngParser()
        if self._stream is None:
            assert self._file is not None
            self.bytes_total = os.fstat(self._file.fileno()).st_size
            self._mmap_fd = self._file.fileno()

    # -- reading -------------------------------------------------------------------------------

    def batches(self) -> Iterator[FrameBatch]:
        """Frame batches in capture order, until the end of the data or corrupt data."""
        if self._mmap_fd is not None:
            yield from self._batches_mmap()
        else:
            yield from self._batches_stream()

    def _batches_mmap(self) -> Iterator[FrameBatch]:
        size = self.bytes_total or 0
        pos = 0
        window = self.window_bytes
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        while pos < size and not self.parser.finished:
            map_from = pos - pos % mmap.ALLOCATIONGRANULARITY
            map_to = min(size, pos + window)
            mm = mmap.mmap(
                self._mmap_fd, map_to - map_from, flags=flags, prot=mmap.PROT_READ, offset=map_from
            )
            # The batches point into the mapping and keep it alive; it is unmapped when the
            # last of them is gone, so memory follows the batches in flight, not the file.
            buf = np.frombuffer(mm, np.uint8)[pos - map_from :]
            del mm
            batches, consumed = self.parser.parse(buf, pos)
            del buf
            pos += consumed
            self.bytes_read = pos
            yield from batches
            del batches
            if consumed == 0:
                if map_to == size or window >= MAX_WINDOW_BYTES:
                    break  # the rest is an incomplete record (or one we refuse to hold)
                window *= 2  # a record larger than the window
            else:
                window = self.window_bytes
        self.leftover_bytes = size - pos

    def _batches_stream(self) -> Iterator[FrameBatch]:
        assert self._stream is not None
        pool = _BufferPool()
        buf = pool.take(self.window_bytes)
        fill = 0
        stream_pos = 0  # stream offset of buf[0]
        eof = False
        while not self.parser.finished:
            while not eof and fill < buf.shape[0]:
                try:
                    got = self._stream.readinto(memoryview(buf)[fill:])
                except (OSError, zlib.error) as exc:
                    # Corrupt compressed data: analyse what came before it.
                    self.parser.anomalies["corrupt_compressed_stream"] = 1
                    self.stream_error = str(exc)
                    got = 0
                if not got and self._gunzip is not None and self._gunzip.truncated:
                    # A gzip stream cut short is like a capture cut short: keep what we have.
                    self.parser.anomalies["truncated_compressed_stream"] = 1
                if not got:
                    eof = True
                    break
                fill += got
            batches, consumed = self.parser.parse(buf[:fill], stream_pos)
            stream_pos += consumed
            self.bytes_read = stream_pos
            rest = fill - consumed
            if consumed or fill == buf.shape[0]:
                # The batches point into `buf`: carry the unparsed tail over to another buffer
                # (a bigger one if a single record did not fit) instead of moving it in place.
                grow = not consumed
                if grow and buf.shape[0] >= MAX_WINDOW_BYTES:
                    yield from batches
                    break
                fresh = pool.take(buf.shape[0] * 2 if grow else self.window_bytes)
                fresh[:rest] = buf[consumed:fill]
                buf, fill = fresh, rest
            yield from batches
            del batches
            if eof and not consumed:
                break
        self.leftover_bytes = fill
        self.bytes_total = stream_pos + fill if eof else None

    # -- facts ---------------------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        return self.parser.problem

    @property
    def linktypes(self) -> list[int]:
        return list(self.parser.linktypes)

    @property
    def anomalies(self) -> dict[str, int]:
        return dict(self.parser.anomalies)

    def close(self) -> None:
        for f in (self._stream, self._file):
            if f is not None and f is not sys.stdin.buffer:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _BufferPool:
    """Read buffers for streams, reused once no frame batch points into them any more.

    Reusing buffers avoids first-touch page faults on fresh memory, which cost more than the
    reads themselves on these machines; a buffer still referenced by a batch in flight is never
    handed out again, so batches stay valid however long a consumer keeps them.
    """

    MAX_POOLED = 8

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []

    def take(self, size: int) -> np.ndarray:
        for buf in self._buffers:
            # Referenced only by the pool list, this loop and getrefcount's argument.
            if buf.shape[0] >= size and sys.getrefcount(buf) <= 3:
                return buf[:size] if buf.shape[0] > size else buf
        buf = np.empty(size, np.uint8)
        if len(self._buffers) < self.MAX_POOLED:
            self._buffers.append(buf)
        return buf


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def path_label(path: str | Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)

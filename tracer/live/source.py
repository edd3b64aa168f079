"""The live source: the pcapng stream from dumpcap's pipe to decoded batches (the I/O edge).

Rules:
- A reader thread owns the pipe. It reads whatever has arrived, and cuts a batch when it holds
  `batch_bytes` or the oldest byte waited `max_wait_s` (so a quiet link still shows up in the
  next window). The parser is the offline one (tracer.source.formats.PcapngParser): it is fed
  buffers and returns frame batches and how many bytes were whole blocks; the rest is kept for
  the next read. Decoding happens in the reader thread too, overlapping the flow stage.
- The reader never blocks on tracer: batches go into a bounded hand-off (`Handoff`); when it
  is full, the batch is dropped and counted (`dropped_frames`, `dropped_batches`). Blocking
  instead would stall dumpcap and make the kernel drop, silently for us until dumpcap's
  counters at exit; dropping here is visible at once and the saved file stays complete.
- `CaptureWriter` (`--write`) saves the byte stream as it was read, block-aligned, before any
  drop, so the file holds what dumpcap captured and `tracer analyze FILE` reads what the live
  analysis read. With a ring (`files`, `size_bytes`) each file starts with the stream's own
  section header and interface descriptions, so every file is a capture by itself and
  `tracer analyze --join` reads them in order as one.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tracer.decode import decode_frames
from tracer.errors import TracerError
from tracer.source.formats import PCAPNG_EPB, PCAPNG_PB, PCAPNG_SPB, PcapngParser

BATCH_BYTES = 4 << 20
MAX_WAIT_S = 0.2
HANDOFF_BATCHES = 64
READ_BYTES = 1 << 20


class CaptureWriter:
    """The stream as read, into one file or a ring of `files` files of about `size_bytes`."""

    def __init__(self, path: str, files: int = 0, size_bytes: int = 0) -> None:
        self.path = Path(path)
        self.files = files
        self.size_bytes = size_bytes
        self.header = bytearray()  # section header + interface descriptions, for ring files
        self._header_done = False
        self._fh = None
        self._written = 0
        self.paths: list[Path] = []  # files of the ring still on disk, oldest first
        self._sequence = 0
        self.bytes_written = 0
        self._open_next()

    def _name(self) -> Path:
        if not self.files:
            return self.path
        suffix = "".join(self.path.suffixes) or ".pcapng"
        stem = self.path.name[: len(self.path.name) - len(suffix)] if self.path.suffixes else self.path.name
        return self.path.with_name(f"{stem}_{self._sequence:05d}{suffix}")

    def _open_next(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._sequence += 1
        target = self._name()
        try:
            self._fh = open(target, "wb")  # noqa: SIM115 - closed in close()/rotation
        except OSError as exc:
            raise TracerError(f"{target}: cannot write ({exc.strerror or exc})") from None
        self.paths.append(target)
        self._written = 0
        if self.files and self._header_done:
            self._fh.write(self.header)
            self._written = len(self.header)
        while self.files and len(self.paths) > self.files:
            old = self.paths.pop(0)
            try:
                old.unlink()
            except OSError:
                pass

    def write(self, data: np.ndarray) -> None:
        """Whole blocks only (the parser's consumed bytes)."""
        if data.shape[0] == 0:
            return
        if self.files and self.size_bytes and self._written >= self.size_bytes and self._header_done:
            self._open_next()
        raw = data.tobytes()
        if not self._header_done:
            self._collect_header(raw)
        self._fh.write(raw)
        self._written += len(raw)
        self.bytes_written += len(raw)

    def _collect_header(self, raw: bytes) -> None:
        """Blocks before the first packet block: the header every ring file starts with."""
        pos = 0
        little = True
        while pos + 12 <= len(raw):
            kind_le = struct.unpack_from("<I", raw, pos)[0]
            if kind_le == 0x0A0D0D0A:
                little = struct.unpack_from("<I", raw, pos + 8)[0] == 0x1A2B3C4D
            order = "<" if little else ">"
            kind, length = struct.unpack_from(order + "II", raw, pos)
            if kind in (PCAPNG_EPB, PCAPNG_SPB, PCAPNG_PB) or length < 12:
                self._header_done = True
                return
            self.header += raw[pos: pos + length]
            pos += length

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Handoff:
    """A bounded, never-blocking hand-off from the reader thread to the event loop."""

    def __init__(self, limit: int, notify: Callable[[], None]) -> None:
        self.limit = limit
        self.notify = notify
        self._items: deque = deque()
        self._lock = threading.Lock()
        self.dropped_frames = 0
        self.dropped_batches = 0
        self.high_water = 0

    def offer(self, item, frames: int) -> bool:
        with self._lock:
            if len(self._items) >= self.limit:
                self.dropped_frames += frames
                self.dropped_batches += 1
                return False
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
        self.notify()
        return True

    def close(self, final) -> None:
        """The end (or an exception): always delivered, past the limit."""
        with self._lock:
            self._items.append(final)
        self.notify()

    def take_all(self) -> list:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)


END = object()


class StreamReader:
    """Reads the pipe in a thread: parse, save, decode, hand off (see the module rules)."""

    def __init__(self, fd: int, handoff: Handoff, writer: CaptureWriter | None = None, *,
                 batch_bytes: int = BATCH_BYTES, max_wait_s: float = MAX_WAIT_S) -> None:
        self.fd = fd
        self.handoff = handoff
        self.writer = writer
        self.batch_bytes = batch_bytes
        self.max_wait_s = max_wait_s
        self.parser = PcapngParser()
        self.bytes_read = 0
        self.leftover_bytes = 0
        self.abort = threading.Event()  # stop at once, without reading to the end
        self._thread = threading.Thread(target=self._run, daemon=True, name="tracer-live-reader")

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # handed to the consumer, which reports it
            self.handoff.close(exc)
            return
        self.handoff.close(END)

    def _loop(self) -> None:
        pending = bytearray()
        offset = 0  # stream offset of pending[0]
        first_at = None
        eof = False
        while not eof and not self.abort.is_set():
            wait = 0.1 if first_at is None else max(first_at + self.max_wait_s - time.monotonic(), 0)
            ready, _, _ = select.select([self.fd], [], [], wait)
            if ready:
                chunk = os.read(self.fd, READ_BYTES)
                if not chunk:
                    eof = True
                else:
                    if first_at is None:
                        first_at = time.monotonic()
                    pending += chunk
                    self.bytes_read += len(chunk)
            due = first_at is not None and time.monotonic() - first_at >= self.max_wait_s
            if pending and (eof or due or len(pending) >= self.batch_bytes):
                consumed = self._parse(bytes(pending), offset)
                del pending[:consumed]
                offset += consumed
                first_at = time.monotonic() if pending else None
            if self.parser.finished:
                break
        self.leftover_bytes = len(pending)

    def _parse(self, data: bytes, offset: int) -> int:
        buf = np.frombuffer(data, np.uint8)
        batches, consumed = self.parser.parse(buf, offset)
        if self.writer is not None:
            self.writer.write(buf[:consumed])
        for frames in batches:
            packets, counts = decode_frames(frames)
            self.handoff.offer((packets, counts), len(frames))
        return consumed

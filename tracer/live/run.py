"""`tracer live`: the event loop that ties dumpcap, the stages and the live outputs together.

Theory of operation (asyncio, on uvloop via tracer.pipeline.run):
- dumpcap (tracer.live.capture) writes pcapng to a pipe; a reader thread (tracer.live.source)
  parses, saves (`--write`) and decodes it and offers batches to a bounded hand-off, waking the
  loop. The loop feeds them to `LiveAnalysis` (the offline stages) and, every `interval_s`,
  settles what it can and emits a window: the view or a JSON line, and the metrics snapshot.
- Stopping (Ctrl-C, SIGTERM, `--duration`): tracer sends SIGTERM to dumpcap's PID; dumpcap
  closes its file and the pipe ends; the reader delivers what was left and the loop drains it,
  then settles everything, emits the last window and writes the final report. A second signal
  abandons the drain (dumpcap killed, the rest of the pipe unread) but still writes the report.
- Nothing is left running: dumpcap is stopped by PID, the metrics server is shut down, the
  reader thread has ended.
- Memory: the live state is bounded (tracer.live.rolling); after each window freed heap memory
  is handed back to the system (`release_freed_memory`), so RSS follows the live state and does
  not stay at the peak of a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import resource
import signal
import sys
import time
from dataclasses import dataclass, field

from tracer.analysis import AttributionOptions
from tracer.live.capture import Capture
from tracer.live.rolling import CONTEXT_S, MAX_FLOWS, MAX_ROWS, LiveAnalysis
from tracer.live.source import END, HANDOFF_BATCHES, CaptureWriter, Handoff, StreamReader
from tracer.live.view import render_jsonl, render_text, window_document
from tracer.output import write_stdout


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system. After a stall (the machine busy, the hand-off
    full of batches, the stages catching up on big batches) glibc keeps the freed memory in
    its heap: the process's RSS then stays at the stall's peak although the live state is back
    to its bounded size (measured: 296 MB kept vs 67 MB live after a 64-batch stall)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class LiveSettings:
    interfaces: list[str]
    bpf: str | None = None
    duration_s: float | None = None
    interval_s: float = 2.0
    write: str | None = None
    ring_files: int = 0
    ring_size_mb: int = 0
    output_format: str = "text"  # text | jsonl
    output: str = "-"
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    snaplen: int = 256
    buffer_mb: int = 32
    attribution: AttributionOptions = field(default_factory=AttributionOptions)
    settle_s: float | None = None  # None: tracer.live.rolling.settle_for the config
    context_s: float = CONTEXT_S
    max_flows: int = MAX_FLOWS
    max_rows: int = MAX_ROWS
    handoff_batches: int = HANDOFF_BATCHES


@dataclass
class LiveResult:
    summary: dict
    dropped: dict[str, int]
    interrupted: bool


class _Output:
    """Where windows go: a terminal (redrawn in place), a pipe or a file (appended)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh = sys.stdout if path == "-" else open(path, "w", encoding="utf-8")  # noqa: SIM115
        self.redraw = path == "-" and sys.stdout.isatty()

    def write(self, text: str, replace: bool = False) -> None:
        try:
            if self.redraw and replace:
                text = "\x1b[H\x1b[2J" + text
            if self.fh is sys.stdout:
                write_stdout(text)  # whole, even if a signal cuts a write short
            else:
                self.fh.write(text)
                self.fh.flush()
        except BrokenPipeError:
            self.fh = open("/dev/null", "w")  # noqa: SIM115 - the reader went away; go on

    def close(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()


async def run_live(settings: LiveSettings) -> LiveResult:
    loop = asyncio.get_running_loop()
    labels = " ".join(f"-i {name}" for name in settings.interfaces)
    if settings.bpf:
        labels += f" -f {settings.bpf!r}"
    analysis = LiveAnalysis("live: " + ", ".join(settings.interfaces), settings.attribution,
                            settle_s=settings.settle_s, context_s=settings.context_s,
                            max_flows=settings.max_flows, max_rows=settings.max_rows)
    capture = Capture(settings.interfaces, settings.bpf, settings.snaplen, settings.buffer_mb)
    writer = None
    metrics = server = None
    output = None
    reader = None
    stops = 0
    started = time.monotonic()
    wake = asyncio.Event()

    def request_stop() -> None:
        nonlocal stops
        stops += 1
        capture.terminate()
        if stops > 1 and reader is not None:  # a second request: do not wait for the drain
            reader.abort.set()
            if capture.proc is not None and capture.proc.poll() is None:
                capture.proc.kill()
        wake.set()

    try:
        if settings.metrics_port is not None:
            from tracer.live.metrics import serve

            metrics, server = serve(settings.metrics_port, settings.metrics_address)
        if settings.write:
            writer = CaptureWriter(settings.write, settings.ring_files,
                                   settings.ring_size_mb * 1_000_000)
        output = _Output(settings.output)
        await loop.run_in_executor(None, capture.start)
        handoff = Handoff(settings.handoff_batches, lambda: loop.call_soon_threadsafe(wake.set))
        reader = StreamReader(capture.stdout_fd, handoff, writer)
        reader.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, request_stop)
        if settings.duration_s is not None:
            loop.call_later(settings.duration_s, request_stop)
        next_tick = time.monotonic() + settings.interval_s
        dropped_before = 0
        done = False
        while not done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(next_tick - time.monotonic(), 0.0))
            wake.clear()
            for item in handoff.take_all():
                if item is END:
                    done = True
                elif isinstance(item, BaseException):
                    raise item
                else:
                    analysis.add(*item)
            if time.monotonic() >= next_tick and not done:
                window, total = analysis.tick(time.time_ns())
                behind = handoff.dropped_frames > dropped_before
                dropped_before = handoff.dropped_frames
                _emit(settings, output, analysis, window, total, labels, metrics,
                      {"tracer": handoff.dropped_frames}, behind, started)
                release_freed_memory()
                next_tick += settings.interval_s * max(
                    1, int((time.monotonic() - next_tick) // settings.interval_s) + 1)
        reader.join(10.0)
        capture.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        drops = _drops(handoff, capture)
        retained = analysis.retained_rows()  # before finish() closes the open flows
        window, total = analysis.finish()
        _emit(settings, output, analysis, window, total, labels, metrics, drops,
              handoff.dropped_frames > dropped_before, started, final=True)
        summary = analysis.final_summary(
            capture_format="pcapng", linktypes=reader.parser.linktypes,
            leftover_bytes=reader.leftover_bytes, reader_anomalies=reader.parser.anomalies,
            problem=reader.parser.problem)
        summary["live"] = {
            "interfaces": settings.interfaces,
            "capture_filter": settings.bpf,
            "capture_tool": capture.argv[0],
            "wall_s": round(time.monotonic() - started, 3),
            "windows": analysis.windows,
            "generations": analysis.generations,
            "dropped_frames": drops,
            "dumpcap_interfaces": capture.drops(),
            "handoff_high_water": handoff.high_water,
            "bytes_read": reader.bytes_read,
            "retained_rows": retained,
            "written": [str(p) for p in writer.paths] if writer else [],
            "since_start": window_document(0, settings.interval_s, window, total, rtt_ms={},
                                           newest=[], unsettled=0, drops=drops, behind=False,
                                           generations=analysis.generations,
                                           elapsed_s=0)["since_start"],
        }
        # the high-water mark of the whole run, final report included (Linux: kB)
        summary["live"]["peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return LiveResult(summary=summary, dropped=drops, interrupted=stops > 0)
    finally:
        if reader is not None:
            reader.abort.set()
        capture.stop()
        if reader is not None:
            reader.join(5.0)
        if writer is not None:
            writer.close()
        if server is not None:
            server.shutdown()
            server.server_close()
        if output is not None:
            output.close()


def _drops(handoff: Handoff, capture: Capture) -> dict[str, int]:
    per_iface = capture.drops().values()
    return {"tracer": handoff.dropped_frames,
            "kernel": sum(e.get("pcap", 0) for e in per_iface),
            "dumpcap": sum(e.get("dumpcap", 0) for e in per_iface),
            "interface": sum(e.get("ps_ifdrop", 0) for e in per_iface)}


def _emit(settings: LiveSettings, output: _Output, analysis: LiveAnalysis, window, total,
          labels: str, metrics, drops: dict[str, int], behind: bool, started: float,
          final: bool = False) -> None:
    doc = window_document(analysis.windows, settings.interval_s, window, total,
                          rtt_ms=analysis.window_rtt_ms(), newest=list(analysis.newest),
                          unsettled=analysis.unsettled_rsts, drops=drops, behind=behind,
                          generations=analysis.generations,
                          elapsed_s=time.monotonic() - started, final=final)
    if settings.output_format == "jsonl":
        output.write(render_jsonl(doc))
    else:
        output.write(render_text(doc, labels) + ("" if output.redraw else "\n"), replace=True)
    if metrics is not None:
        metrics.publish(total, drops, analysis.unsettled_rsts)

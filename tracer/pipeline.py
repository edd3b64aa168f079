"""The asyncio driver that connects the stages for one capture (the I/O edge).

Theory of operation: a source runs in a worker thread (memory-mapped reads, gzip inflation,
or pyshark with its own event loop) together with decode, and hands decoded batches to the event
loop through a bounded queue, so a slow consumer holds the reader back instead of letting
batches pile up. The event loop thread runs the flow stage and the aggregates. numpy releases
the GIL in its loops, so reading and decoding the next batches overlap the flow stage of this
one; the reader waits only for room in the queue, never for the loop (see `_pump`).

The core stages know nothing of this module: it only calls their pure functions.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from tracer.decode import decode_frames, decode_frames_with_payload, flag_counts
from tracer.decode.payload import PayloadRequest
from tracer.filter import Mask
from tracer.flows import FlowTracker, prepare_packets
from tracer.packet import DecodeCounts
from tracer.source import open_capture

if TYPE_CHECKING:
    from tracer.analysis import AttributionOptions, CaptureAnalysis

QUEUE_BATCHES = 1  # decoded batches the reader may hold ready (it overlaps the flow stage)
Progress = Callable[[int, int | None, int], None]  # bytes read, bytes total, frames so far

_DONE = object()


def run(coro):
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _pump(make_items: Callable[[], Iterator], queue: asyncio.Queue,
                stop: threading.Event, room: threading.Semaphore) -> None:
    """Move items from a blocking iterator (made and run in a worker thread) into a queue.

    The thread waits only for `room` (one unit per item the consumer has not taken yet), never
    for the event loop: an item handed over with call_soon_threadsafe is taken by the consumer,
    which then handles it at once, so a producer waiting for the loop to confirm its put would
    sit idle through that whole handling, and reading would never overlap it."""
    loop = asyncio.get_running_loop()

    def hand_over(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            for item in make_items():
                while not room.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                hand_over(item)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            hand_over(exc)
            return
        hand_over(_DONE)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracer-source") as pool:
        await loop.run_in_executor(pool, produce)


async def consume(make_items: Callable[[], Iterator], handle: Callable[[object], None]) -> None:
    """Run `make_items()` in a reader thread and `handle` each item, in order, on the event
    loop, the reader working ahead by up to QUEUE_BATCHES items: the overlap every offline
    analysis runs with (and the benchmark measures)."""
    queue: asyncio.Queue = asyncio.Queue()  # bounded by `room`
    room = threading.Semaphore(QUEUE_BATCHES)
    stop = threading.Event()
    producer = asyncio.create_task(_pump(make_items, queue, stop, room))
    try:
        while True:
            item = await queue.get()
            room.release()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            handle(item)
    finally:
        stop.set()
        room.release()  # a producer waiting for room wakes and sees `stop`
        await asyncio.wait({producer})
        if not producer.cancelled():
            producer.result()  # re-raise what the producer thread raised, if anything


# The flow stage pays a fixed cost per batch (a few thousand numpy calls), so small batches,
# such as the tail of each mapped window of a file, are joined to the next one.
COALESCE_ROWS = 32768


def coalesced(batches: Iterator[tuple],
              min_rows: int = COALESCE_ROWS) -> Iterator[tuple]:
    """Decoded batches of at least `min_rows` packets (the last one may be smaller), in order.
    Items are (packets, counts) or, with payload prefixes, (packets, counts, prefixes)."""
    held: list[np.ndarray] = []
    extra: list[np.ndarray] = []
    counts: DecodeCounts | None = None
    rows = 0

    def joined() -> tuple:
        packets = held[0] if len(held) == 1 else np.concatenate(held)
        if not extra:
            return packets, counts
        return packets, counts, extra[0] if len(extra) == 1 else np.concatenate(extra)

    for packets, more, *prefixes in batches:
        held.append(packets)
        extra.extend(prefixes)
        if counts is None:
            counts = more
        else:
            counts.merge(more)
        rows += packets.shape[0]
        if rows >= min_rows:
            yield joined()
            held, extra, counts, rows = [], [], None, 0
    if counts is not None:
        yield joined()


async def analyze_native(path: str | list[str], *, packet_filter: Mask | None = None,
                         filter_expr: str | None = None,
                         progress: Progress | None = None,
                         attribution: AttributionOptions | None = None,
                         jobs: int = 1,
                         flow_timeouts: dict[str, float] | None = None,
                         ) -> tuple[CaptureAnalysis, dict]:
    """One capture; a list of paths is read as one capture, file after file (`--join`): flows
    continue across files and frame numbers go on counting, as if the files were concatenated
    (mergecap -a). With `jobs` > 1 the flow stage runs on that many worker processes.
    `flow_timeouts` (idle_timeout_s, closed_timeout_s) go to the flow stage."""
    paths = path if isinstance(path, list) else [path]
    labels = ["<stdin>" if p == "-" else p for p in paths]
    from tracer.analysis import AttributionOptions  # the analysis stack: only for analyses

    options = attribution or AttributionOptions()
    flow_options = {"keep_flows": options.enabled, "keep_segments": options.enabled,
                    **(flow_timeouts or {})}
    if jobs > 1:
        from tracer.parallel import ShardedFlowTracker

        tracker = ShardedFlowTracker(jobs, **flow_options)
    else:
        tracker = FlowTracker(**flow_options)
    try:
        return await _analyze_native(paths, labels, options, tracker, packet_filter,
                                     filter_expr, progress)
    finally:
        if jobs > 1:
            tracker.close()


async def _analyze_native(paths, labels, options, tracker, packet_filter, filter_expr,
                          progress) -> tuple[CaptureAnalysis, dict]:
    from tracer.analysis import CaptureAnalysis

    analysis = CaptureAnalysis(path=" + ".join(labels), engine="native", options=options,
                               flows=tracker)
    facts = {"format": [], "compressed": False, "linktypes": [], "leftover": 0,
             "anomalies": {}, "problem": None}
    frames_before = 0
    # A single in-process tracker takes batches prepared in the reader thread.
    prepare = prepare_packets if isinstance(tracker, FlowTracker) else None
    for one in paths:
        with open_capture(one) as reader:
            reader.parser.frames_emitted = frames_before

            def decoded(reader=reader) -> Iterator[tuple]:
                # Decoding, the filter and the flow stage's packet-only work run in the
                # reader's thread, overlapped with the flow stage of the previous batch (numpy
                # releases the GIL in both).
                prefixes = analysis.prefixes
                if prefixes is None:
                    batches = coalesced(decode_frames(frames) for frames in reader.batches())
                else:
                    request = PayloadRequest(prefixes.k)
                    # payload only while the prefix store wants it (it may stop after probing)
                    batches = coalesced(decode_frames_with_payload(frames, request)
                                        if prefixes.active else decode_frames(frames)
                                        for frames in reader.batches())
                return (_ready(item, packet_filter, prepare) for item in batches)

            def handle(item, reader=reader) -> None:
                packets, counts, dropped, prepared, payload = item
                analysis.filtered_out += dropped
                analysis.add(packets, counts, payload, prepared=prepared)
                if progress is not None:
                    progress(reader.bytes_read, reader.bytes_total, analysis.counts.frames)

            await consume(decoded, handle)
            frames_before = reader.parser.frames_emitted
            facts["format"].append(reader.format)
            facts["compressed"] |= reader.compressed
            facts["linktypes"] += [lt for lt in reader.linktypes if lt not in facts["linktypes"]]
            facts["leftover"] += reader.leftover_bytes
            for name, count in reader.anomalies.items():
                facts["anomalies"][name] = facts["anomalies"].get(name, 0) + count
            if reader.problem and facts["problem"] is None:
                facts["problem"] = f"{one}: {reader.problem}" if len(paths) > 1 else reader.problem
    summary = analysis.summary(
        capture_format="+".join(dict.fromkeys(facts["format"])),
        compressed=facts["compressed"],
        linktypes=facts["linktypes"],
        leftover_bytes=facts["leftover"],
        reader_anomalies=facts["anomalies"],
        problem=facts["problem"],
        filter_expr=filter_expr,
    )
    if len(paths) > 1:
        summary["paths"] = labels
    return analysis, summary


async def analyze_pyshark(path: str, *, packet_filter: Mask | None = None,
                          filter_expr: str | None = None,
                          progress: Progress | None = None,
                          attribution: AttributionOptions | None = None) -> tuple[CaptureAnalysis, dict]:
    from tracer.analysis import AttributionOptions, CaptureAnalysis
    from tracer.source.pyshark_engine import read_packets_pyshark

    spooled = None
    if path == "-":
        # tshark behind pyshark wants a file: spool stdin to one, removed afterwards.
        fd, spooled = tempfile.mkstemp(prefix="tracer-stdin-", suffix=".pcap")
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
    try:
        analysis = CaptureAnalysis(path="<stdin>" if path == "-" else path, engine="pyshark",
                                   options=attribution or AttributionOptions())

        def handle(item) -> None:
            packets, counts = item
            _add(analysis, packets, counts, packet_filter)
            if progress is not None:
                progress(0, None, analysis.counts.frames)

        await consume(lambda: read_packets_pyshark(spooled or path), handle)
        return analysis, analysis.summary(filter_expr=filter_expr)
    finally:
        if spooled:
            os.unlink(spooled)


def _filtered(packets: np.ndarray, counts: DecodeCounts,
              packet_filter: Mask | None) -> tuple[np.ndarray, int]:
    """The packets the filter keeps, and how many it dropped."""
    if packet_filter is None or packets.shape[0] == 0:
        return packets, 0
    keep = packet_filter(packets)
    dropped = int(packets.shape[0] - np.count_nonzero(keep))
    packets = packets[keep]
    # Per-segment facts describe what the filter kept; frame-level counts stay whole.
    counts.flag_counts = flag_counts(packets["flags"])
    return packets, dropped


def _ready(item: tuple, packet_filter: Mask | None, prepare) -> tuple:
    """A decoded batch made ready in the reader thread (all pure): filtered, and with the flow
    stage's packet-only work done when `prepare` is given."""
    packets, counts, *payload = item
    packets, dropped = _filtered(packets, counts, packet_filter)
    prepared = prepare(packets) if prepare is not None else None
    return packets, counts, dropped, prepared, payload[0] if payload else None


def _add(analysis: CaptureAnalysis, packets: np.ndarray, counts: DecodeCounts,
         packet_filter: Mask | None, payload: np.ndarray | None = None) -> None:
    packets, dropped = _filtered(packets, counts, packet_filter)
    analysis.filtered_out += dropped
    analysis.add(packets, counts, payload)

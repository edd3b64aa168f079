"""The flow stage on several processes (an I/O edge: processes and pipes).

Theory of operation: flows are independent of each other, so the packets of a batch are split
by 4-tuple (tracer.flows.tracker.endpoint_shard: both directions and every reuse of a 4-tuple go
to the same shard) and each shard runs an ordinary FlowTracker in its own process, all shards
at once. The parent numbers flows as one tracker would (tracer.flows.merge.FlowNumbering, from
the first frames each shard reports per batch) and merges the tables at the end, so the results
equal a single tracker's (flow ids included; the RTT reservoir, when the cap is reached, is
drawn from the shards in proportion to what each saw).

Rules: workers are started with "spawn" (the parent runs threads: a reader thread and an event
loop), ignore SIGINT (the parent decides when to stop them) and are stopped by the parent, by
their Process handles, in `close()` whatever happens. One batch is in flight at a time: `add`
returns once the batch is sent, and the shards' answers are collected before the next one
goes out, so the caller decodes the next batch while the shards work on this one.
"""

from __future__ import annotations

import multiprocessing as mp
import signal

import numpy as np

from tracer.flows.merge import FlowNumbering, merge_counts, merge_reservoirs
from tracer.flows.tables import FLOW_DTYPE, RST_DTYPE, RTT_DTYPE, SEGMENT_DTYPE
from tracer.flows.tracker import DEFAULT_MAX_RTT_SAMPLES, FlowCounts, FlowTracker, endpoint_shard
from tracer.packet import PACKET_DTYPE


class WorkerFailed(RuntimeError):
    """A flow-stage worker process died or raised."""


def _worker(conn, options: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tracker = FlowTracker(report_new_flows=True, **options)
    try:
        while True:
            message = conn.recv_bytes()
            try:
                if len(message) >= PACKET_DTYPE.itemsize:  # a packet batch, as raw rows
                    tracker.add(np.frombuffer(message, PACKET_DTYPE))
                    segments = tracker.take_segments() if tracker.keep_segments else None
                    conn.send(("ok", tracker.take_new_flows(), segments))
                elif message == b"finish":
                    tracker.finish()
                    conn.send(("ok", tracker.take_new_flows(), tracker.flows, tracker.rsts,
                               tracker.rtts, tracker.counts, tracker.rtt_samples_seen))
                else:
                    return
            except Exception as exc:  # reported to the parent, which raises WorkerFailed
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
                return
    except (EOFError, KeyboardInterrupt):
        return


class ShardedFlowTracker:
    """FlowTracker's interface (add, finish, flows, rsts, rtts, segments, take_segments, counts,
    rtt_samples_seen) over `jobs` worker processes."""

    def __init__(self, jobs: int, **options) -> None:
        if jobs < 2:
            raise ValueError("ShardedFlowTracker needs at least 2 jobs")
        self.jobs = jobs
        self.keep_segments = bool(options.get("keep_segments", False))
        self.keep_flows = bool(options.get("keep_flows", True))
        self.max_rtt_samples = int(options.get("max_rtt_samples", DEFAULT_MAX_RTT_SAMPLES))
        self._numbering = FlowNumbering(jobs)
        self._segments: list[np.ndarray] = []
        self._result: tuple | None = None
        self._waiting: list[int] = []  # shards holding the batch in flight
        self._rng = np.random.default_rng(0x7AC3)
        context = mp.get_context("spawn")
        self._conns, self._procs = [], []
        try:
            for k in range(jobs):
                parent, child = context.Pipe()
                proc = context.Process(target=_worker, args=(child, options), daemon=True,
                                       name=f"tracer-flows-{k}")
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    # -- feeding ---------------------------------------------------------------------------

    def _ask(self, k: int) -> tuple:
        try:
            answer = self._conns[k].recv()
        except (EOFError, OSError) as exc:
            raise WorkerFailed(f"flow worker {k} exited") from exc
        if answer[0] != "ok":
            raise WorkerFailed(f"flow worker {k}: {answer[1]}")
        return answer[1:]

    def add(self, packets: np.ndarray) -> None:
        """Hand a batch to the shards and return at once; their answers are collected before
        the next batch goes out (or when results are asked for), so the caller reads and
        decodes the next batch while the shards work."""
        if packets.shape[0] == 0:
            return
        self._collect()
        shard = endpoint_shard(packets, self.jobs)
        # Whole rows as opaque items: numpy copies a structured row field by field otherwise.
        rows_as_items = np.ascontiguousarray(packets).view(
            np.dtype((np.void, packets.dtype.itemsize)))
        for k in range(self.jobs):
            rows = np.flatnonzero(shard == k)  # in capture order
            if rows.size:
                self._conns[k].send_bytes(rows_as_items[rows])
                self._waiting.append(k)

    def _collect(self) -> None:
        """The answers to the batch in flight: new flows' numbers, segment rows."""
        if not self._waiting:
            return
        firsts = [np.zeros(0, np.int64)] * self.jobs
        segments = []
        for k in self._waiting:
            new_flows, rows = self._ask(k)
            firsts[k] = new_flows
            if rows is not None:
                segments.append((k, rows))
        self._waiting = []
        self._numbering.add(firsts)
        if self.keep_segments and segments:
            self._segments.append(self._merge_rows(segments, SEGMENT_DTYPE))

    def _merge_rows(self, parts: list[tuple[int, np.ndarray]], dtype, by: str = "frame"):
        """Rows of several shards with global flow ids, sorted by one column."""
        tables = []
        for k, rows in parts:
            rows = rows.copy()
            rows["flow_id"] = self._numbering.globalize(k, rows["flow_id"])
            tables.append(rows)
        merged = np.concatenate(tables) if tables else np.zeros(0, dtype)
        return merged[np.argsort(merged[by], kind="stable")]

    def finish(self) -> None:
        if self._result is not None:
            return
        self._collect()
        for conn in self._conns:
            conn.send_bytes(b"finish")
        answers = [self._ask(k) for k in range(self.jobs)]
        self._numbering.add([a[0] for a in answers])
        flows = self._merge_rows([(k, a[1]) for k, a in enumerate(answers)], FLOW_DTYPE,
                                 "flow_id")
        rsts = self._merge_rows([(k, a[2]) for k, a in enumerate(answers)], RST_DTYPE)
        rtt_parts = [(k, a[3]) for k, a in enumerate(answers)]
        seen = [a[5] for a in answers]
        rtts = merge_reservoirs([self._merge_rows([part], RTT_DTYPE) for part in rtt_parts],
                                seen, self.max_rtt_samples, self._rng)
        rtts = rtts[np.argsort(rtts["frame"], kind="stable")] if rtts.size \
            else np.zeros(0, RTT_DTYPE)
        self._result = (flows, rsts, rtts, merge_counts([a[4] for a in answers]), sum(seen))
        self.close()

    # -- results ---------------------------------------------------------------------------

    def _done(self) -> tuple:
        if self._result is None:
            raise RuntimeError("call finish() first")
        return self._result

    @property
    def flows(self) -> np.ndarray:
        return self._done()[0]

    @property
    def rsts(self) -> np.ndarray:
        return self._done()[1]

    @property
    def rtts(self) -> np.ndarray:
        return self._done()[2]

    @property
    def counts(self) -> FlowCounts:
        return self._done()[3] if self._result is not None else FlowCounts()

    @property
    def rtt_samples_seen(self) -> int:
        return self._done()[4]

    @property
    def segments(self) -> np.ndarray:
        self._collect()
        return np.concatenate(self._segments) if self._segments else np.zeros(0, SEGMENT_DTYPE)

    def take_segments(self) -> np.ndarray:
        self._collect()
        rows = self.segments
        self._segments.clear()
        return rows

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers (by their handles): politely, then for good."""
        for conn in self._conns:
            try:
                conn.send_bytes(b"stop")
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> ShardedFlowTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

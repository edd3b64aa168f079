"""The flow stage on several processes (an I/O edge: processes, pipes and shared memory).

Theory of operation: flows are independent of each other, so the packets of a batch are split
by 4-tuple (tracer.flows.tracker.endpoint_shard: both directions and every reuse of a 4-tuple go
to the same shard) and each shard runs an ordinary FlowTracker in its own process, all shards
at once. The parent numbers flows as one tracker would (tracer.flows.merge.FlowNumbering, from
the first frames each shard reports per batch) and merges the tables at the end, so the results
equal a single tracker's (flow ids included; the RTT reservoir, when the cap is reached, is
drawn from the shards in proportion to what each saw).

Hand-off: a shard's packet rows are gathered straight into a shared-memory buffer of its worker
(one copy; a pipe would copy them three times and block the parent while the worker is busy),
and only a few bytes go down the pipe. Each worker has two buffers, so up to two batches are in
flight: the parent decodes and shards batch k+1 while the workers analyse batch k, and answers
are collected in batch order (the flow numbering needs that order). With `keep_segments` the
caller pairs each batch with its segment rows, so `take_segments` collects everything in flight.

Rules: workers are started with "spawn" (the parent runs threads: a reader thread and an event
loop), ignore SIGINT (the parent decides when to stop them) and are stopped by the parent, by
their Process handles, in `close()` whatever happens; the parent owns (creates and unlinks) every
shared-memory buffer, a worker only attaches. A buffer is rewritten only after its batch's
answer came back, and a worker keeps no view of a buffer past `add`.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections import deque
from multiprocessing import shared_memory

import numpy as np

from tracer.errors import TracerError
from tracer.flows.merge import FlowNumbering, merge_counts, merge_reservoirs
from tracer.flows.tables import FLOW_DTYPE, RST_DTYPE, RTT_DTYPE, SEGMENT_DTYPE
from tracer.flows.tracker import DEFAULT_MAX_RTT_SAMPLES, FlowCounts, FlowTracker, endpoint_shard
from tracer.packet import PACKET_DTYPE


class WorkerFailed(TracerError):
    """A flow-stage worker process died (killed, out of memory) or raised: one line and a
    non-zero exit in the CLI, like any other TracerError."""

    exit_code = 1


IN_FLIGHT = 2  # batches handed out before the oldest one's answers are collected
_ROW = PACKET_DTYPE.itemsize


def _attach(name: str) -> shared_memory.SharedMemory:
    """A buffer the parent created. Workers are spawned with the parent's resource tracker, so
    the attachment's registration is the parent's own (a set: registering again changes
    nothing) and the parent's unlink clears it; a worker must not unregister it."""
    return shared_memory.SharedMemory(name=name)


def _worker(conn, options: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tracker = FlowTracker(report_new_flows=True, **options)
    buffers: dict[int, shared_memory.SharedMemory] = {}  # buffer index -> attached buffer
    try:
        while True:
            message = conn.recv()
            try:
                if message[0] == "batch":
                    _, index, name, rows = message
                    shm = buffers.get(index)
                    if shm is None or shm.name != name:  # the parent grew it
                        if shm is not None:
                            shm.close()
                        shm = buffers[index] = _attach(name)
                    packets = np.ndarray((rows,), PACKET_DTYPE, buffer=shm.buf)
                    tracker.add(packets)
                    del packets  # no view of the buffer past add: the parent reuses it
                    segments = tracker.take_segments() if tracker.keep_segments else None
                    conn.send(("ok", tracker.take_new_flows(), segments))
                elif message[0] == "finish":
                    tracker.finish()
                    conn.send(("ok", tracker.take_new_flows(), tracker.flows, tracker.rsts,
                               tracker.rtts, tracker.counts, tracker.rtt_samples_seen))
                else:
                    return
            except Exception as exc:  # reported to the parent, which raises WorkerFailed
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
                return
    except (EOFError, OSError, KeyboardInterrupt):
        return
    finally:
        for shm in buffers.values():
            shm.close()


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
        # Batches handed out, oldest first: the shards holding each.
        self._in_flight: deque[list[int]] = deque()
        self._batches_sent = 0
        # Per worker, IN_FLIGHT shared buffers (created and grown on demand).
        self._buffers: list[list[shared_memory.SharedMemory | None]] = [
            [None] * IN_FLIGHT for _ in range(jobs)]
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

    def _tell(self, k: int, message: tuple) -> None:
        try:
            self._conns[k].send(message)
        except (OSError, ValueError) as exc:
            raise WorkerFailed(f"flow worker {k} exited") from exc

    def _buffer(self, k: int, index: int, rows: int) -> shared_memory.SharedMemory:
        """Worker k's buffer `index`, large enough for `rows` packet rows."""
        shm = self._buffers[k][index]
        if shm is None or shm.size < rows * _ROW:
            if shm is not None:
                shm.close()
                shm.unlink()
                self._buffers[k][index] = None
            # Headroom, so a batch a little larger than the last does not recreate it.
            shm = shared_memory.SharedMemory(create=True, size=max(rows + rows // 4, 1024) * _ROW)
            self._buffers[k][index] = shm
        return shm

    def add(self, packets: np.ndarray) -> None:
        """Hand a batch to the shards and return at once (once IN_FLIGHT batches are out, the
        oldest one's answers are collected first), so the caller reads and decodes the next
        batch while the shards work."""
        if packets.shape[0] == 0:
            return
        while len(self._in_flight) >= IN_FLIGHT:
            self._collect_oldest()
        shard = endpoint_shard(packets, self.jobs).astype(np.uint8)
        order = np.argsort(shard, kind="stable")  # by shard, capture order within one
        bounds = np.concatenate(([0], np.cumsum(np.bincount(shard, minlength=self.jobs))))
        # Whole rows as opaque items: numpy copies a structured row field by field otherwise.
        rows_as_items = np.ascontiguousarray(packets).view(np.dtype((np.void, _ROW)))
        index = self._batches_sent % IN_FLIGHT
        waiting = []
        for k in range(self.jobs):
            rows = order[bounds[k]:bounds[k + 1]]
            if rows.size:
                shm = self._buffer(k, index, rows.size)
                target = np.ndarray((rows.size,), rows_as_items.dtype, buffer=shm.buf)
                np.take(rows_as_items, rows, out=target)
                del target
                self._tell(k, ("batch", index, shm.name, rows.size))
                waiting.append(k)
        self._in_flight.append(waiting)
        self._batches_sent += 1

    def _collect_oldest(self) -> None:
        """The answers to the oldest batch in flight: new flows' numbers, segment rows."""
        waiting = self._in_flight.popleft()
        firsts = [np.zeros(0, np.int64)] * self.jobs
        segments = []
        for k in waiting:
            new_flows, rows = self._ask(k)
            firsts[k] = new_flows
            if rows is not None:
                segments.append((k, rows))
        self._numbering.add(firsts)
        if self.keep_segments and segments:
            self._segments.append(self._merge_rows(segments, SEGMENT_DTYPE))

    def _collect(self) -> None:
        while self._in_flight:
            self._collect_oldest()

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
        for k in range(self.jobs):
            self._tell(k, ("finish",))
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
                conn.send(("stop",))
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
        # Unlinked only now: a worker may still have been reading one.
        for pair in self._buffers:
            for i, shm in enumerate(pair):
                if shm is not None:
                    shm.close()
                    shm.unlink()
                    pair[i] = None
        self._in_flight.clear()

    def __enter__(self) -> ShardedFlowTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

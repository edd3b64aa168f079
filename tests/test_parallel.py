"""The flow stage on several processes gives exactly what one tracker gives.

Packets are sharded by 4-tuple over worker processes (tracer.parallel); flow ids, RSTs, RTT
samples, segment rows and counts must come out equal to a single FlowTracker's, on real
captures with port reuse, loss, duplicates, middlebox RST bursts, and both HAProxy legs.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from conftest import CAPTURES, CORPUS
from pcaputil import run_tracer
from test_decode_oracle import decode_file

from tracer.flows import FlowTracker
from tracer.parallel import ShardedFlowTracker, WorkerFailed

CASES = [CAPTURES / "demo-haproxy.pcapng", CAPTURES / "netns-eth-loss.pcapng",
         CAPTURES / "lab" / "out" / "middlebox.pcapng", CAPTURES / "any-sll.pcap",
         CAPTURES / "netns-vlan.pcap", *sorted(CORPUS.glob("*/*.pcap"))[:6]]


def _batches(packets: np.ndarray, size: int):
    for lo in range(0, packets.shape[0], size):
        yield packets[lo:lo + size]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_sharded_flow_stage_equals_one_tracker(path):
    packets, _, _ = decode_file(path)
    single = FlowTracker(keep_segments=True)
    for batch in _batches(packets, 997):
        single.add(batch)
    single.finish()
    for jobs in (2, 3):
        with ShardedFlowTracker(jobs, keep_segments=True) as sharded:
            handed = []
            for batch in _batches(packets, 997):
                sharded.add(batch)
                handed.append(sharded.take_segments())
            sharded.finish()
        segments = np.concatenate(handed)
        pairs = {
            "flows": (np.sort(single.flows, order="flow_id"), sharded.flows),
            "rsts": (np.sort(single.rsts, order="frame"), sharded.rsts),
            "rtts": (np.sort(single.rtts, order=["frame", "kind", "rtt_ns"]),
                     np.sort(sharded.rtts, order=["frame", "kind", "rtt_ns"])),
            "segments": (np.sort(single.segments, order="frame"),
                         np.sort(segments, order="frame")),
        }
        for name, (one, many) in pairs.items():
            assert one.tobytes() == many.tobytes(), (name, jobs)
        assert sharded.counts == single.counts
        assert sharded.rtt_samples_seen == single.rtt_samples_seen
        assert not multiprocessing.active_children()  # workers stopped


def test_reservoir_cap_holds_across_shards():
    packets, _, _ = decode_file(CAPTURES / "demo-haproxy.pcapng")
    with ShardedFlowTracker(2, max_rtt_samples=500) as sharded:
        sharded.add(packets)
        sharded.finish()
    assert sharded.rtt_samples_seen > 500
    assert 495 <= sharded.rtts.shape[0] <= 500


def test_cli_jobs_gives_the_same_document():
    args = ["analyze", str(CAPTURES / "demo-haproxy.pcapng"), "--haproxy-config",
            str(CAPTURES / "lab" / "haproxy-mixed.cfg"), "--format", "json"]
    one = run_tracer(*args)
    two = run_tracer(*args, "--jobs", "2")
    assert one.returncode == two.returncode == 0, two.stderr
    assert json.loads(one.stdout) == json.loads(two.stdout)


def _shared_buffers() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")}


def test_growing_batches_and_no_shared_memory_left_behind():
    before = _shared_buffers()
    packets, _, _ = decode_file(CAPTURES / "demo-haproxy.pcapng")
    single = FlowTracker()
    with ShardedFlowTracker(2) as sharded:
        # Buffers reused, then outgrown (recreated under a new name) while batches are in flight.
        lo = 0
        for size in (500, 500, 100, 2000, 300, 6000, packets.shape[0]):
            batch = packets[lo:lo + size]
            lo += size
            if batch.shape[0]:
                sharded.add(batch)
                single.add(batch)
        sharded.finish()
    single.finish()
    assert sharded.flows.shape[0] > 0
    assert np.sort(single.flows, order="flow_id").tobytes() == sharded.flows.tobytes()
    assert _shared_buffers() - before == set()


def test_a_dead_worker_is_reported_not_a_traceback():
    before = _shared_buffers()
    packets, _, _ = decode_file(CAPTURES / "demo-haproxy.pcapng")
    sharded = ShardedFlowTracker(2)
    try:
        sharded.add(packets[:1000])
        sharded._procs[0].kill()  # the worker this test's tracker started, by its handle
        sharded._procs[0].join(timeout=10)
        with pytest.raises(WorkerFailed, match="flow worker 0"):
            for batch in _batches(packets, 500):
                sharded.add(batch)
            sharded.finish()
    finally:
        sharded.close()
    assert not multiprocessing.active_children()
    assert _shared_buffers() - before == set()

# Source + decode (and with --flows the flow stage) of one capture, timed: the tracer side of
# bench_decode.
#
# Rules:
# - Runs the public stage APIs exactly as the pipeline does (open_capture -> batches ->
#   decode_frames; with --flows, decode in the reader thread and the flow stage on the event
#   loop, through tracer.pipeline.consume, as `tracer analyze` overlaps them) and keeps no
#   packet batch alive past its use, so the process's peak memory is what streaming a file
#   costs.
# - Prints one JSON line on stdout and nothing else there; the parent process measures wall
#   time and peak RSS from outside, this measures the loop itself (imports excluded).

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def _memory_kb() -> dict[str, int]:
    """This process's resident memory by kind (Linux /proc; empty elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            lines = status.read().splitlines()
    except OSError:
        return {}
    wanted = {"VmHWM", "RssAnon", "RssFile"}
    return {
        key: int(value.split()[0])
        for key, _, value in (line.partition(":") for line in lines)
        if key in wanted
    }


def decode_file(path: str, *, flows: bool = False, jobs: int = 1) -> dict[str, float | int | None]:
    from tracer.decode import decode_frames
    from tracer.flows import FlowTracker, prepare_packets
    from tracer.pipeline import coalesced, consume, run
    from tracer.source import open_capture

    # As `tracer analyze` runs it: finished-flow rows are counted, not kept.
    tracker = None
    if flows and jobs > 1:
        from tracer.parallel import ShardedFlowTracker  # multiprocessing: only when asked

        tracker = ShardedFlowTracker(jobs, keep_flows=False)
    elif flows:
        tracker = FlowTracker(keep_flows=False)

    frames = tcp_packets = batches = 0
    # mapped file pages count in RSS but are the page cache's, not ours: anonymous memory is
    # what grows if something accumulates, so track its peak (sampled once per batch)
    peak_anon_kb = 0

    def count(packets, counts) -> None:
        nonlocal frames, tcp_packets, batches, peak_anon_kb
        frames += counts.frames
        tcp_packets += len(packets)
        batches += 1
        peak_anon_kb = max(peak_anon_kb, _memory_kb().get("RssAnon", 0))

    started = time.perf_counter()
    with open_capture(path) as reader:
        if tracker is None:
            for packets, counts in (decode_frames(batch) for batch in reader.batches()):
                count(packets, counts)
                del packets
        else:
            # As the pipeline runs decode + flows: read, decode, join small batches and (for
            # one in-process tracker) prepare them in the reader thread, the flow stage on the
            # event loop.
            prepare = prepare_packets if jobs == 1 else None

            def items():
                for packets, counts in coalesced(decode_frames(b) for b in reader.batches()):
                    yield packets, counts, prepare(packets) if prepare else packets

            def handle(item) -> None:
                packets, counts, ready = item
                tracker.add(ready)
                count(packets, counts)

            run(consume(items, handle))
            tracker.finish()
    seconds = time.perf_counter() - started
    memory = _memory_kb()
    # With workers, their memory counts too: the largest of them (they have exited by now).
    workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if jobs > 1 else None
    return {
        "stages": "source+decode+flows" if flows else "source+decode",
        "packets": frames,
        "tcp_packets": tcp_packets,
        "batches": batches,
        "seconds": round(seconds, 4),
        "packets_per_s": round(frames / seconds) if seconds else 0,
        "peak_rss_kb": memory.get("VmHWM"),
        "peak_rss_anon_kb_sampled": peak_anon_kb or None,
        "jobs": jobs,
        "workers_max_rss_kb": workers_kb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode_only",
        description="Read and decode a capture with tracer; print one JSON line.",
    )
    parser.add_argument("file")
    parser.add_argument("--flows", action="store_true",
                        help="also run the flow stage (decode + flows end to end)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="flow stage processes (sharded by 4-tuple; default 1)")
    args = parser.parse_args(argv)
    print(json.dumps(decode_file(args.file, flows=args.flows, jobs=args.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

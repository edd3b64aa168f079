# Live benchmark: the highest packet rate `tracer live` sustains with zero drops, and its RSS
# over a long run.
#
# Rules:
# - Real components only, inside one network namespace this script creates (the HAProxy lab's
#   loopback topology, captures/lab/lab.py): HAProxy proxies 127.0.1.1:8000 to a server at
#   127.0.2.11:8080 that HAProxy itself answers (`http-request return`), so the load generator
#   and the server cost little; `wrk` (apt: wrk) drives keep-alive HTTP at a given number of
#   connections; `tracer live -i lo` captures both legs, as on an HAProxy host.
# - Bounded: every wrk run has -d, tracer has --duration, each wait a deadline; everything is
#   removed at the end (processes by PID, then the namespace), also on errors or ^C.
# - Drops are the ones tracer reports in its final JSON report: frames its hand-off dropped
#   (tracer behind), and dumpcap's counters (kernel/dumpcap/interface drops).
#
# Theory of operation: for each load level (wrk connections 1, 2, 4, ...), run tracer live for
# --level-seconds with wrk for a little less; the packet rate is the frames tracer read over the
# capture's time span. The answer is the highest rate of a level with zero drops. Then, unless
# --rss-minutes 0, one long run at a steady level with tracer's VmRSS sampled every 5 s from
# /proc (and the 1-minute load average: the machine is shared, other jobs take CPU from dumpcap
# and tracer): flat memory means the last minute's median is close to the second minute's.
# tracer's own peak RSS (final report included) comes from its final report.
#
# Usage: python -m benchmarks.bench_live [--levels 1,2,4,8,16] [--level-seconds 12]
#                                         [--rss-minutes 10] [--rss-connections 2] [--no-write]
#                                         [--delay-ms 1 --results-name live-rate]

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
LAB = REPO / "captures" / "lab" / "lab.py"

HAPROXY_CFG = """\
global
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe_bench
    bind 127.0.1.1:8000
    default_backend be_bench
backend be_bench
    http-reuse always
    server s1 127.0.2.11:8080
frontend fe_server
    bind 127.0.2.11:8080
    http-request return status 200 content-type text/plain string "ok"
"""


def _load_lab():
    spec = importlib.util.spec_from_file_location("tracer_haproxy_lab", LAB)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _run_tracer(lab, workdir: Path, config: Path, seconds: float, connections: int,
                wrk_seconds: float, sample_rss: bool = False, delay_ms: int = 0) -> dict:
    report = workdir / f"report-{connections}-{time.monotonic_ns()}.json"
    windows = workdir / "windows.jsonl"
    windows.write_text("")
    log = workdir / "tracer.log"
    tracer = lab.spawn("lo", [sys.executable, "-m", "tracer", "live", "-i", "lo", "-f", "tcp",
                              "--haproxy-config", str(config), "--interval", "2",
                              "--format", "jsonl", "-o", str(windows), "--report", str(report),
                              "--duration", str(seconds)], log)
    lab.wait_for(tracer, windows, r'"type":"window"', "tracer live")
    wrk_log = workdir / "wrk.log"
    paced = []
    if delay_ms:
        # wrk waits delay() ms before each request of a connection: about
        # connections * 1000 / (delay_ms + latency) requests/s, a rate ladder by connections
        script = workdir / "pace.lua"
        script.write_text(f"function delay()\n  return {int(delay_ms)}\nend\n")
        paced = ["-s", str(script)]
    wrk = lab.spawn("lo", ["wrk", "-t", "1" if connections < 2 else "2", "-c", str(connections),
                           "-d", f"{int(wrk_seconds)}s", "--timeout", "2s", *paced,
                           "http://127.0.1.1:8000/"], wrk_log)
    rss: list[tuple[float, int]] = []
    load: list[tuple[float, float]] = []
    started = time.monotonic()
    deadline = started + seconds + 60
    while tracer.poll() is None and time.monotonic() < deadline:
        if sample_rss:
            kb = _rss_kb(tracer.pid)
            at = round(time.monotonic() - started, 1)
            if kb is not None:
                rss.append((at, kb))
            load.append((at, os.getloadavg()[0]))
        time.sleep(5 if sample_rss else 0.5)
    lab.stop(wrk)
    if tracer.poll() is None:
        lab.stop(tracer)
        raise RuntimeError(f"tracer live overran its duration: {log.read_text()[-500:]}")
    if tracer.returncode != 0:
        raise RuntimeError(f"tracer live failed: {log.read_text()[-800:]}")
    doc = json.loads(report.read_text())["captures"][0]
    live = doc["live"]
    span = max(doc["duration_s"], 1e-9)
    requests = 0
    for line in wrk_log.read_text().splitlines():
        if "requests in" in line:
            requests = int(line.split()[0])
    result = {
        "connections": connections,
        "delay_ms": delay_ms,
        "frames": doc["packets"],
        "capture_span_s": round(span, 3),
        "packets_per_s": round(doc["packets"] / span),
        "requests": requests,
        "dropped_frames": live["dropped_frames"],
        "zero_drops": not any(live["dropped_frames"].values()),
        "handoff_high_water": live["handoff_high_water"],
        "rsts": doc["rsts"],
        "flows": doc["flows"]["total"],
        "wall_s": live["wall_s"],
        "peak_rss_mb": live.get("peak_rss_mb"),  # final report included
        "retained_rows": live.get("retained_rows"),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }
    if sample_rss:
        result["rss_kb"] = rss
        result["loadavg_1min"] = load
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="tracer live: zero-drop packet rate and RSS")
    parser.add_argument("--levels", default="1,2,4,8,16", help="wrk connections per level")
    parser.add_argument("--level-seconds", type=float, default=12.0)
    parser.add_argument("--rss-minutes", type=float, default=10.0,
                        help="length of the RSS run (0: skip it)")
    parser.add_argument("--rss-connections", type=int, default=None,
                        help="wrk connections of the RSS run (default: the best zero-drop level)")
    parser.add_argument("--delay-ms", type=int, default=0,
                        help="wrk waits this long before each request (0: as fast as it can); "
                             "with it, --levels is a ladder of request rates")
    parser.add_argument("--results-name", default="live",
                        help="results go to benchmarks/results/NAME-<time>.json and NAME-latest.json")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_live: needs root (a network namespace, dumpcap)")
    for tool in ("wrk", "haproxy", "dumpcap"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_live: {tool} is not installed (apt-get install {tool})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally cleans up
    lab_mod = _load_lab()
    suffix = secrets.token_hex(3)
    workdir = Path(tempfile.mkdtemp(prefix=f"{lab_mod.NS_PREFIX}{suffix}-"))
    lab = lab_mod.Lab(base=f"{lab_mod.NS_PREFIX}{suffix}", workdir=workdir,
                      net=lab_mod.NETS["loopback"])
    levels = [int(x) for x in args.levels.split(",") if x]
    results = []
    rss_run = None
    try:
        lab.build()
        config = workdir / "haproxy.cfg"
        config.write_text(HAPROXY_CFG)
        haproxy = lab.spawn("lo", ["haproxy", "-db", "-f", str(config)], workdir / "haproxy.log")
        lab.wait_listening("lo", 8000, "haproxy")
        del haproxy
        for connections in levels:
            one = _run_tracer(lab, workdir, config, args.level_seconds, connections,
                              args.level_seconds - 4, delay_ms=args.delay_ms)
            results.append(one)
            print(json.dumps(one), flush=True)
        clean = [r for r in results if r["zero_drops"]]
        best = max(clean, key=lambda r: r["packets_per_s"]) if clean else None
        if args.rss_minutes > 0:
            connections = args.rss_connections or (best["connections"] if best else 1)
            seconds = args.rss_minutes * 60
            rss_run = _run_tracer(lab, workdir, config, seconds, connections, seconds - 5,
                                  sample_rss=True, delay_ms=args.delay_ms)
            samples = rss_run["rss_kb"]
            first = [kb for t, kb in samples if 60 <= t < 120] or [samples[0][1]]
            last = [kb for t, kb in samples if t >= samples[-1][0] - 60]
            rss_run["rss_mb_minute_2"] = round(statistics.median(first) / 1024, 1)
            rss_run["rss_mb_last_minute"] = round(statistics.median(last) / 1024, 1)
            rss_run["rss_mb_max"] = round(max(kb for _, kb in samples) / 1024, 1)
            rss_run["rss_growth_ratio"] = round(statistics.median(last) / statistics.median(first), 3)
            rss_run["rss_mb_by_minute"] = [
                round(statistics.median(kb for t, kb in samples if m * 60 <= t < (m + 1) * 60) / 1024, 1)
                for m in range(int(samples[-1][0] // 60) + 1)
                if any(m * 60 <= t < (m + 1) * 60 for t, _ in samples)]
            rss_run["loadavg_1min_median"] = round(
                statistics.median(x for _, x in rss_run["loadavg_1min"]), 2)
            print(json.dumps({k: v for k, v in rss_run.items()
                              if k not in ("rss_kb", "loadavg_1min")}), flush=True)
    finally:
        lab.teardown()
    out = {
        "benchmark": "live",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(),
                    "note": "shared with other engineers' jobs: see loadavg_1min per run"},
        "load": "wrk keep-alive HTTP through HAProxy on loopback in a namespace; tracer live "
                "-i lo -f tcp (both legs), snaplen 256"
                + (f"; wrk paced: {args.delay_ms} ms before each request" if args.delay_ms else ""),
        "levels": results,
        "max_zero_drop_packets_per_s": best["packets_per_s"] if best else None,
        "rss_run": rss_run,
    }
    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = out["when"].replace(":", "").replace("-", "")
        path = RESULTS_DIR / f"{args.results_name}-{stamp}.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        (RESULTS_DIR / f"{args.results_name}-latest.json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"written {path}")
    print(json.dumps({k: v for k, v in out.items() if k not in ("levels", "rss_run")}))


if __name__ == "__main__":
    main()

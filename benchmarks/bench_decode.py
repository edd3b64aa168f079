# Ingestion + decode benchmark: tracer against tshark -T fields and pyshark, side by side.
#
# Rules:
# - Every contender runs as its own process on the same file, read from the page cache
#   (warmed with `cat FILE > /dev/null` first), so wall time and peak RSS are measured the same
#   way for all: os.wait4 on the child gives its rusage (ru_maxrss, CPU time).
# - tshark is given the fairest setup we know: only the protocols our fields live in are enabled
#   (a private WIRESHARK_CONFIG_DIR with a disabled_protos file), analysis and reassembly prefs
#   off, name resolution off, output to /dev/null. pyshark gets the same config and prefs.
# - Captures are generated once by benchmarks.gen_capture (deterministic) and cached under
#   benchmarks/data/ (git-ignored); results go to benchmarks/results/ as JSON.
#
# Theory of operation: ensure the capture exists, warm it, run tracer (benchmarks.decode_only,
# best of --repeat), tshark once, and pyshark once on an editcap slice of the first N packets;
# compute packets/s from each process's wall time and the ratios; print a table; write JSON.
# With --memory-scaling, do the same peak-memory measurement on a 1M- and a 5M-packet capture.

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "benchmarks" / "data"
RESULTS_DIR = REPO / "benchmarks" / "results"

TSHARK_FIELDS = (
    "frame.number",
    "frame.time_epoch",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.flags",
    "tcp.window_size_value",
    "tcp.len",
    "ip.ttl",
    "ip.id",
    "tcp.options.mss_val",
    "tcp.options.wscale.shift",
    "tcp.options.timestamp.tsval",
    "tcp.options.timestamp.tsecr",
)
# Everything tshark would do beyond dissecting these fields, switched off.
TSHARK_PREFS = {
    "tcp.analyze_sequence_numbers": "FALSE",  # no per-stream seq/ack analysis
    "tcp.relative_sequence_numbers": "FALSE",
    "tcp.track_bytes_in_flight": "FALSE",
    "tcp.calculate_timestamps": "FALSE",
    "tcp.desegment_tcp_streams": "FALSE",  # no reassembly for upper layers
    "tcp.check_checksum": "FALSE",
    "ip.defragment": "FALSE",
    "ipv6.defragment": "FALSE",
    "ip.check_checksum": "FALSE",
    "ip.use_geoip": "FALSE",
    "ipv6.use_geoip": "FALSE",
}
# The only dissectors left enabled ("data" swallows TCP payloads without heuristics).
TSHARK_ENABLED_PROTOCOLS = (
    "frame",
    "eth",
    "ethertype",
    "vlan",
    "ieee8021ad",
    "ip",
    "ipv6",
    "tcp",
    "data",
)
# Fields pyshark reads from each packet (EK names), the same facts as TSHARK_FIELDS.
PYSHARK_FIELDS = {
    "frame_info": ("number", "time_epoch"),
    "ip": ("src", "dst", "ttl", "id"),
    "ipv6": ("src", "dst", "hlim"),
    "tcp": (
        "srcport",
        "dstport",
        "seq_raw",
        "ack_raw",
        "flags",
        "window_size_value",
        "len",
        "options.mss_val",
        "options.wscale.shift",
        "options.timestamp.tsval",
        "options.timestamp.tsecr",
    ),
}

TARGET_TRACER_PPS = 1_500_000
TARGET_RATIO_VS_TSHARK = 30.0
MEMORY_FLAT_TOLERANCE = 1.15  # 5M-packet peak within 15% of the 1M-packet peak
# Decode + flows (the flows issue): whole process, against tshark -T fields in the same run.
TARGET_FLOWS_PPS = 1_200_000
TARGET_FLOWS_RATIO_VS_TSHARK = 25.0
TARGET_FLOWS_ANON_MB = 400


@dataclass
class Measured:
    """One child process, as the kernel accounted for it."""

    command: list[str]
    wall_s: float
    cpu_s: float  # user + system
    max_rss_kb: int
    exit_code: int
    stdout: str = field(repr=False, default="")
    stderr_tail: str = ""


def run_measured(
    command: list[str], *, env: dict[str, str] | None = None, discard_stdout: bool = False
) -> Measured:
    """Run `command` to completion; wall time around it, rusage from wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL if discard_stdout else out,
            stderr=err,
            env=env,
            cwd=REPO,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        return Measured(
            command=command,
            wall_s=round(wall, 4),
            cpu_s=round(usage.ru_utime + usage.ru_stime, 4),
            max_rss_kb=usage.ru_maxrss,
            exit_code=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr_tail=stderr[-2000:],
        )


def _check(measured: Measured, what: str) -> Measured:
    if measured.exit_code != 0:
        raise SystemExit(f"{what} failed (exit {measured.exit_code}): {measured.stderr_tail}")
    return measured


# ---------------------------------------------------------------- captures


def ensure_capture(packets: int, seed: int, flows: int) -> tuple[Path, dict]:
    """The cached generated capture for these arguments, generating it if missing."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    from benchmarks.gen_capture import GENERATOR_VERSION

    path = DATA_DIR / f"gen{GENERATOR_VERSION}-{packets}p-{flows}f-seed{seed}.pcap"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        return path, json.loads(info_path.read_text())
    partial = path.with_suffix(".partial")
    print(f"generating {path.name} ...", file=sys.stderr, flush=True)
    measured = _check(
        run_measured(
            [
                sys.executable,
                "-m",
                "benchmarks.gen_capture",
                str(partial),
                "--packets",
                str(packets),
                "--flows",
                str(flows),
                "--seed",
                str(seed),
                "--quiet",
            ]
        ),
        "gen_capture",
    )
    info = json.loads(measured.stdout)
    info["file"] = str(path.relative_to(REPO))
    info["generation"] = {"wall_s": measured.wall_s, "max_rss_kb": measured.max_rss_kb}
    partial.rename(path)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return path, info


def capture_slice(path: Path, packets: int) -> Path:
    """The first `packets` records of `path` (editcap), cached next to the data."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    out = DATA_DIR / f"{path.stem}-first{packets}.pcap"
    if not out.exists():
        partial = out.with_suffix(".partial")
        subprocess.run(["editcap", "-r", str(path), str(partial), f"1-{packets}"], check=True)
        partial.rename(out)
    return out


def warm_page_cache(path: Path) -> None:
    with open(os.devnull, "wb") as sink:
        subprocess.run(["cat", str(path)], stdout=sink, check=True)


# ---------------------------------------------------------------- contenders


PYCACHE_DIR = DATA_DIR / "pycache"


def installed_python_env() -> dict[str, str]:
    """The environment tracer's processes are timed in: as an installed tool runs, with its
    modules' bytecode compiled (pip compiles an installed package; a checkout caches it on the
    first run). A development shell's PYTHONDONTWRITEBYTECODE would otherwise have every timed
    run compile tracer's sources again (~0.1 s of each). The bytecode goes to a cache of the
    benchmark's own (PYTHONPYCACHEPREFIX), not into the work tree."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "tracer", "benchmarks"],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def run_tracer(path: Path, repeat: int, *, flows: bool = False, jobs: int = 1) -> dict:
    """benchmarks.decode_only in its own process, best of `repeat`; with `flows`, source +
    decode + the flow stage end to end (on `jobs` worker processes when > 1)."""
    runs = []
    command = [sys.executable, "-m", "benchmarks.decode_only", str(path)]
    if flows:
        command += ["--flows", "--jobs", str(jobs)]
    env = installed_python_env()
    for _ in range(repeat):
        measured = _check(run_measured(command, env=env), "benchmarks.decode_only")
        runs.append((measured, json.loads(measured.stdout)))
    best, inner = min(runs, key=lambda run: run[0].wall_s)
    return {
        "command": "python " + " ".join(best.command[1:]),
        "packets": inner["packets"],
        "tcp_packets": inner["tcp_packets"],
        "wall_s": best.wall_s,
        "cpu_s": best.cpu_s,
        "packets_per_s": round(inner["packets"] / best.wall_s),
        "loop_s": inner["seconds"],
        "loop_packets_per_s": inner["packets_per_s"],
        "max_rss_kb": best.max_rss_kb,
        "peak_rss_anon_kb_sampled": inner.get("peak_rss_anon_kb_sampled"),
        "runs_wall_s": [run[0].wall_s for run in runs],
        "runs_loop_packets_per_s": [run[1]["packets_per_s"] for run in runs],
    }


def tshark_config_dir(where: Path) -> Path:
    """A WIRESHARK_CONFIG_DIR whose disabled_protos leaves only TSHARK_ENABLED_PROTOCOLS."""
    listing = subprocess.run(
        ["tshark", "-G", "protocols"], capture_output=True, text=True, check=True
    ).stdout
    names = [line.split("\t")[2] for line in listing.splitlines() if line.count("\t") >= 2]
    disabled = [name for name in names if name not in TSHARK_ENABLED_PROTOCOLS]
    where.mkdir(parents=True, exist_ok=True)
    (where / "disabled_protos").write_text("\n".join(disabled) + "\n")
    return where


def tshark_command(path: Path) -> list[str]:
    command = ["tshark", "-n", "-r", str(path), "-T", "fields"]
    for name, value in TSHARK_PREFS.items():
        command += ["-o", f"{name}:{value}"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    return command


def run_tshark(path: Path, packets: int, config_dir: Path) -> dict:
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir)}
    measured = _check(
        run_measured(tshark_command(path), env=env, discard_stdout=True), "tshark -T fields"
    )
    return {
        "command": " ".join(tshark_command(Path("FILE"))) + " > /dev/null",
        "packets": packets,
        "wall_s": measured.wall_s,
        "cpu_s": measured.cpu_s,
        "packets_per_s": round(packets / measured.wall_s),
        "max_rss_kb": measured.max_rss_kb,
    }


def run_pyshark(path: Path, packets: int, config_dir: Path) -> dict:
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir)}
    command = [sys.executable, "-m", "benchmarks.bench_decode", "--pyshark-worker", str(path)]
    measured = _check(run_measured(command, env=env), "pyshark worker")
    inner = json.loads(measured.stdout)
    if inner["packets"] != packets:
        raise SystemExit(f"pyshark read {inner['packets']} packets, expected {packets}")
    return {
        "command": "pyshark.FileCapture(SLICE, use_ek=True, keep_packets=False, "
        "eventloop=<new loop>, override_prefs=<tshark prefs>), reading the fields",
        "packets": packets,
        "wall_s": measured.wall_s,
        "cpu_s": measured.cpu_s,  # python and its tshark child (reaped by it)
        "packets_per_s": round(packets / measured.wall_s),
        "max_rss_kb": measured.max_rss_kb,
        "tshark_child_max_rss_kb": inner["tshark_child_max_rss_kb"],
        "loop_s": inner["seconds"],
    }


def pyshark_worker(path: str) -> int:
    """Runs in its own process: iterate the capture through pyshark, touching every field."""
    import asyncio
    import resource

    try:
        import pyshark
    except ImportError:
        print("pyshark is not installed: pip install pyshark==0.6", file=sys.stderr)
        return 2

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    started = time.perf_counter()
    capture = pyshark.FileCapture(
        path, use_ek=True, keep_packets=False, eventloop=loop, override_prefs=TSHARK_PREFS
    )
    packets = values = 0
    try:
        for packet in capture:
            for layer_name, names in PYSHARK_FIELDS.items():
                layer = getattr(packet, layer_name, None)
                if layer is None:
                    continue
                for name in names:
                    value = layer.get_field(name)
                    if value is not None:
                        values += 1
            packets += 1
        seconds = time.perf_counter() - started
    finally:
        close_problem = None
        try:
            capture.close()
        except Exception as exc:  # pyshark 0.6 sometimes reports tshark's exit at close as a crash
            close_problem = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        loop.close()
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "packets": packets,
                "field_values": values,
                "seconds": round(seconds, 4),
                "tshark_child_max_rss_kb": child.ru_maxrss,
                "close_problem": close_problem,
            }
        )
    )
    return 0


# ---------------------------------------------------------------- reporting


def machine_facts() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    tshark = subprocess.run(["tshark", "-v"], capture_output=True, text=True).stdout
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    try:
        from importlib.metadata import version

        pyshark_version = version("pyshark")
    except Exception:
        pyshark_version = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy_version,
        "pyshark": pyshark_version,
        "tshark": tshark.splitlines()[0] if tshark else None,
        "git_commit": commit or None,
    }


def _mb(kb: int | None) -> str:
    return f"{kb / 1024:,.0f}" if kb else "-"


def print_table(result: dict) -> None:
    rows = [("tracer (source+decode)", result["tracer"])]
    if result.get("tracer_flows"):
        rows.append(("tracer (+flows)", result["tracer_flows"]))
    if result.get("tracer_flows_jobs"):
        jobs = result["tracer_flows_jobs"]
        rows.append((f"tracer (+flows, {jobs['jobs']} jobs)", jobs))
    if result.get("tshark"):
        rows.append(("tshark -T fields", result["tshark"]))
    if result.get("pyshark"):
        rows.append(("pyshark (EK), slice", result["pyshark"]))
    print()
    print(
        f"{'contender':<24}{'packets':>12}{'wall s':>9}{'cpu s':>8}{'packets/s':>13}"
        f"{'peak RSS MB':>13}"
    )
    for name, row in rows:
        print(
            f"{name:<24}{row['packets']:>12,}{row['wall_s']:>9.2f}{row['cpu_s']:>8.2f}"
            f"{row['packets_per_s']:>13,}{_mb(row['max_rss_kb']):>13}"
        )
    tracer = result["tracer"]
    print(
        f"\ntracer decode loop alone: {tracer['loop_packets_per_s']:,} packets/s "
        f"(target {TARGET_TRACER_PPS:,}); anonymous memory peak "
        f"{_mb(tracer['peak_rss_anon_kb_sampled'])} MB"
    )
    for key, label in (("vs_tshark", "tshark"), ("vs_pyshark", "pyshark"),
                       ("flows_vs_tshark", "tshark, decode+flows"),
                       ("flows_jobs_vs_tshark", "tshark, decode+flows on processes")):
        ratio = result["ratios"].get(key)
        if ratio:
            print(
                f"tracer / {label}: {ratio['wall']:.1f}x by process wall time, "
                f"{ratio['loop']:.1f}x by tracer's loop"
            )
    flows = result.get("tracer_flows")
    if flows:
        print(
            f"tracer decode+flows loop: {flows['loop_packets_per_s']:,} packets/s, process "
            f"{flows['packets_per_s']:,} (target {TARGET_FLOWS_PPS:,}); anonymous memory peak "
            f"{_mb(flows['peak_rss_anon_kb_sampled'])} MB (target < {TARGET_FLOWS_ANON_MB} MB)"
        )
    scaling = result.get("memory_scaling")
    if scaling:
        print("\nmemory scaling (peak RSS MB):")
        for row in scaling["files"]:
            tshark_mb = _mb(row.get("tshark_max_rss_kb"))
            flows = (f"  +flows {_mb(row['flows_max_rss_kb'])} (anon {_mb(row['flows_anon_kb'])})"
                     if "flows_max_rss_kb" in row else "")
            print(
                f"  {row['packets']:>10,} packets  {row['bytes'] / 1e6:>7,.0f} MB file  tracer "
                f"{_mb(row['tracer_max_rss_kb'])} (anon {_mb(row['tracer_anon_kb'])}){flows}  "
                f"tshark {tshark_mb}"
            )
        print(f"  tracer flat: {scaling['tracer_flat']}"
              + (f", with flows: {scaling['flows_flat']}" if "flows_flat" in scaling else ""))


def targets(result: dict) -> dict:
    out: dict[str, dict] = {}
    tracer = result["tracer"]
    out["tracer_packets_per_s"] = {
        "target": TARGET_TRACER_PPS,
        "measured_loop": tracer["loop_packets_per_s"],
        "met": tracer["loop_packets_per_s"] >= TARGET_TRACER_PPS,
    }
    if result["ratios"].get("vs_tshark"):
        ratio = result["ratios"]["vs_tshark"]
        out["ratio_vs_tshark"] = {
            "target": TARGET_RATIO_VS_TSHARK,
            "measured_wall": ratio["wall"],
            "met": ratio["wall"] >= TARGET_RATIO_VS_TSHARK,
        }
    if result.get("memory_scaling"):
        out["memory_flat"] = {
            "tolerance": MEMORY_FLAT_TOLERANCE,
            "met": result["memory_scaling"]["tracer_flat"],
        }
    flows = result.get("tracer_flows")
    if flows:
        best = max((run for run in (flows, result.get("tracer_flows_jobs")) if run),
                   key=lambda run: run["packets_per_s"])
        out["flows_packets_per_s"] = {
            "target": TARGET_FLOWS_PPS,
            "measured_wall": best["packets_per_s"],
            "measured_loop": best["loop_packets_per_s"],
            "flow_processes": best.get("jobs", 1),
            "met": best["packets_per_s"] >= TARGET_FLOWS_PPS,
        }
        anon_mb = (flows["peak_rss_anon_kb_sampled"] or 0) / 1024
        out["flows_anon_memory_mb"] = {
            "target_below": TARGET_FLOWS_ANON_MB,
            "measured": round(anon_mb, 1),
            "met": anon_mb < TARGET_FLOWS_ANON_MB,
        }
        key = "flows_jobs_vs_tshark" if best is not flows else "flows_vs_tshark"
        if result["ratios"].get(key):
            ratio = result["ratios"][key]
            out["flows_ratio_vs_tshark"] = {
                "target": TARGET_FLOWS_RATIO_VS_TSHARK,
                "measured_wall": ratio["wall"],
                "met": ratio["wall"] >= TARGET_FLOWS_RATIO_VS_TSHARK,
            }
        if result.get("memory_scaling") and "flows_flat" in result["memory_scaling"]:
            out["flows_memory_flat"] = {
                "tolerance": MEMORY_FLAT_TOLERANCE,
                "met": result["memory_scaling"]["flows_flat"],
            }
    return out


def memory_scaling(
    seed: int, flows: int, config_dir: Path, with_tshark: bool, tshark_done: dict[Path, dict],
    with_flows: bool = True,
) -> dict:
    """Peak memory on 1M and 5M packets. tracer runs on both back to back (same code);
    tshark results already measured on one of the files (`tshark_done`) are reused."""
    paths = [ensure_capture(packets, seed, flows)[0] for packets in (1_000_000, 5_000_000)]
    rows = []
    for packets, path in zip((1_000_000, 5_000_000), paths, strict=True):
        warm_page_cache(path)
        tracer = run_tracer(path, 1)
        row = {
            "packets": packets,
            "bytes": path.stat().st_size,
            "file": str(path.relative_to(REPO)),
            "tracer_max_rss_kb": tracer["max_rss_kb"],
            "tracer_anon_kb": tracer["peak_rss_anon_kb_sampled"],
            "tracer_packets_per_s": tracer["packets_per_s"],
        }
        if with_flows:
            tracked = run_tracer(path, 1, flows=True)
            row["flows_max_rss_kb"] = tracked["max_rss_kb"]
            row["flows_anon_kb"] = tracked["peak_rss_anon_kb_sampled"]
            row["flows_packets_per_s"] = tracked["packets_per_s"]
        if with_tshark:
            tshark = tshark_done.get(path)
            if tshark is None:
                print(f"tshark on {packets:,} packets ...", file=sys.stderr, flush=True)
                tshark = run_tshark(path, packets, config_dir)
            row["tshark_max_rss_kb"] = tshark["max_rss_kb"]
            row["tshark_packets_per_s"] = tshark["packets_per_s"]
        rows.append(row)
    small, large = rows
    flat = (
        large["tracer_max_rss_kb"] <= small["tracer_max_rss_kb"] * MEMORY_FLAT_TOLERANCE
        and (large["tracer_anon_kb"] or 0) <= (small["tracer_anon_kb"] or 0) * MEMORY_FLAT_TOLERANCE
    )
    out = {"files": rows, "tracer_flat": flat}
    if with_flows:
        out["flows_flat"] = (
            large["flows_max_rss_kb"] <= small["flows_max_rss_kb"] * MEMORY_FLAT_TOLERANCE
            and (large["flows_anon_kb"] or 0)
            <= (small["flows_anon_kb"] or 0) * MEMORY_FLAT_TOLERANCE
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_decode",
        description="Benchmark tracer's source+decode against tshark -T fields and pyshark.",
    )
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--file", type=Path, help="benchmark this capture instead of generating")
    parser.add_argument(
        "--pyshark-slice", type=int, default=20_000, help="packets for pyshark (0 skips it)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="tracer runs (best is kept)")
    parser.add_argument("--no-tshark", action="store_true")
    parser.add_argument("--no-flows", action="store_true",
                        help="skip the source+decode+flows runs")
    parser.add_argument("--flows-jobs", type=int, default=2,
                        help="also time the flow stage on this many processes (1: skip)")
    parser.add_argument(
        "--memory-scaling",
        action="store_true",
        help="also record peak memory on 1M- and 5M-packet captures",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write results JSON")
    parser.add_argument("--pyshark-worker", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pyshark_worker:
        return pyshark_worker(args.pyshark_worker)
    if not args.no_tshark and shutil.which("tshark") is None:
        parser.error("tshark is not installed (or use --no-tshark)")

    started = datetime.now(UTC)
    if args.file:
        path, info = args.file.resolve(), {"file": str(args.file)}
    else:
        path, info = ensure_capture(args.packets, args.seed, args.flows)
    warm_page_cache(path)

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        config_dir = tshark_config_dir(Path(tmp) / "wireshark")
        print("tracer ...", file=sys.stderr, flush=True)
        tracer = run_tracer(path, args.repeat)
        packets = tracer["packets"]
        tracer_flows = None
        tracer_flows_jobs = None
        if not args.no_flows:
            print("tracer + flows ...", file=sys.stderr, flush=True)
            tracer_flows = run_tracer(path, args.repeat, flows=True)
            if args.flows_jobs > 1:
                print(f"tracer + flows on {args.flows_jobs} processes ...", file=sys.stderr,
                      flush=True)
                tracer_flows_jobs = run_tracer(path, args.repeat, flows=True,
                                               jobs=args.flows_jobs)
                tracer_flows_jobs["jobs"] = args.flows_jobs
        result: dict = {
            "benchmark": "decode",
            "started_utc": started.isoformat(timespec="seconds"),
            "machine": machine_facts(),
            "capture": {
                **info,
                "bytes": path.stat().st_size,
                "packets": packets,
                "page_cache": "warmed with cat FILE > /dev/null",
            },
            "tracer": tracer,
            **({"tracer_flows": tracer_flows} if tracer_flows else {}),
            **({"tracer_flows_jobs": tracer_flows_jobs} if tracer_flows_jobs else {}),
            "tshark_setup": {
                "fields": list(TSHARK_FIELDS),
                "prefs": TSHARK_PREFS,
                "enabled_protocols": list(TSHARK_ENABLED_PROTOCOLS),
                "name_resolution": "off (-n)",
            },
            "ratios": {},
        }
        if not args.no_tshark:
            print("tshark ...", file=sys.stderr, flush=True)
            tshark = run_tshark(path, packets, config_dir)
            result["tshark"] = tshark
            result["ratios"]["vs_tshark"] = {
                "wall": round(tracer["packets_per_s"] / tshark["packets_per_s"], 2),
                "loop": round(tracer["loop_packets_per_s"] / tshark["packets_per_s"], 2),
            }
            if tracer_flows:
                result["ratios"]["flows_vs_tshark"] = {
                    "wall": round(tracer_flows["packets_per_s"] / tshark["packets_per_s"], 2),
                    "loop": round(tracer_flows["loop_packets_per_s"] / tshark["packets_per_s"], 2),
                }
            if tracer_flows_jobs:
                result["ratios"]["flows_jobs_vs_tshark"] = {
                    "wall": round(tracer_flows_jobs["packets_per_s"] / tshark["packets_per_s"], 2),
                    "loop": round(tracer_flows_jobs["loop_packets_per_s"]
                                  / tshark["packets_per_s"], 2),
                }
        if args.pyshark_slice:
            n = min(args.pyshark_slice, packets)
            sliced = capture_slice(path, n)
            warm_page_cache(sliced)
            print(f"pyshark on {n:,} packets ...", file=sys.stderr, flush=True)
            pyshark = run_pyshark(sliced, n, config_dir)
            result["pyshark"] = pyshark
            result["ratios"]["vs_pyshark"] = {
                "wall": round(tracer["packets_per_s"] / pyshark["packets_per_s"], 2),
                "loop": round(tracer["loop_packets_per_s"] / pyshark["packets_per_s"], 2),
            }
        if args.memory_scaling:
            tshark_done = {path: result["tshark"]} if "tshark" in result else {}
            result["memory_scaling"] = memory_scaling(
                args.seed, args.flows, config_dir, not args.no_tshark, tshark_done,
                with_flows=not args.no_flows,
            )
    result["targets"] = targets(result)
    result["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    print_table(result)
    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
        text = json.dumps(result, indent=2) + "\n"
        dated = RESULTS_DIR / f"decode-{stamp}.json"
        dated.write_text(text)
        (RESULTS_DIR / "decode-latest.json").write_text(text)
        print(f"\nresults: {dated.relative_to(REPO)} (and decode-latest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`tracer live` against real components: dumpcap, HAProxy, backends and clients in namespaces.

Rules: no mocks. The lab's pieces (captures/lab/lab.py: namespaces, veths, HAProxy, the
backends and the client driver) make the traffic; `tracer live` runs inside the HAProxy
namespace with `ip netns exec`, exactly as an operator would run it on the HAProxy host.
Everything is bounded (client deadline, tracer --duration as a backstop, every wait has a
deadline) and removed (processes by PID, then the namespaces).

Theory: the live run settles each RST once its flows have ended, with the attribution of the
flows known at that moment; the offline analysis of the file the live run wrote sees the
whole capture at once. Equal counts by cause, reason, leg and server mean the live settling
loses nothing of what attribution needs. The non-root tests feed committed captures through
the same live aggregates and the same pipe reader.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tracer.analysis import AttributionOptions, CaptureAnalysis
from tracer.attribution.config import load_config, parse_config
from tracer.attribution.join import TurnIndex
from tracer.attribution.timeline import TURN_DTYPE, needed_turns
from tracer.decode import decode_frames
from tracer.live.capture import parse_drop_lines
from tracer.live.rolling import PRUNE_MARGIN_NS, LiveAnalysis
from tracer.live.source import END, CaptureWriter, Handoff, StreamReader
from tracer.packet import PACKET_DTYPE, TH_ACK, TH_PSH, TH_RST, DecodeCounts
from tracer.pipeline import analyze_native, run
from tracer.source import open_capture

ROOT = Path(__file__).resolve().parent.parent
LAB_DIR = ROOT / "captures" / "lab"
DEMO = ROOT / "captures" / "demo-haproxy.pcapng"
DEMO_CONFIG = LAB_DIR / "haproxy-mixed.cfg"
TRACER = [sys.executable, "-m", "tracer"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _load_lab():
    spec = importlib.util.spec_from_file_location("tracer_haproxy_lab", LAB_DIR / "lab.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _offline_keys(summary: dict) -> Counter:
    keys: Counter = Counter()
    for d in summary["rst_details"]:
        keys[(d["leg"], d["sender"], d["cause"], d["reason"], str(d["routine"]).lower(),
              d["server"] or "")] += 1
    return keys


def _live_keys(rsts: Counter) -> Counter:
    keys: Counter = Counter()
    for (leg, sender, cause, reason, routine, _fe, backend, server), n in rsts.items():
        name = f"{backend}/{server}" if backend and server else server
        keys[(leg, sender, cause, reason, routine, name)] += n
    return keys


# ------------------------------------------------------------------ without root


def test_live_aggregates_equal_offline_on_the_demo_capture() -> None:
    """The demo capture (601 RSTs of every cause) fed second by second, with a tick after each
    second: what the windows settle adds up to the offline attribution, RST for RST."""
    config = load_config(str(DEMO_CONFIG))
    live = LiveAnalysis("demo", AttributionOptions(config=config))
    ticks = 0
    with open_capture(DEMO) as reader:
        for frames in reader.batches():
            packets, counts = decode_frames(frames)
            ts = packets["ts_ns"]
            edges = np.arange(ts.min() - ts.min() % 10**9, ts.max() + 10**9, 10**9)
            bounds = np.searchsorted(ts, edges)
            for n, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                live.add(packets[lo:hi], counts if n == 0 else type(counts)())
                live.tick()
                ticks += 1
    window, total = live.finish()
    _, offline = run(analyze_native(str(DEMO), attribution=AttributionOptions(config=config)))
    assert ticks > 30
    assert total.frames == offline["packets"]
    assert total.rst_packets == offline["tcp_flags"]["RST"]
    assert _live_keys(total.rsts) == _offline_keys(offline)
    assert sum(total.retransmissions.values()) == offline["retransmissions"]
    assert sum(total.lost_segments.values()) == offline["segment_analysis"]["lost_segment"]
    # RTT histograms hold every handshake and data sample of the capture
    samples = sum(int(c.sum()) for (kind, *_), c in total.rtt_buckets.items())
    rtt = offline["rtt_ms"]
    assert samples == sum(rtt[k]["samples"] for k in
                          ("handshake_responder", "handshake_initiator", "data"))
    assert live.newest and all(f["reason"] for f in live.newest)


def test_generations_bound_the_flow_table() -> None:
    """A tiny flow budget forces several generations; every RST is still counted once."""
    live = LiveAnalysis("demo", AttributionOptions(config=load_config(str(DEMO_CONFIG))),
                        max_flows=200)
    with open_capture(DEMO) as reader:
        for frames in reader.batches():
            packets, counts = decode_frames(frames)
            for lo in range(0, packets.shape[0], 2000):
                live.add(packets[lo:lo + 2000], counts if lo == 0 else type(counts)())
                live.tick()
                assert live.generation.flows.flows.shape[0] < 200 + 2000
    _, total = live.finish()
    assert live.generations > 1
    assert sum(total.rsts.values()) == total.rst_packets == 601


# A proxied keep-alive exchange: client -> HAProxy request, HAProxy -> server request, the
# server's response, HAProxy's response to the client, then both ACKs. (src, dst, payload) by
# endpoint: 0 client, 1 HAProxy's frontend address, 2 HAProxy's source address, 3 the server.
_EXCHANGE = ((0, 1, 100), (2, 3, 120), (3, 2, 200), (1, 0, 220), (0, 1, 0), (2, 3, 0))
_ADDR = (0xFFFF_0A00_0001, 0xFFFF_0A00_0101, 0xFFFF_0A00_0201, 0xFFFF_0A00_0301)


def _keepalive_seconds(pairs: int, seconds: int, per_second: int, rst_at_end: bool = True):
    """Second-long batches of `pairs` client streams proxied on long-lived keep-alive
    connections (no handshake: they were open before the capture), `per_second` requests each.
    With `rst_at_end` the first client resets its connection after the last second."""
    t0 = 1_700_000_000 * 10**9
    seq = {}  # (pair, src, dst) -> next sequence number
    frame = 1
    step = 10**9 // per_second
    for second in range(seconds):
        k = np.arange(per_second)
        rows = []
        for pair in range(pairs):
            ports = (41000 + pair, 8000, 42000 + pair, 8080)
            for n, (src, dst, size) in enumerate(_EXCHANGE):
                p = np.zeros(per_second, PACKET_DTYPE)
                p["ts_ns"] = t0 + second * 10**9 + k * step + n * 20_000 + pair * step // pairs
                p["src_lo"], p["dst_lo"] = _ADDR[src], _ADDR[dst]
                p["sport"], p["dport"] = ports[src], ports[dst]
                own = seq.setdefault((pair, src, dst), 1000)
                other = seq.setdefault((pair, dst, src), 5000)
                p["seq"] = own + k * size
                # the other way's payload of this exchange is acknowledged once it went by
                back = next(i for i, e in enumerate(_EXCHANGE) if e[:2] == (dst, src) and e[2])
                p["ack"] = other + (k + (back < n)) * _EXCHANGE[back][2]
                p["payload_len"] = size
                p["flags"] = TH_ACK | (TH_PSH if size else 0)
                rows.append(p)
            for src, dst, size in _EXCHANGE:
                if size:
                    seq[(pair, src, dst)] += per_second * size
        batch = np.concatenate(rows)
        batch = batch[np.argsort(batch["ts_ns"], kind="stable")]
        if rst_at_end and second == seconds - 1:
            rst = batch[-1:].copy()
            rst["ts_ns"] += 1_000_000
            rst["src_lo"], rst["dst_lo"] = _ADDR[0], _ADDR[1]
            rst["sport"], rst["dport"] = 41000, 8000
            rst["seq"], rst["ack"] = seq[(0, 0, 1)], 0
            rst["payload_len"], rst["flags"] = 0, TH_RST
            batch = np.concatenate((batch, rst))
        batch["frame"] = frame + np.arange(batch.shape[0])
        frame += batch.shape[0]
        batch["ip_version"], batch["ttl"], batch["window"] = 4, 64, 512
        batch["tcp_hdr_len"], batch["opt_present"] = 20, 0
        counts = DecodeCounts(frames=batch.shape[0], tcp_packets=batch.shape[0])
        counts.flag_counts["RST"] = int(((batch["flags"] & TH_RST) != 0).sum())
        yield batch, counts


_KEEPALIVE_CONFIG = """\
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 10.0.1.1:8000
    default_backend be
backend be
    server s1 10.0.3.1:8080
"""


def test_live_state_stays_bounded_on_long_keepalive_flows() -> None:
    """Long-lived keep-alive connections carry a request/response turn per payload packet; the
    join needs only a few of them. Over 120 one-second intervals of 8 proxied streams (1.2M
    turns) what a generation retains stays flat, and the attribution of the RST at the end is
    still the one offline analysis of the same packets gives."""
    options = AttributionOptions(config=parse_config(_KEEPALIVE_CONFIG))
    live = LiveAnalysis("keepalive", options)
    offline = CaptureAnalysis(path="keepalive", options=options)
    retained = []
    turns_seen = 0
    for packets, counts in _keepalive_seconds(pairs=8, seconds=120, per_second=300):
        offline.add(packets, counts)
        live.add(packets, counts)
        turns_seen += int((packets["payload_len"] > 0).sum())
        live.tick(int(packets["ts_ns"][-1]))
        retained.append(live.retained_rows())
    _, total = live.finish()
    assert turns_seen > 1_000_000 and live.generations == 1
    early = retained[20]
    assert max(r["rtt_samples"] for r in retained) <= live.generation.flows.max_rtt_samples
    for name in ("turns", "flows_finished", "flows_open", "rsts", "segment_events"):
        late = max(r[name] for r in retained[20:])
        assert late <= max(1.2 * early[name], early[name] + 10), (name, early, retained[-1])
    # the turns of the pruning margin and an interval or two, not the run's
    per_second = turns_seen / 120
    assert max(r["turns"] for r in retained) < per_second * (PRUNE_MARGIN_NS / 1e9 + 2)
    # per-flow-second data counts grow by one row per flow, direction and second: the
    # generation's row budget (max_rows) is what bounds them (next test)
    assert retained[-1]["data_rows"] - retained[20]["data_rows"] <= 16 * 2 * 100
    doc = offline.summary()
    assert doc["rsts"] == total.rst_packets == sum(total.rsts.values()) == 1
    assert _live_keys(total.rsts) == _offline_keys(doc)
    assert doc["rst_attribution"]["by_reason"] == {"client_abort": 1}
    # each server connection joined to its own client's stream, by the turns kept
    assert doc["join"]["backend_flows_joined"] == doc["join"]["frontend_flows_with_backend"] == 8
    assert live.final_summary()["join"] == doc["join"]


def test_the_row_budget_starts_a_new_generation() -> None:
    live = LiveAnalysis("keepalive", max_rows=3_000)
    biggest = 0
    for packets, counts in _keepalive_seconds(pairs=4, seconds=60, per_second=200):
        live.add(packets, counts)
        live.tick(int(packets["ts_ns"][-1]))
        biggest = max(biggest, sum(live.retained_rows().values()))
    _, total = live.finish()
    assert live.generations > 1
    # at most one interval past the budget: 4 streams' turns (2 per exchange and leg) plus
    # the rows kept for the flows
    assert biggest < 3_000 + 4 * 2 * 2 * 200 * 3
    assert sum(total.rsts.values()) == total.rst_packets == 1


def test_needed_turns_keep_every_answer_of_the_join() -> None:
    """The turns kept answer every question the join can ask (TurnIndex, the join's own
    lookup) exactly as all turns do: at the times asked about and at any time past the
    horizon."""
    rng = np.random.default_rng(7)
    n = 20_000
    turns = np.zeros(n, TURN_DTYPE)
    turns["flow_id"] = rng.integers(0, 40, n)
    turns["ts_ns"] = np.sort(rng.integers(0, 1_000_000, n))  # capture order
    turns["ts_ns"][::50] = turns["ts_ns"][1::50]  # some at the same time
    turns["direction"] = rng.integers(0, 2, n)
    asked = np.concatenate((rng.integers(0, 1_000_000, 60), [-1, -1]))
    horizon = 900_000
    keep = needed_turns(turns, asked, horizon)
    assert 0.05 < keep.mean() < 0.5
    full = TurnIndex(turns["flow_id"], turns["ts_ns"], turns["direction"])
    kept = turns[keep]
    part = TurnIndex(kept["flow_id"], kept["ts_ns"], kept["direction"])
    times = np.concatenate((asked[asked >= 0], rng.integers(horizon, 1_100_000, 200),
                            [horizon]))
    flows = np.repeat(np.arange(40), times.shape[0])
    at = np.tile(times, 40)
    for direction in (0, 1):
        for ask in ("latest_at_or_before", "first_at_or_after"):
            want = getattr(full, ask)(flows, direction, at)
            got = getattr(part, ask)(flows, direction, at)
            assert (want == got).all(), (ask, direction)


def _feed_pipe(data: bytes, chunk: int = 7001) -> int:
    """A pipe with `data` written into it in odd-sized pieces by a thread; the read end."""
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb") as out:
            for lo in range(0, len(data), chunk):
                out.write(data[lo:lo + chunk])
                out.flush()

    threading.Thread(target=writer, daemon=True).start()
    return read_fd


def _read_all(fd: int, writer: CaptureWriter | None, limit: int = 10_000) -> tuple[int, Handoff]:
    handoff = Handoff(limit, lambda: None)
    reader = StreamReader(fd, handoff, writer, batch_bytes=50_000, max_wait_s=0.01)
    reader.start()
    reader.join(60)
    os.close(fd)
    items = handoff.take_all()
    assert items[-1] is END
    return sum(counts.frames for _, counts in items[:-1]), handoff


def test_pipe_reader_and_ring_files(tmp_path: Path) -> None:
    """The pcapng stream through a pipe in odd pieces: every frame decoded once; the ring's
    files each open as a capture, and read with --join they are the stream again."""
    data = DEMO.read_bytes()
    writer = CaptureWriter(str(tmp_path / "ring.pcapng"), files=50, size_bytes=200_000)
    frames, handoff = _read_all(_feed_pipe(data), writer)
    writer.close()
    _, offline = run(analyze_native(str(DEMO)))
    assert frames == offline["packets"] and handoff.dropped_frames == 0
    assert len(writer.paths) > 3
    assert all(p.name.startswith("ring_") for p in writer.paths)
    joined = subprocess.run([*TRACER, "analyze", "--join", "--format", "json",
                             *map(str, writer.paths)], capture_output=True, text=True,
                            timeout=120, check=True)
    doc = json.loads(joined.stdout)["captures"][0]
    assert doc["packets"] == offline["packets"] and doc["rsts"] == offline["rsts"]
    # A ring of 2 keeps only the newest two files
    small = CaptureWriter(str(tmp_path / "small.pcapng"), files=2, size_bytes=100_000)
    _read_all(_feed_pipe(data), small)
    small.close()
    assert sorted(p.name for p in tmp_path.glob("small_*")) == sorted(p.name for p in small.paths)
    assert len(small.paths) == 2


def test_a_full_handoff_drops_and_counts() -> None:
    frames, handoff = _read_all(_feed_pipe(DEMO.read_bytes()), None, limit=1)
    assert handoff.dropped_frames > 0 and handoff.dropped_batches > 0
    _, offline = run(analyze_native(str(DEMO)))
    assert frames + handoff.dropped_frames == offline["packets"]


def test_dumpcap_drop_lines() -> None:
    text = ("Packets captured: 10\nPackets received/dropped on interface 'fe0': 12/2 "
            "(pcap:1/dumpcap:1/flushed:0/ps_ifdrop:0) (16.7%)\n")
    assert parse_drop_lines(text) == {"fe0": {"received": 12, "dropped": 2, "pcap": 1,
                                              "dumpcap": 1, "flushed": 0, "ps_ifdrop": 0}}


def test_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        (["live", "-i", "tracer-no-such-if0", "--duration", "3"], r"no such interface"),
        (["live", "-i", "lo", "-f", "tcp portx 80", "--duration", "3"], r"bad capture filter"),
        (["live"], r"no interface given"),
        (["live", "-i", "lo", "--ring", "3:10"], r"--ring needs --write"),
        (["live", "-i", "lo", "--write", str(tmp_path / "x.pcapng"), "--ring", "1:0"],
         r"FILES:SIZE_MB"),
    ]
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if os.geteuid() == 0 and shutil.which("setpriv") and not _dumpcap_has_capabilities():
        # an unprivileged user (nobody) and a dumpcap without capabilities
        cases.append((["live", "-i", "lo", "--duration", "3"], r"no permission to capture.*setcap"))
    for args, pattern in cases:
        argv = [*TRACER, *args]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if "no permission" in pattern:
            argv = unprivileged + argv
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                              cwd="/")
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tracer: error: "), done.stderr
        assert re.search(pattern, lines[0]), lines[0]


def _dumpcap_has_capabilities() -> bool:
    dumpcap = shutil.which("dumpcap")
    if not dumpcap or not shutil.which("getcap"):
        return False
    out = subprocess.run(["getcap", dumpcap], capture_output=True, text=True, check=False).stdout
    return "cap_net_raw" in out or os.stat(dumpcap).st_mode & 0o4000 != 0


def test_interfaces_lists_loopback() -> None:
    done = subprocess.run([*TRACER, "interfaces"], capture_output=True, text=True, timeout=60,
                          check=True)
    assert "lo" in [line.split("\t")[0] for line in done.stdout.splitlines()]


# ------------------------------------------------------------------ the lab, live

PLAN = {"http-ok": 4, "tcp-ok": 2, "client-rst-waiting": 3, "client-rst-request": 2,
        "server-rst-before": 3, "server-rst-mid": 2, "tcp-client-rst-waiting": 2,
        "refused-only": 2}
METRICS_PORT = 9464


def _scrape(lab, port: int) -> str:
    code = ("import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/metrics', timeout=5).read().decode())")
    return lab.sh("hap", f"{sys.executable} -c \"{code}\"")


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The Prometheus text format's sample lines: (name, labels, value)."""
    out = []
    for m in re.finditer(r"^(\w+)(?:\{(.*)\})? (\S+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def _metric_sum(text: str, name: str, **match: str) -> float:
    return sum(value for n, labels, value in _samples(text)
               if n == name and all(labels.get(k) == v for k, v in match.items()))


@pytest.mark.netns
@pytest.mark.slow
@needs_root
def test_live_lab_equals_offline_metrics_and_sigint(tmp_path: Path) -> None:
    assert shutil.which("haproxy"), "haproxy missing: run scripts/setup.sh"
    lab_mod = _load_lab()
    before = set(lab_mod.our_namespaces())
    config = LAB_DIR / "haproxy-client-abort.cfg"
    scenario = lab_mod.SCENARIOS["client-abort"]
    plan = lab_mod.make_plan(scenario, 7, PLAN)
    suffix = os.urandom(3).hex()
    lab = lab_mod.Lab(base=f"{lab_mod.NS_PREFIX}{suffix}", workdir=tmp_path / "lab",
                      net=lab_mod.NETS["bridged"])
    lab.workdir.mkdir()
    written = tmp_path / "live.pcapng"
    windows = tmp_path / "windows.jsonl"
    report = tmp_path / "report.json"
    try:
        lab.build()
        py = sys.executable
        for server, addr in lab.net.servers.items():
            log = lab.workdir / f"backend-{server}.log"
            proc = lab.spawn(server, [py, str(LAB_DIR / "backend.py"), "--http",
                                      f"{addr}:{lab_mod.SERVER_HTTP}", "--tcp",
                                      f"{addr}:{lab_mod.SERVER_TCP}", "--duration", "120"], log)
            lab.wait_for(proc, log, r"READY", f"backend {server}")
        haproxy_log = lab.workdir / "haproxy.log"
        lab.spawn("hap", ["haproxy", "-db", "-f", str(config)], haproxy_log)
        lab.wait_listening("hap", lab_mod.HTTP_PORT, "haproxy")
        lab.wait_listening("hap", lab_mod.TCP_PORT, "haproxy")
        tracer_log = lab.workdir / "tracer.log"
        windows.touch()  # lab.wait_for reads it before tracer opens it
        started = time.monotonic()
        tracer = lab.spawn("hap", [py, "-m", "tracer", "live", "-i", "fe0", "-i", "br1",
                                   "-f", "tcp", "--haproxy-config", str(config),
                                   "--interval", "1", "--format", "jsonl", "-o", str(windows),
                                   "--report", str(report), "--write", str(written),
                                   "--metrics-port", str(METRICS_PORT), "--duration", "55"],
                           tracer_log)
        lab.wait_for(tracer, windows, r'"type":"window"', "tracer live")
        plan_path = lab.workdir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        client_log = lab.workdir / "client.log"
        client = lab.spawn("cli", [py, str(LAB_DIR / "client.py"), str(plan_path),
                                   "--deadline", "25"], client_log)
        client.wait(timeout=40)
        assert client.returncode == 0, client_log.read_text()[-500:]
        # Scrape while running, until every RST seen is settled (flows end 10 s after their
        # last packet, plus the settle margin).
        deadline = time.monotonic() + 30
        scraped = ""
        while time.monotonic() < deadline:
            scraped = _scrape(lab, METRICS_PORT)
            seen = _metric_sum(scraped, "tracer_rst_packets_total")
            if seen and _metric_sum(scraped, "tracer_rsts_total") == seen:
                break
            time.sleep(1)
        assert tracer.poll() is None, "tracer live ended before SIGINT"
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        elapsed = time.monotonic() - started
        log_text = tracer_log.read_text()
        assert tracer.returncode == 0, log_text[-1000:]
        assert "Traceback" not in log_text
        assert elapsed < 55, "SIGINT did not stop the run before --duration"
    finally:
        lab.teardown()
    assert set(lab_mod.our_namespaces()) == before, "the test left namespaces behind"

    lines = [json.loads(line) for line in windows.read_text().splitlines()]
    assert [doc["type"] for doc in lines[-1:]] == ["final_window"]
    assert all(doc["type"] == "window" for doc in lines[:-1]) and len(lines) >= 10
    final = lines[-1]["since_start"]
    offline = json.loads(subprocess.run(
        [*TRACER, "analyze", str(written), "--haproxy-config", str(config), "--format", "json"],
        capture_output=True, text=True, timeout=120, check=True).stdout)["captures"][0]
    att = offline["rst_attribution"]
    assert att["rsts"] >= 15 and att["faults"] >= 10
    # the live windows' attribution, summed, equals the offline analysis of the written file
    assert final["rsts"]["attributed"] == att["rsts"] == final["rst_packets"]
    assert final["rsts"]["by_reason"] == att["by_reason"]
    assert final["rsts"]["by_leg"] == att["by_leg"]
    assert final["rsts"]["by_cause"] == {k: v for k, v in att["by_cause"].items()}
    assert final["rsts"]["by_server"] == att["by_server"]
    assert final["frames"] == offline["packets"]
    assert sum(v["retransmissions"] for v in final["loss"].values()) == offline["retransmissions"]
    # the final report is the offline document of the same packets
    live_doc = json.loads(report.read_text())["captures"][0]
    assert live_doc["packets"] == offline["packets"]
    assert live_doc["rst_attribution"] == att
    assert live_doc["live"]["dropped_frames"]["tracer"] == 0
    assert live_doc["live"]["written"] == [str(written)]
    assert set(live_doc["live"]["dumpcap_interfaces"]) >= {"fe0", "br1"}
    # the metrics endpoint, scraped during the run, showed the settled counts
    assert _metric_sum(scraped, "tracer_rsts_total") == att["rsts"]
    for reason, n in att["by_reason"].items():
        assert _metric_sum(scraped, "tracer_rsts_total", reason=reason) == n, reason
    for leg, n in att["by_leg"].items():
        assert _metric_sum(scraped, "tracer_rsts_total", leg=leg) == n, leg
    for name, kinds in att["by_server"].items():
        backend, _, server = name.rpartition("/")
        assert _metric_sum(scraped, "tracer_rsts_total", backend=backend, server=server) \
            == kinds["fault"] + kinds["routine"], name
    assert _metric_sum(scraped, "tracer_rsts_total", frontend="fe_http") > 0
    assert _metric_sum(scraped, "tracer_handshake_rtt_seconds_count") > 0
    assert _metric_sum(scraped, "tracer_data_rtt_seconds_count", leg="backend") > 0
    assert _metric_sum(scraped, "tracer_handshake_rtt_seconds_count", leg="frontend") > 0
    assert _metric_sum(scraped, "tracer_dropped_frames_total", by="tracer") == 0

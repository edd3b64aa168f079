"""Attribution pieces one by one: haproxy.cfg parsing, HAProxy log parsing, topology
inference, the middlebox rule, and the CLI options (real files, real captures, no mocks)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.analysis import AttributionOptions, CaptureAnalysis
from tracer.attribution import rst_rows
from tracer.attribution.config import ConfigError, parse_config, parse_duration_ns, parse_endpoint
from tracer.attribution.logs import LogError, format_regex, load_log, parse_log
from tracer.decode import decode_frames
from tracer.packet import TH_RST, parse_address
from tracer.source import open_capture

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "captures" / "lab"
OUT = LAB / "out"

CFG = """
global
    maxconn 100
defaults base
    mode http
    timeout client 30s
    timeout server 1m
    timeout connect 500   # milliseconds by default
    option nolinger
defaults
    mode tcp
    timeout client 2s
frontend www from base
    bind 192.0.2.1:80,192.0.2.1:8080-8081
    bind [2001:db8::1]:443 ssl crt /x.pem
    bind :9999
    no option nolinger
    tcp-request connection reject if { src 198.51.100.0/24 }
    tcp-request connection silent-drop rst-ttl 3 if { src 203.0.113.9 }
    log-format "%ci:%cp [%tr] %ft %b/%s %ST %tsc \\"quoted\\""
    use_backend api if { path_beg /api }
    default_backend app
frontend raw
    bind 192.0.2.1:5000
backend app from base
    option http-server-close
    server a1 10.0.0.1:8080 check port 8070 inter 300ms
    server a2 10.0.0.2 check
backend api
    server x 10.0.0.3:9000 source 10.0.0.254
"""


def test_config_sections_defaults_and_rules():
    config = parse_config(CFG)
    www, raw = config.frontends
    assert www.mode == "http" and raw.mode == "tcp"  # named defaults via `from`, else the last
    assert www.timeouts_ns["client"] == 30 * 10**9 and raw.timeouts_ns["client"] == 2 * 10**9
    assert www.timeouts_ns["server"] == 60 * 10**9 and www.timeouts_ns["connect"] == 500 * 10**6
    assert "nolinger" not in www.options  # `no option` clears the inherited one
    assert [b.text() for b in www.binds] == ["192.0.2.1:80", "192.0.2.1:8080-8081",
                                             "[2001:db8::1]:443", "*:9999"]
    actions = [(r.stage, r.action, r.rst_ttl) for r in www.rules]
    assert actions == [("connection", "reject", None), ("connection", "silent-drop", 3)]
    assert www.log_format.endswith('%tsc "quoted"')
    assert [b.name for b in config.routes(www)] == ["api", "app"]
    app = config.backend("app")
    assert "nolinger" in app.options and "http-server-close" in app.options
    a1, a2 = app.servers
    assert (a1.address, a1.port, a1.check, a1.check_port, a1.check_inter_ns) == \
        ("10.0.0.1", 8080, True, 8070, 300 * 10**6)
    assert (a2.address, a2.port, a2.check) == ("10.0.0.2", None, True)
    assert config.backend("api").servers[0].source == "10.0.0.254"
    assert config.global_maxconn == 100


def test_config_odd_lines_become_warnings_and_non_configs_fail():
    config = parse_config("frontend f\n    bind 1.2.3.4:80\n    timeout client soon\n")
    assert config.warnings and "soon" in config.warnings[0]
    with pytest.raises(ConfigError):
        parse_config("this is not\nan haproxy config\n")


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1:80", ("10.0.0.1", 80, 80)), ("*:443", (None, 443, 443)),
    ("ipv6@::1:8443", ("::1", 8443, 8443)), ("[fe80::1]:1-2", ("fe80::1", 1, 2)),
])
def test_endpoints(text, expected):
    e = parse_endpoint(text)
    assert (e.address, e.port_lo, e.port_hi) == expected
    assert parse_endpoint("/run/haproxy.sock") is None
    assert parse_duration_ns("2m") == 120 * 10**9


HTTPLOG = ('<134>Nov 22 02:05:14 lb haproxy[4242]: 10.1.2.3:40000 [22/Nov/2026:02:05:14.225] '
           'fe_http be_app/s1 0/0/1/2/3 200 1234 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"')
TCPLOG = ("10.1.2.4:40001 [22/Nov/2026:02:05:15.000] fe_tcp be_tcp/s2 1/0/251 0 CD "
          "2/1/0/0/+1 0/0")


def test_log_lines_default_formats_syslog_wrapped():
    entries = parse_log("\n".join([HTTPLOG, TCPLOG, "garbage line"]))
    assert entries.lines == 3 and entries.other == 1 and entries.unparsed == 0
    assert entries.termination == ["--", "CD"]
    assert entries.server == ["s1", "s2"]
    r = entries.rows
    assert (r["client_hi"][0], r["client_lo"][0]) == parse_address("10.1.2.3")
    assert r["client_port"].tolist() == [40000, 40001]
    assert r["retries"].tolist() == [0, 1]
    assert r["status"].tolist() == [200, -1]
    assert r["accept_local_ns"][1] - r["accept_local_ns"][0] == 775_000_000


def test_custom_log_format_from_the_config():
    config = parse_config((LAB / "haproxy-client-abort.cfg").read_text())
    entries = load_log(str(OUT / "client-abort.haproxy.log"), config)
    assert entries.unparsed == 0 and entries.rows.shape[0] == entries.lines
    assert (entries.rows["bsrc_port"] > 0).sum() >= 28  # %bi:%bp from the lab's suffix
    rx = format_regex("%ci:%cp %{+Q}r %hr %hs %ts")
    assert rx.search('1.2.3.4:5 "GET / HTTP/1.1" CD').group("ts") == "CD"
    assert rx.search('1.2.3.4:5 "GET / HTTP/1.1" {a} {b} sD').group("ts") == "sD"


def test_log_that_matches_nothing_is_an_error(tmp_path):
    bad = tmp_path / "x.log"
    bad.write_text("not a haproxy line\n")
    with pytest.raises(LogError):
        load_log(str(bad))


def _analysis(path: Path, options: AttributionOptions, edit=None) -> CaptureAnalysis:
    analysis = CaptureAnalysis(path=str(path), options=options)
    with open_capture(str(path)) as reader:
        for frames in reader.batches():
            packets, counts = decode_frames(frames)
            if edit is not None:
                edit(packets)
            analysis.add(packets, counts)
    analysis.summary()
    return analysis


def test_inference_finds_the_lab_haproxy_and_not_busy_loopback():
    lab = _analysis(OUT / "client-abort.pcapng", AttributionOptions())
    topo = lab.attribution.topology.describe()
    assert topo["source"] == "inferred"
    assert topo["frontends"][0]["binds"] == ["10.232.1.1:8000", "10.232.1.1:9000"]
    assert topo["haproxy_backend_addresses"] == ["10.232.2.1"]
    busy = _analysis(ROOT / "captures" / "demo-basic.pcapng", AttributionOptions())
    assert busy.attribution.topology.frontends == []
    assert {d["leg"] for d in rst_rows(busy.attribution)} == {"unknown"}


def test_an_rst_with_a_foreign_ttl_is_the_network():
    """A server's RST re-sent with another hop count (what a middlebox forging the server's
    address looks like at the capture point) becomes `network`; the same capture untouched
    says `server`."""
    path = OUT / "server-reset.pcapng"
    server = parse_address("10.232.2.11")
    options = AttributionOptions()

    def forge(packets):
        from_server = (packets["src_hi"] == server[0]) & (packets["src_lo"] == server[1])
        rst = (packets["flags"] & TH_RST) != 0
        packets["ttl"][from_server & rst] = 61

    plain = {d["frame"]: d for d in rst_rows(_analysis(path, options).attribution)}
    forged = {d["frame"]: d for d in rst_rows(_analysis(path, AttributionOptions(), forge).attribution)}
    changed = [f for f in plain if plain[f]["sender"] == "server" and plain[f]["src"] == "10.232.2.11"]
    assert changed
    for f in changed:
        assert plain[f]["cause"] == "server"
        assert forged[f]["sender"] == "network" and forged[f]["cause"] == "network"
        assert forged[f]["reason"] == "middlebox_injected"
        assert any(e.startswith("ttl_mismatch:-3") for e in forged[f]["evidence"])
    untouched = [f for f in plain if f not in changed]
    assert all(forged[f]["cause"] == plain[f]["cause"] for f in untouched)


def test_attribution_can_be_turned_off_in_the_library():
    off = _analysis(OUT / "nolinger.pcapng", AttributionOptions(enabled=False))
    assert off.attribution is None
    assert "rst_attribution" not in off.summary()


def _tracer(*args, check=True):
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                          timeout=120, check=check, cwd=ROOT)


def test_cli_csv_json_and_text(tmp_path):
    cap = OUT / "nolinger.pcapng"
    out_csv = tmp_path / "rsts.csv"
    result = _tracer("analyze", str(cap), "--haproxy-config", str(LAB / "haproxy-nolinger.cfg"),
                     "--haproxy-log", str(OUT / "nolinger.haproxy.log"),
                     "--rsts-csv", str(out_csv), "--format", "json")
    doc = json.loads(result.stdout)["captures"][0]
    assert doc["topology"]["source"] == "config"
    assert doc["join"]["join_rate"] == 1.0
    assert doc["rst_attribution"]["rsts"] == doc["rsts"] == len(doc["rst_details"])
    assert doc["haproxy_log"]["termination_agreement"]["rate"] == 1.0
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == doc["rsts"]
    for column in ("frame", "ts", "src", "sport", "dst", "dport", "leg", "sender", "cause",
                   "routine", "origin", "caused_by_frame", "reason", "termination_state",
                   "confidence", "evidence"):
        assert column in rows[0]
    propagated = [r for r in rows if r["origin"] == "propagated"]
    assert propagated and all(int(r["caused_by_frame"]) > 0 for r in propagated)
    text = _tracer("analyze", str(cap), "--proxy", "10.232.1.1").stdout
    assert "topology                  proxy" in text
    faults = text.index("faults by cause")
    routine = text.index("routine by reason")
    assert faults < routine  # faults first


@pytest.mark.parametrize("args", [
    ["--proxy", "not-an-address"],
    ["--haproxy-config", "/nonexistent.cfg"],
    ["--haproxy-log", "/nonexistent.log"],
    ["--haproxy-config", str(LAB / "haproxy-nolinger.cfg"), "--proxy", "10.0.0.1"],
    ["--haproxy-config", str(OUT / "nolinger.truth.csv")],
])
def test_cli_bad_attribution_inputs_are_one_line(args):
    result = _tracer("analyze", str(OUT / "nolinger.pcapng"), *args, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("tracer: error: ") and result.stderr.count("\n") == 1


def test_health_checks_are_told_apart_by_their_timer():
    """Connections to a destination opened every `inter` are health checks; connections that
    follow clients' requests are not, however regular the clients (coefficient of variation
    of the gaps; the lab's check destinations are at <= 0.03, its server ports >= 0.29)."""
    import numpy as np

    from tracer.attribution.topology import _on_a_timer

    rng = np.random.default_rng(1)
    checks = np.arange(20) * 1_000_000_000 + rng.integers(0, 5_000_000, 20)  # inter 1s, jitter
    served = np.cumsum(rng.exponential(200_000_000, 20)).astype(np.int64)  # client-driven
    scheduled = np.arange(20) * 250_000_000 + rng.integers(0, 100_000_000, 20)
    start = np.concatenate((checks, served, scheduled))
    group = np.repeat(np.arange(3), 20)
    assert _on_a_timer(start, group).tolist() == [True, False, False]
    assert not _on_a_timer(checks[:4], np.zeros(4, np.int64))[0]  # too few to say


# -- the two reasons the lab never produces (HAProxy 2.6 with Linux defaults): a crafted capture

def _ip_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_frame(src: str, sport: int, dst: str, dport: int, flags: int, seq: int, ack: int,
               payload: bytes = b"") -> bytes:
    import socket
    import struct

    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + _ip_checksum(ip).to_bytes(2, "big") + ip[12:]
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def _write_timed_pcap(path: Path, packets: list[tuple[float, bytes]]) -> str:
    import struct

    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for t, frame in packets:
        sec, usec = 1_700_000_000 + int(t), round((t % 1) * 1e6)
        parts.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(parts))
    return str(path)


def test_overload_and_connect_timeout_rsts(tmp_path):
    """An RST from a full frontend (maxconn 2, two connections open: the kernel's answer with
    tcp_abort_on_overflow = 1) is haproxy_overload; HAProxy's RST to a server's SYN/ACK that
    came after `timeout connect` is haproxy_timeout_connect (cause server, sC). The same reset
    on a frontend with room left stays a reject."""
    from tracer.pipeline import analyze_native, run

    S, SA, A, R, PA = 0x02, 0x12, 0x10, 0x04, 0x18
    fe, srv, hap, cl = "10.0.0.1", "10.0.1.10", "10.0.1.1", "10.0.2.{}"
    pk: list[tuple[float, bytes]] = []
    for k in (1, 2):  # two clients holding the frontend's two slots
        c = cl.format(k)
        pk += [(0.01 * k, _tcp_frame(c, 5000 + k, fe, 80, S, 100, 0)),
               (0.01 * k + 0.0001, _tcp_frame(fe, 80, c, 5000 + k, SA, 900, 101)),
               (0.01 * k + 0.0002, _tcp_frame(c, 5000 + k, fe, 80, A, 101, 901))]
    c = cl.format(3)  # the third: handshake, then reset by the full frontend's kernel
    pk += [(0.1, _tcp_frame(c, 5003, fe, 80, S, 100, 0)),
           (0.1001, _tcp_frame(fe, 80, c, 5003, SA, 900, 101)),
           (0.1002, _tcp_frame(c, 5003, fe, 80, A, 101, 901)),
           (0.1003, _tcp_frame(fe, 80, c, 5003, R, 901, 0))]
    # a client stream whose server is slow to accept: SYN, SYN again, SYN/ACK after 1.2 s
    c = cl.format(4)
    pk += [(0.2, _tcp_frame(c, 5004, fe, 81, S, 100, 0)),
           (0.2001, _tcp_frame(fe, 81, c, 5004, SA, 900, 101)),
           (0.2002, _tcp_frame(c, 5004, fe, 81, A, 101, 901)),
           (0.2003, _tcp_frame(c, 5004, fe, 81, PA, 101, 901, b"GET / HTTP/1.1\r\n\r\n")),
           (0.2004, _tcp_frame(hap, 40000, srv, 8080, S, 5000, 0)),
           (1.2004, _tcp_frame(hap, 40000, srv, 8080, S, 5000, 0)),
           (1.4, _tcp_frame(srv, 8080, hap, 40000, SA, 7000, 5001)),
           (1.4001, _tcp_frame(hap, 40000, srv, 8080, R, 5001, 0))]
    for k in (1, 2):  # the held slots close (client FINs, HAProxy FINs)
        c = cl.format(k)
        pk += [(2.0 + k * 0.01, _tcp_frame(c, 5000 + k, fe, 80, 0x11, 101, 901)),
               (2.0001 + k * 0.01, _tcp_frame(fe, 80, c, 5000 + k, 0x11, 901, 102))]
    pk.sort(key=lambda p: p[0])
    path = _write_timed_pcap(tmp_path / "limits.pcap", pk)
    cfg = ("defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
           "frontend full\n    bind 10.0.0.1:80\n    maxconn 2\n    default_backend app\n"
           "frontend roomy\n    bind 10.0.0.1:81\n    default_backend app\n"
           "backend app\n    server s1 10.0.1.10:8080\n")
    _, summary = run(analyze_native(path, attribution=AttributionOptions(config=parse_config(cfg))))
    by_frame = {d["frame"]: d for d in summary["rst_details"]}
    overload = [d for d in by_frame.values() if d["reason"] == "haproxy_overload"]
    assert [(d["src"], d["dst"], d["cause"], d["leg"]) for d in overload] == [(fe, cl.format(3), "haproxy", "frontend")]
    assert "frontend_at_maxconn:2" in overload[0]["evidence"]
    late = [d for d in by_frame.values() if d["reason"] == "haproxy_timeout_connect"]
    assert [(d["src"], d["cause"], d["leg"], d["termination_state"]) for d in late] == [(hap, "server", "backend", "sC")]
    assert any(e.startswith("late_synack:1199.") for e in late[0]["evidence"])
    # the same picture with room on the frontend: a reject, not an overload
    roomy = cfg.replace("maxconn 2", "maxconn 3")
    _, summary = run(analyze_native(path, attribution=AttributionOptions(config=parse_config(roomy))))
    reasons = {d["reason"] for d in summary["rst_details"] if d["leg"] == "frontend"}
    assert reasons == {"haproxy_reject"}


def test_offline_timeline_turns_stay_bounded_on_long_keepalive_flows():
    """Keep-alive streams make a request/response turn per payload packet; offline analysis
    prunes the turns the leg join can no longer ask about, so they follow the open flows, not
    the capture, and the join and attribution are those of an unpruned run."""
    from test_live import _KEEPALIVE_CONFIG, _keepalive_seconds

    def analyse(limit: int) -> tuple[dict, list[int]]:
        options = AttributionOptions(config=parse_config(_KEEPALIVE_CONFIG))
        analysis = CaptureAnalysis(path="keepalive", options=options, turn_prune_rows=limit)
        held = []
        for packets, counts in _keepalive_seconds(pairs=8, seconds=40, per_second=300):
            analysis.add(packets, counts)
            held.append(analysis.timeline.turn_rows)
        return analysis.summary(), held

    whole, held_whole = analyse(10**12)
    pruned, held = analyse(20_000)
    assert held_whole[-1] > 300_000  # every payload packet is a turn
    assert max(held[5:]) < 3 * max(held[:5]) + 20_000  # flat, not growing with the run
    for key in ("join", "rst_attribution", "rsts"):
        assert pruned[key] == whole[key], key

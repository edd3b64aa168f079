"""The `tracer analyze` contract: JSON keys, stdin and gzip, partial files, clear errors."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys

import pytest
from conftest import CAPTURES
from pcaputil import analyze_json, pcap_record_ends, run_tracer, tshark_count, write_pcap

DEMO = CAPTURES / "demo-basic.pcapng"
LO_PCAP = CAPTURES / "lo-ipv4.pcap"
REQUIRED_KEYS = {"path", "link_types", "packets", "tcp_packets", "anomalies", "leftover_bytes"}


@pytest.mark.parametrize("capture", [DEMO, LO_PCAP], ids=lambda p: p.name)
def test_json_contract_agrees_with_tshark(capture):
    doc = analyze_json(str(capture))
    assert doc["schema_version"] == 1
    (cap,) = doc["captures"]
    assert REQUIRED_KEYS <= cap.keys()
    assert cap["path"] == str(capture)
    assert cap["packets"] == tshark_count(capture)
    assert cap["tcp_packets"] == tshark_count(capture, "tcp && !icmp && !icmpv6")
    assert cap["leftover_bytes"] == 0
    assert cap["tcp_flags"]["RST"] == tshark_count(capture, "tcp.flags.reset == 1 && !icmp")
    assert cap["tcp_flags"]["SYN"] == tshark_count(capture, "tcp.flags.syn == 1 && !icmp")


def test_stdin_and_gzip_give_the_same_facts(tmp_path):
    reference = analyze_json(str(DEMO))["captures"][0]
    data = DEMO.read_bytes()
    from_stdin = analyze_json("-", stdin=data)["captures"][0]
    packed = tmp_path / "capture-without-gz-suffix"
    packed.write_bytes(gzip.compress(data))
    from_gzip = analyze_json(str(packed))["captures"][0]
    gz_stdin = analyze_json("-", stdin=gzip.compress(data))["captures"][0]
    assert from_stdin["path"] == "<stdin>"
    assert from_gzip["compressed"] and gz_stdin["compressed"]
    for other in (from_stdin, from_gzip, gz_stdin):
        for key in ("packets", "tcp_packets", "tcp_flags", "anomalies", "link_types", "non_tcp",
                    "tcp_payload_bytes", "first_ts", "last_ts"):
            assert other[key] == reference[key], key


def test_tcpdump_style_pipe(tmp_path):
    """`dumpcap -w - | tracer analyze -`: a writer that streams into a pipe."""
    reader = subprocess.Popen(["cat", str(LO_PCAP)], stdout=subprocess.PIPE)
    proc = subprocess.run([sys.executable, "-m", "tracer", "analyze", "--format", "json", "-"],
                          stdin=reader.stdout, capture_output=True, timeout=60)
    reader.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert b'"tcp_packets": ' + str(tshark_count(LO_PCAP, "tcp")).encode() in proc.stdout


@pytest.mark.parametrize("fraction", [0.13, 0.5, 0.999])
def test_file_cut_mid_record_reports_leftover(tmp_path, fraction):
    data = LO_PCAP.read_bytes()
    cut = int(len(data) * fraction)
    ends = pcap_record_ends(data[:cut])
    partial = tmp_path / "partial.pcap"
    partial.write_bytes(data[:cut])
    proc = run_tracer("analyze", "--format", "json", str(partial))
    assert proc.returncode == 0, proc.stderr
    import json

    cap = json.loads(proc.stdout)["captures"][0]
    assert cap["packets"] == len(ends)
    assert cap["leftover_bytes"] == cut - (ends[-1] if ends else 24)
    # The same through a pipe (a file still being written looks like this).
    piped = analyze_json("-", stdin=data[:cut])["captures"][0]
    assert piped["packets"] == len(ends) and piped["leftover_bytes"] == cap["leftover_bytes"]


def test_corrupt_record_length_names_the_offset(tmp_path):
    data = bytearray(LO_PCAP.read_bytes())
    ends = pcap_record_ends(bytes(data))
    bad = ends[99]  # start of the 101st record
    data[bad + 8 : bad + 12] = (0x7FFFFFFF).to_bytes(4, "little")
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(bytes(data))
    proc = run_tracer("analyze", "--format", "json", str(path))
    assert proc.returncode == 1
    stderr = proc.stderr.decode()
    assert f"offset {bad}" in stderr and "Traceback" not in stderr
    import json

    cap = json.loads(proc.stdout)["captures"][0]
    assert cap["packets"] == 100
    assert f"offset {bad}" in cap["problem"]
    assert cap["leftover_bytes"] == len(data) - bad


def _one_error_line(proc) -> str:
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_clear_errors(tmp_path):
    assert "no such file" in _one_error_line(run_tracer("analyze", str(tmp_path / "missing.pcap")))
    assert "directory" in _one_error_line(run_tracer("analyze", str(tmp_path)))
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    err = _one_error_line(run_tracer("analyze", str(text)))
    assert "not a pcap or pcapng" in err and "68 65 6c 6c" in err
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert "empty" in _one_error_line(run_tracer("analyze", str(empty)))
    user0 = write_pcap(tmp_path / "user0.pcap", [b"\x00" * 60] * 3, linktype=147)
    err = _one_error_line(run_tracer("analyze", str(user0)))
    assert "--engine pyshark" in err and "147" in err
    assert "unknown keyword" in _one_error_line(run_tracer("analyze", "-f", "hots 1.2.3.4", str(DEMO)))
    assert "no capture given" in _one_error_line(run_tracer("analyze"))


def test_permission_denied(tmp_path):
    path = tmp_path / "secret.pcap"
    shutil.copy(LO_PCAP, path)
    path.chmod(0o000)
    cmd = [sys.executable, "-m", "tracer", "analyze", str(path)]
    if os.geteuid() == 0:
        # root reads anything; without these two capabilities it is refused like anyone else.
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, cwd=CAPTURES.parent)
    assert "permission denied" in _one_error_line(proc)


def test_text_report_and_output_file(tmp_path):
    out = tmp_path / "report.txt"
    proc = run_tracer("analyze", str(DEMO), "-o", str(out))
    assert proc.returncode == 0 and proc.stdout == b""
    text = out.read_text()
    assert "TCP segments" in text and "RST" in text and str(DEMO) in text


def test_filter_keeps_matching_segments():
    everything = analyze_json(str(DEMO))["captures"][0]
    v6 = analyze_json("-f", "ip6", str(DEMO))["captures"][0]
    kept = v6["tcp_packets"] - v6["tcp_packets_filtered_out"]
    assert kept == tshark_count(DEMO, "tcp && ipv6")
    assert v6["tcp_packets"] == everything["tcp_packets"]


def test_gzip_stream_cut_short_keeps_what_was_read(tmp_path):
    packed = gzip.compress(LO_PCAP.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    cap = analyze_json(str(cut))["captures"][0]
    assert cap["compressed"]
    assert cap["anomalies"].get("truncated_compressed_stream") == 1
    assert 0 < cap["packets"] < tshark_count(LO_PCAP)


def test_join_reads_rotated_files_as_one_capture(tmp_path):
    """A capture cut in two mid-flow (like tcpdump -C rotation), read with --join, says what
    the whole capture says: flows continue across the cut, frames go on counting."""
    whole = CAPTURES / "netns-eth-loss.pcapng"
    total = tshark_count(whole)
    first, second = tmp_path / "part1.pcapng", tmp_path / "part2.pcapng"
    middle = total // 2
    subprocess.run(["editcap", "-r", str(whole), str(first), f"1-{middle}"], check=True)
    subprocess.run(["editcap", "-r", str(whole), str(second), f"{middle + 1}-{total}"], check=True)
    one = analyze_json(str(whole))["captures"][0]
    csv_whole, csv_joined = tmp_path / "whole.csv", tmp_path / "joined.csv"
    run_tracer("analyze", str(whole), "--rsts-csv", str(csv_whole), "-o", "/dev/null")
    joined_doc = analyze_json("--join", str(first), str(second))
    (joined,) = joined_doc["captures"]
    assert joined["paths"] == [str(first), str(second)]
    for key in ("packets", "tcp_packets", "flows", "rsts", "rsts_by_phase", "retransmissions",
                "segment_analysis", "loss", "tcp_flags"):
        assert joined[key] == one[key], key
    run_tracer("analyze", "--join", str(first), str(second), "--rsts-csv", str(csv_joined),
               "-o", "/dev/null")
    rows = lambda path: [line.split(",", 1)[1] for line in path.read_text().splitlines()[1:]]  # noqa: E731
    assert rows(csv_joined) == rows(csv_whole)
    # Without --join each part is its own capture: flows cut in two count twice.
    apart = analyze_json(str(first), str(second))["captures"]
    assert sum(c["flows"]["total"] for c in apart) > one["flows"]["total"]


def test_readme_demo_command(tmp_path):
    """README's first command: set-up (idempotent, nothing to do here) and the demo analysis of
    both HAProxy legs with its config, every RST of the capture attributed."""
    root = CAPTURES.parent
    done = subprocess.run(["bash", str(root / "scripts" / "demo.sh")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rsts = tshark_count(root / "captures" / "demo-haproxy.pcapng", "tcp.flags.reset == 1 && !icmp")
    assert f"RSTs                      {rsts:,}" in done.stdout
    assert "topology                  config:" in done.stdout
    assert "RST causes" in done.stdout


def test_flow_timeouts_are_options():
    capture = str(CAPTURES / "lab" / "out" / "keepalive.pcapng")
    default = analyze_json(capture)["captures"][0]
    longer = analyze_json(capture, "--flow-idle-timeout", "7200", "--flow-closed-timeout", "30")
    assert longer["captures"][0]["flows"] == default["flows"]
    for bad_value in ("0", "-1", "soon"):
        bad = run_tracer("analyze", capture, "--flow-idle-timeout", bad_value)
        assert bad.returncode == 2
        assert b"--flow-idle-timeout" in bad.stderr


WRITER = """
import signal, sys
from tracer.output import write_stdout
signal.signal(signal.SIGALRM, lambda *_: None)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)  # signals keep cutting writes short
text = "".join(f"{i:09d}\\n" for i in range(300_000))  # 3 MB
(write_stdout if sys.argv[1] == "ours" else sys.stdout.write)(text)
sys.stdout.flush()
signal.setitimer(signal.ITIMER_REAL, 0)
signal.signal(signal.SIGALRM, signal.SIG_IGN)  # one still pending must not end the process
"""


def test_stdout_reports_are_written_whole_under_signals():
    """With PYTHONUNBUFFERED (raw stdout) a write into a pipe interrupted by a signal comes back
    short and TextIOWrapper drops the rest; tracer's writer must not."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    expected = "".join(f"{i:09d}\n" for i in range(300_000))
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, "ours"], stdout=subprocess.PIPE,
                                env=env)
        chunks = []
        while chunk := proc.stdout.read(4096):  # a slow reader keeps the pipe full
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0
        assert b"".join(chunks).decode() == expected, attempt

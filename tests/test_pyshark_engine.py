"""`--engine pyshark` yields the same packet batches and report as the native decoder."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CAPTURES
from oracle import compare_packets
from pcaputil import analyze_json
from test_decode_oracle import decode_file

from tracer.source.pyshark_engine import read_packets_pyshark

SAME_FACTS = ("packets", "tcp_packets", "tcp_flags", "ip_versions", "tcp_payload_bytes",
              "first_ts", "last_ts")


@pytest.mark.parametrize("name", ["lo-ipv4.pcap", "any-sll2.pcapng", "synth-multi-if.pcapng",
                                  "netns-qinq.pcapng", "synth-tcp-options.pcap.gz"])
def test_pyshark_batches_equal_native(name):
    path = CAPTURES / name
    native, _, _ = decode_file(path)
    parts = [packets for packets, _ in read_packets_pyshark(str(path), batch_size=300)]
    theirs = np.concatenate(parts)
    assert compare_packets(native, theirs) == []


def test_cli_pyshark_engine_matches_native_report():
    path = str(CAPTURES / "demo-basic.pcapng")
    native = analyze_json(path)["captures"][0]
    pyshark = analyze_json("--engine", "pyshark", path)["captures"][0]
    assert pyshark["engine"] == "pyshark"
    for key in SAME_FACTS:
        assert pyshark[key] == native[key], key


def test_cli_pyshark_engine_reads_stdin():
    data = (CAPTURES / "lo-ipv4.pcap").read_bytes()
    via_stdin = analyze_json("--engine", "pyshark", "-", stdin=data)["captures"][0]
    native = analyze_json(str(CAPTURES / "lo-ipv4.pcap"))["captures"][0]
    assert via_stdin["tcp_packets"] == native["tcp_packets"]

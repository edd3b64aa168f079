"""Decode agrees with tshark, field by field, on every bundled capture and the shared corpus.

Deliberate differences, each checked rather than ignored:
- A TCP header whose options were cut by the snaplen: tshark's oracle gives no row (it cannot
  show the whole header); tracer keeps the segment, decodes the options it has and counts
  `truncated_tcp_options`. For those frames the fixed header fields are compared.
- Raw-IP link types 12 and 14 are the same encapsulation as 101 to tshark; compared as 101.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bundled_captures, corpus_captures
from oracle import compare_packets, tshark_decode, tshark_frame_count

from tracer.decode import decode_frames
from tracer.packet import PACKET_DTYPE, DecodeCounts
from tracer.source import open_capture

OPTION_FIELDS = {"opt_present", "mss", "wscale", "sack_count", "sack_left", "sack_right",
                 "tsval", "tsecr"}
BASE_FIELDS = [name for name in PACKET_DTYPE.names if name not in OPTION_FIELDS]
RAW_IP_ALIASES = {12: 101, 14: 101}


def decode_file(path) -> tuple[np.ndarray, DecodeCounts, object]:
    counts = DecodeCounts()
    parts = []
    with open_capture(path) as reader:
        for frames in reader.batches():
            packets, batch_counts = decode_frames(frames)
            parts.append(packets)
            counts.merge(batch_counts)
    packets = np.concatenate(parts) if parts else np.zeros(0, PACKET_DTYPE)
    return packets, counts, reader


def _normalize(packets: np.ndarray) -> np.ndarray:
    packets = packets.copy()
    for alias, canonical in RAW_IP_ALIASES.items():
        packets["linktype"][packets["linktype"] == alias] = canonical
    return packets


def check_against_tshark(path) -> None:
    ours, counts, reader = decode_file(path)
    assert reader.problem is None and reader.leftover_bytes == 0
    assert counts.frames == tshark_frame_count(path)
    oracle = tshark_decode(path)
    ours = _normalize(ours)
    theirs = _normalize(oracle.packets)
    truncated = np.array(sorted(f for f, why in oracle.rejected.items() if "option" in why), np.int64)
    other_rejects = {f: why for f, why in oracle.rejected.items() if "option" not in why}
    # Frames tshark could not give a whole TCP header: tracer drops them too.
    assert not np.isin(list(other_rejects), ours["frame"]).any(), other_rejects
    whole = ~np.isin(ours["frame"], truncated)
    assert compare_packets(ours[whole], theirs) == []
    if truncated.size:
        assert counts.anomalies.get("truncated_tcp_options", 0) >= truncated.size
        ours_cut = ours[~whole]
        assert sorted(ours_cut["frame"].tolist()) == truncated.tolist()


@pytest.mark.parametrize("path", bundled_captures(), ids=lambda p: p.name)
def test_bundled_capture_agrees_with_tshark(path):
    check_against_tshark(path)


@pytest.mark.parametrize("path", corpus_captures(), ids=lambda p: p.name)
def test_corpus_capture_agrees_with_tshark(path):
    check_against_tshark(path)


def test_there_are_captures_to_check():
    assert len(bundled_captures()) >= 20 and len(corpus_captures()) >= 30

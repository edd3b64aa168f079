"""The vectorized record walk must find exactly the chain a sequential reader finds."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracer.source import records
from tracer.source.formats import PcapParser


def _pcap_bytes(caplens: list[int], junk_seed: int, *, little: bool = True) -> bytes:
    """A pcap whose payloads are random bytes, often shaped like record headers."""
    rng = np.random.default_rng(junk_seed)
    order = "<" if little else ">"
    parts = [struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, caplen in enumerate(caplens):
        body = bytearray(rng.integers(0, 256, caplen, dtype=np.uint8).tobytes())
        # Plant fake headers (small caplen, plausible microseconds) to mislead guessing.
        for at in range(0, max(caplen - 16, 0), 97):
            body[at : at + 16] = struct.pack(order + "IIII", 1_700_000_000, i % 999_999, 60, 60)
        parts.append(struct.pack(order + "IIII", 1_700_000_000 + i, i % 1_000_000, caplen, caplen))
        parts.append(bytes(body))
    return b"".join(parts)


def _sequential_starts(data: bytes, little: bool = True) -> tuple[list[int], int]:
    order = "<" if little else ">"
    pos, starts = 24, []
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        if pos + 16 + caplen > len(data):
            break
        starts.append(pos)
        pos += 16 + caplen
    return starts, pos


def _walk(data: bytes, monkeypatch, segment: int, window: int):
    monkeypatch.setattr(records, "SEGMENT_BYTES", segment)
    monkeypatch.setattr(records, "GUESS_WINDOW", window)
    parser = PcapParser()
    buf = np.frombuffer(data, np.uint8)
    batches, consumed = parser.parse(buf, 0)
    caplens = np.concatenate([b.caplen for b in batches]) if batches else np.empty(0)
    return caplens, consumed, parser


@settings(max_examples=60, deadline=None)
@given(
    caplens=st.lists(st.integers(0, 3000), min_size=0, max_size=400),
    seed=st.integers(0, 2**16),
    segment=st.sampled_from([64, 256, 1024, 4096]),
    cut=st.integers(0, 40),
    little=st.booleans(),
)
def test_walk_matches_sequential_reader(caplens, seed, segment, cut, little, monkeypatch_module):
    data = _pcap_bytes(caplens, seed, little=little)
    data = data[: max(len(data) - cut, 0)]
    if len(data) < 24:
        return
    want_starts, want_end = _sequential_starts(data, little)
    got_caplens, consumed, parser = _walk(data, monkeypatch_module, segment, 256)
    assert consumed == want_end
    assert len(got_caplens) == len(want_starts)
    order = "<" if little else ">"
    expected = [struct.unpack_from(order + "I", data, s + 8)[0] for s in want_starts]
    assert got_caplens.tolist() == expected
    assert parser.problem is None


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_corrupt_length_stops_with_offset(monkeypatch):
    data = bytearray(_pcap_bytes([100] * 50 + [200] * 50, 3))
    starts, _ = _sequential_starts(bytes(data))
    bad = starts[60]
    data[bad + 8 : bad + 12] = struct.pack("<I", 0x7FFFFFFF)
    caplens, consumed, parser = _walk(bytes(data), monkeypatch, 512, 256)
    assert len(caplens) == 60
    assert consumed == bad
    assert parser.problem is not None and f"offset {bad}" in parser.problem


def test_wrong_guesses_are_discarded(monkeypatch):
    # Every payload is a carpet of fake headers; the walk must still follow the true chain.
    data = _pcap_bytes([1500] * 300, 7)
    want, end = _sequential_starts(data)
    caplens, consumed, _ = _walk(data, monkeypatch, 2048, 1024)
    assert consumed == end and len(caplens) == len(want) == 300


def test_unaligned_reads_match_struct():
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 1000, dtype=np.uint8)
    offsets = rng.integers(0, 996, 200)
    raw = data.tobytes()
    for little, fmt in ((True, "<I"), (False, ">I")):
        got = records.read_u32(data, offsets, little)
        assert got.tolist() == [struct.unpack_from(fmt, raw, o)[0] for o in offsets]

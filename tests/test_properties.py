"""Property tests: random, truncated and mutated input never raises, hangs or miscounts."""

from __future__ import annotations

import numpy as np
from conftest import CAPTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer.decode import decode_frames
from tracer.decode.vocab import DROP_REASONS, SUPPORTED_LINKTYPES
from tracer.packet import FrameBatch
from tracer.source.formats import PcapngParser, PcapParser, sniff_format

SMALL_PCAP = (CAPTURES / "lo-ipv4.pcap").read_bytes()[:30000]
SMALL_PCAPNG = (CAPTURES / "lo-ipv4-ipv6.pcapng").read_bytes()[:30000]
MULTI_SECTION = (CAPTURES / "synth-two-sections.pcapng").read_bytes()


def _read_all(data: bytes):
    """Parse a whole buffer the way the stream reader does, decode every batch."""
    kind = sniff_format(data[:4])
    if kind is None:
        return None
    parser = PcapParser() if kind == "pcap" else PcapngParser()
    buf = np.frombuffer(data, np.uint8)
    batches, consumed = parser.parse(buf, 0)
    assert 0 <= consumed <= len(data)
    frames = 0
    for batch in batches:
        assert (batch.offset + batch.caplen.astype(np.int64) <= len(data)).all()
        packets, counts = decode_frames(batch)
        _check_counts(batch, packets, counts)
        frames += len(batch)
    return frames, consumed, parser


def _check_counts(batch: FrameBatch, packets: np.ndarray, counts) -> None:
    """Every frame is counted exactly once: a TCP row, a non-TCP category or a drop reason."""
    dropped = sum(v for k, v in counts.anomalies.items() if k in DROP_REASONS)
    assert counts.frames == len(batch)
    assert counts.tcp_packets == packets.shape[0]
    assert counts.tcp_packets + sum(counts.non_tcp.values()) + dropped == counts.frames
    if packets.shape[0]:
        assert (packets["tcp_hdr_len"] >= 20).all()
        assert (packets["tcp_hdr_len"] <= 60).all()
        assert (packets["sack_count"] <= 4).all()
        assert np.isin(packets["frame"], batch.frame).all()


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_captures_never_raise(data):
    original = data.draw(st.sampled_from([SMALL_PCAP, SMALL_PCAPNG, MULTI_SECTION]))
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 12))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _read_all(bytes(raw[:cut]))


@settings(max_examples=100, deadline=2000)
@given(header=st.sampled_from([SMALL_PCAP[:24], SMALL_PCAPNG[:28]]), tail=st.binary(max_size=4000))
def test_random_bytes_after_a_valid_header(header, tail):
    _read_all(header + tail)


def test_every_prefix_of_a_multi_section_pcapng():
    complete, _, _ = _read_all(MULTI_SECTION)
    seen = []
    for cut in range(0, len(MULTI_SECTION) + 1, 3):
        result = _read_all(MULTI_SECTION[:cut])
        frames = result[0] if result else 0
        seen.append(frames)
    assert seen == sorted(seen), "more data never yields fewer frames"
    assert seen[-1] <= complete


@settings(max_examples=200, deadline=2000)
@given(
    frames=st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=40),
    linktype=st.sampled_from(sorted(SUPPORTED_LINKTYPES) + [147]),
    seed=st.integers(0, 2**16),
)
def test_decoder_on_random_frames(frames, linktype, seed):
    rng = np.random.default_rng(seed)
    data = np.frombuffer(b"".join(frames), np.uint8)
    lengths = np.array([len(f) for f in frames], np.int64)
    offset = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    wirelen = lengths + rng.integers(0, 3, len(frames)) * rng.integers(0, 2000, len(frames))
    batch = FrameBatch(
        frame=np.arange(1, len(frames) + 1, dtype=np.int64),
        ts_ns=np.zeros(len(frames), np.int64),
        iface=np.zeros(len(frames), np.uint16),
        linktype=np.full(len(frames), linktype, np.uint16),
        caplen=lengths.astype(np.uint32),
        wirelen=wirelen.astype(np.uint32),
        data=data,
        offset=offset,
    )
    packets, counts = decode_frames(batch)
    _check_counts(batch, packets, counts)
    assert (packets["payload_len"].astype(np.int64) <= wirelen.max()).all()

"""The flow stage against tshark's TCP analysis, frame by frame, on every capture we have.

Flow ids must equal tshark's tcp.stream everywhere. For the per-segment analysis flags
(tcp.analysis.*) every disagreement is either fixed or listed in KNOWN_DIFFERENCES with its
reason; the test fails on any other disagreement *and* on a listed one that went away, so the
list stays true.

Reasons used below:
- COPY: the capture holds the same packet twice (frames identical to the microsecond, nothing
  in between). tshark calls the copy a retransmission (or a duplicate ACK, and what follows a
  fast retransmission); tracer calls it a capture duplicate and keeps it out of loss counts.
  Everything tshark then derives from the copies in that flow differs too.
- ACKLAG: tshark decides "ACKed unseen segment" against `maxseqtobeacked`, which it moves
  only now and then, so it flags some ACKs of data it did see (resent earlier) and misses
  some of data it never saw; tracer flags an ACK beyond the highest sequence the other side
  has sent, or the first ACK past a gap nobody resent (the capture missed that data).
- OOO: tshark 4.0.17 labels these resends spurious (or plain) although they arrive within the
  flow's initial RTT of the segment that last raised the highest sequence, which is its own
  out-of-order rule; tracer applies the rule.
- FINREPEAT: a FIN sent again with each ACK (reassembly.pcap's server): tshark's fast
  retransmission test counts the peer's earlier ACKs as duplicates; tracer sees no dup ACKs.
- CRAFTED: hand-made segments with every flag set at once, where neither tool's rules are
  meaningful.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bundled_captures, corpus_captures
from flow_oracle import tshark_flow_analysis
from test_decode_oracle import decode_file

from tracer.flows import FlowTracker
from tracer.flows import vocab as v
from tracer.flows.tables import RTT_KIND_HANDSHAKE_INITIATOR, RTT_KIND_HANDSHAKE_RESPONDER

FLAGS = ("retransmission", "fast_retransmission", "spurious_retransmission", "out_of_order",
         "lost_segment", "ack_lost_segment", "duplicate_ack", "zero_window", "window_full",
         "keep_alive", "reused_ports")

OOO_FRAMES = [582, 654, 657, 663, 676, 681]
CRAFTED = {
    "lost_segment": ("CRAFTED", [15]),
    "reused_ports": ("CRAFTED", [14]),
}
KNOWN_DIFFERENCES: dict[str, dict[str, tuple[str, list[int]]]] = {
    "netns-eth-loss.pcapng": {
        "retransmission": ("OOO", OOO_FRAMES),
        "spurious_retransmission": ("OOO", OOO_FRAMES),
        "out_of_order": ("OOO", OOO_FRAMES),
    },
    "synth-tcp-options.pcap": CRAFTED,
    "synth-tcp-options.pcap.gz": CRAFTED,
    "reassembly.pcap": {
        "fast_retransmission": ("FINREPEAT", [8, 10, 12]),
        "ack_lost_segment": ("ACKLAG", [70, 78, 105]),
    },
}


def our_segments(path) -> np.ndarray:
    packets, _, _ = decode_file(path)
    tracker = FlowTracker(keep_segments=True)
    tracker.add(packets)
    tracker.finish()
    return tracker.segments


def disagreements(path) -> tuple[dict[str, list[int]], list[int]]:
    """Per flag, the frames where tracer and tshark disagree, leaving out capture copies (COPY:
    a frame tracer marks as a duplicate, which tshark labels from its own rules)."""
    ours = our_segments(path)
    theirs = tshark_flow_analysis(path)
    common, oi, ti = np.intersect1d(ours["frame"], theirs["frame"], return_indices=True)
    a, b = ours[oi], theirs[ti]
    stream_mismatch = common[a["flow_id"] != b["stream"]].tolist()
    copy = (a["flags"] & v.A_DUPLICATE) != 0
    out = {}
    for name in FLAGS:
        bit = 1 << v.SEGMENT_FLAG_NAMES.index(name)
        mine = (a["flags"] & bit) != 0
        differ = common[(mine != b[name]) & ~copy]
        if differ.size:
            out[name] = differ.tolist()
    return out, stream_mismatch


# Flows whose handshake tshark times to an RST/ACK that came before the SYN/ACK.
KNOWN_IRTT_DIFFERENCES = {"rst-inject-rae.pcap": (0,)}

COPY_CAPTURES = {"ssh-dups.pcap": 280, "ctu-64702-888.pcap": 7}


@pytest.mark.parametrize("name", sorted(COPY_CAPTURES))
def test_capture_copies_are_what_tshark_calls_retransmissions(name):
    """COPY: in captures holding every packet twice (or four times), each copy tracer sets
    aside is a frame tshark labels retransmission, duplicate ACK or out-of-order."""
    from conftest import CORPUS

    path = CORPUS / "zeek-tcp" / name
    ours = our_segments(path)
    theirs = tshark_flow_analysis(path)
    copies = ours["frame"][(ours["flags"] & v.A_DUPLICATE) != 0]
    assert copies.size == COPY_CAPTURES[name]
    labelled = theirs["frame"][theirs["retransmission"] | theirs["duplicate_ack"]
                               | theirs["out_of_order"] | theirs["fast_retransmission"]]
    assert np.isin(copies, labelled).all()


@pytest.mark.parametrize("path", bundled_captures() + corpus_captures(), ids=lambda p: p.name)
def test_flows_agree_with_tshark(path):
    got, stream_mismatch = disagreements(path)
    assert stream_mismatch == []
    known = {flag: frames for flag, (_, frames) in KNOWN_DIFFERENCES.get(path.name, {}).items()}
    assert got == known


@pytest.mark.parametrize("path", bundled_captures() + corpus_captures(), ids=lambda p: p.name)
def test_initial_rtt_and_ack_rtt_agree_with_tshark(path):
    """initial_rtt: SYN -> the ACK that completes the handshake, per flow, to the nanosecond,
    on every flow whose handshake tracer saw complete. (tshark also shows an initial RTT for a
    refused SYN, up to the RST/ACK: its rule is "the first ACK without SYN after the SYN";
    tracer keeps that case as a refused flow, and in rst-inject-rae.pcap, where an injected
    RST/ACK comes before the real SYN/ACK, times the real handshake.)
    ack_rtt: every data RTT sample tracer takes equals tshark's ack_rtt on the same ACK frame.
    tshark has more ack_rtt values than tracer keeps, by design: it also times SYN, FIN and
    handshake ACKs (tracer has handshake samples for those) and ranges that were sent twice
    (Karn's rule: tracer takes no sample there). Records without a capture time (pcapng Simple
    Packet Blocks) give no sample on either side."""
    packets, _, _ = decode_file(path)
    tracker = FlowTracker(keep_segments=True)
    tracker.add(packets)
    tracker.finish()
    theirs = tshark_flow_analysis(path)
    # Ours: the two halves of the handshake, where both were taken (Karn: none when the SYN or
    # the SYN/ACK was sent twice; tshark then times from the last SYN, tracer does not time).
    rtts = tracker.rtts
    halves: dict[int, list[int]] = {}
    for kind in (RTT_KIND_HANDSHAKE_RESPONDER, RTT_KIND_HANDSHAKE_INITIATOR):
        rows = rtts[rtts["kind"] == kind]
        for flow, rtt in zip(rows["flow_id"].tolist(), rows["rtt_ns"].tolist(), strict=True):
            halves.setdefault(flow, []).append(rtt)
    skip = KNOWN_IRTT_DIFFERENCES.get(path.name, ())
    ours_irtt = {flow: sum(h) for flow, h in halves.items() if len(h) == 2 and flow not in skip}
    shown = theirs[theirs["initial_rtt_ns"] >= 0]
    theirs_irtt = dict(zip(shown["stream"].tolist(), shown["initial_rtt_ns"].tolist(), strict=True))
    for stream, irtt in ours_irtt.items():
        assert theirs_irtt.get(stream) == irtt, (stream, irtt, theirs_irtt.get(stream))
    segs = tracker.segments
    sampled = segs[segs["ack_rtt_ns"] >= 0]
    common, si, ti = np.intersect1d(sampled["frame"], theirs["frame"], return_indices=True)
    assert common.size == sampled.size
    assert (sampled["ack_rtt_ns"][si] == theirs["ack_rtt_ns"][ti]).all(), common[
        sampled["ack_rtt_ns"][si] != theirs["ack_rtt_ns"][ti]][:10]

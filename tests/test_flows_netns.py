"""Real loss, made by nftables in a network namespace, measured by tracer.

A bulk transfer crosses a bridge that drops 5 % of the sender's packets (tests/netns.py). At
the sender, every dropped data segment must be sent again, so the share of re-sent data
segments that tracer reports must be near the drop rate (band and reasoning in
test_flow_oracle_selfcheck.LIVE_RESENT_BAND) and agree with tshark's count. At the receiver,
downstream of the drops, tracer must see the holes as gaps before the capture point and count
no loss in the other direction.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from flow_oracle import direction_mask, resent_mask, tshark_flow_analysis
from netns import loss_link
from test_flow_oracle_selfcheck import LIVE_BYTES, LIVE_RESENT_BAND, _captured_transfer
from test_flows import track

from tracer.flows import vocab as v
from tracer.packet import parse_address


def _decode(path):
    from test_decode_oracle import decode_file

    return decode_file(path)[0]


def _from(packets: np.ndarray, src: str) -> np.ndarray:
    hi, lo = parse_address(src)
    return (packets["src_hi"] == hi) & (packets["src_lo"] == lo)


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")
def test_loss_measured_near_the_injected_rate(tmp_path):
    with loss_link(5) as link:
        result, sender_pcap, receiver_pcap = _captured_transfer(link, tmp_path, LIVE_BYTES)
        drops = link.dropped_packets()
        sender, receiver = link.sender_addr, link.receiver_addr
    assert result.received == LIVE_BYTES

    # At the sender: re-sent share of the data segments, tracer vs the drop rate and tshark.
    packets = _decode(sender_pcap)
    t = track(packets)
    forward = _from(packets, sender) & (packets["payload_len"] > 0)
    frames = packets["frame"][forward]
    segs = t.segments[np.isin(t.segments["frame"], frames)]
    resent_bits = v.A_RETRANSMISSION | v.A_OUT_OF_ORDER
    ours = int(np.count_nonzero(segs["flags"] & resent_bits))
    rate = ours / frames.size
    low, high = LIVE_RESENT_BAND
    assert low <= rate <= high, (ours, frames.size, drops)
    theirs_rows = tshark_flow_analysis(sender_pcap)
    theirs_rows = theirs_rows[direction_mask(theirs_rows, sender, receiver)
                              & (theirs_rows["payload_len"] > 0)]
    theirs = int(resent_mask(theirs_rows).sum())
    assert abs(ours - theirs) <= max(2, theirs // 20), (ours, theirs)
    assert int(np.count_nonzero(segs["flags"] & v.A_LOST_SEGMENT)) == 0  # nothing lost upstream

    # At the receiver: the holes are gaps before the capture point, one per run of drops.
    packets = _decode(receiver_pcap)
    t = track(packets)
    forward_frames = packets["frame"][_from(packets, sender)]
    segs = t.segments
    gaps = segs["frame"][(segs["flags"] & v.A_LOST_SEGMENT) != 0]
    assert 0 < gaps.size <= drops
    assert np.isin(gaps, forward_frames).all()
    (flow,) = t.flows
    assert flow["lost_segments"][1] == 0  # the reverse direction lost nothing
    # Every gap was resent by the sender: lost before the capture point, none missed by it.
    assert t.counts.gaps_missed_by_capture == 0
    assert t.counts.gaps_lost_upstream == gaps.size
    print(f"\n5 % link: {drops} drops, tracer re-sent {ours}/{frames.size} data segments "
          f"({rate:.2%}, tshark {theirs}), {gaps.size} gaps at the receiver")

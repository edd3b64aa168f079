"""The flow stage on hand-built segments (exact expectations) and on real captures (invariants).

Hand-built flows use the packet batch layout directly, so each test states one TCP situation and
what tracer must say about it. Real captures check what must hold whatever the traffic: results
do not depend on how the capture is cut into batches, and the flow table accounts for every
segment.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CAPTURES, CORPUS
from test_decode_oracle import decode_file

from tracer.decode.vocab import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL
from tracer.flows import FlowTracker
from tracer.flows import vocab as v
from tracer.flows.tables import RTT_KIND_DATA, RTT_KIND_HANDSHAKE_RESPONDER
from tracer.packet import (
    OPT_WSCALE,
    PACKET_DTYPE,
    TH_ACK,
    TH_FIN,
    TH_PSH,
    TH_RST,
    TH_SYN,
    parse_address,
)

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
T0 = 1_700_000_000 * 10**9


class Flow:
    """Builds the segments of one connection, in order."""

    def __init__(self, client=CLIENT, server=SERVER, cport=40000, sport=80) -> None:
        self.rows: list[np.ndarray] = []
        self.ends = {"c": (client, cport), "s": (server, sport)}

    def add(self, t_ms: float, who: str, seq: int, ack: int, flags: int, payload: int = 0,
            window: int = 1000, ttl: int = 64, ip_id: int = 0, wscale: int | None = None):
        row = np.zeros(1, PACKET_DTYPE)
        (src, sp), (dst, dp) = self.ends[who], self.ends["s" if who == "c" else "c"]
        row["frame"] = len(self.rows) + 1
        row["ts_ns"] = T0 + int(t_ms * 1e6)
        row["ip_version"] = 4
        row["src_hi"], row["src_lo"] = parse_address(src)
        row["dst_hi"], row["dst_lo"] = parse_address(dst)
        row["sport"], row["dport"] = sp, dp
        row["seq"], row["ack"] = seq & 0xFFFFFFFF, ack & 0xFFFFFFFF
        row["flags"] = flags
        row["payload_len"] = payload
        row["window"] = window
        row["ttl"] = ttl
        row["ip_id"] = ip_id
        if wscale is not None:
            row["opt_present"] = OPT_WSCALE
            row["wscale"] = wscale
        self.rows.append(row)
        return self

    def packets(self) -> np.ndarray:
        return np.concatenate(self.rows)


def track(packets: np.ndarray, batch: int | None = None, **kwargs) -> FlowTracker:
    tracker = FlowTracker(keep_segments=True, **kwargs)
    step = batch or max(packets.shape[0], 1)
    for lo in range(0, packets.shape[0], step):
        tracker.add(packets[lo : lo + step])
    tracker.finish()
    return tracker


def flags_of(tracker: FlowTracker) -> dict[int, list[str]]:
    return {int(s["frame"]): v.flag_names(int(s["flags"])) for s in tracker.segments}


def handshake(f: Flow, isn_c=1000, isn_s=5000, t=0.0, rtt=1.0) -> Flow:
    f.add(t, "c", isn_c, 0, TH_SYN)
    f.add(t + rtt, "s", isn_s, isn_c + 1, TH_SYN | TH_ACK)
    f.add(t + 2 * rtt, "c", isn_c + 1, isn_s + 1, TH_ACK)
    return f


def test_clean_exchange_and_fin_close():
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK | TH_PSH, payload=100)
    f.add(4, "s", 5001, 1101, TH_ACK)
    f.add(5, "s", 5001, 1101, TH_ACK | TH_PSH, payload=300)
    f.add(6, "c", 1101, 5301, TH_ACK)
    f.add(7, "c", 1101, 5301, TH_ACK | TH_FIN)
    f.add(8, "s", 5301, 1102, TH_ACK | TH_FIN)
    f.add(9, "c", 1102, 5302, TH_ACK)
    t = track(f.packets())
    (flow,) = t.flows
    assert v.FLOW_STATE_NAMES[flow["state"]] == "closed_fin"
    assert flow["packets"].tolist() == [6, 4]
    assert flow["payload_bytes"].tolist() == [100, 300]
    assert flow["seq_bytes"].tolist() == [102, 302]  # SYN and FIN take one sequence number each
    assert not any(flags_of(t).values())
    rtt = t.rtts
    data = rtt[rtt["kind"] == RTT_KIND_DATA]
    assert sorted(data["rtt_ns"].tolist()) == [1_000_000, 1_000_000]
    assert rtt[rtt["kind"] == RTT_KIND_HANDSHAKE_RESPONDER]["rtt_ns"].tolist() == [1_000_000]


def test_sequence_wraparound_is_seamless():
    isn = 2**32 - 150  # the client's data crosses 2**32 after 150 bytes
    f = handshake(Flow(), isn_c=isn)
    seq = isn + 1
    for i in range(6):
        f.add(3 + i, "c", seq, 5001, TH_ACK, payload=100)
        f.add(3.5 + i, "s", 5001, seq + 100, TH_ACK)
        seq += 100
    t = track(f.packets())
    assert not any(flags_of(t).values())
    assert t.flows["seq_bytes"][0][0] == 601
    segs = t.segments
    client_data = segs[(segs["direction"] == 0) & (segs["next_seq"] > segs["seq"])]
    assert np.all(np.diff(client_data["seq"]) > 0)


def test_retransmission_gap_and_ack_of_unseen_data():
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK, payload=100)
    f.add(4, "c", 1201, 5001, TH_ACK, payload=100)  # 1101..1201 never captured: a gap
    f.add(5, "s", 5001, 1101, TH_ACK)
    f.add(300, "c", 1101, 5001, TH_ACK, payload=100)  # resent after a timeout
    f.add(301, "s", 5001, 1301, TH_ACK)
    f.add(302, "s", 5001, 1401, TH_ACK)  # acknowledges data the capture never saw
    got = flags_of(track(f.packets()))
    assert got[5] == ["lost_segment"]
    assert got[7] == ["retransmission"]
    assert got[9] == ["ack_lost_segment"]


@pytest.mark.parametrize("batch", [None, 4])
def test_gaps_are_settled_by_what_happens_next(batch):
    """A gap the sender fills again was lost before the capture point; a gap the receiver
    acknowledges without a resend was missed by the capture (the data did arrive)."""
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK, payload=100)
    f.add(4, "c", 1201, 5001, TH_ACK, payload=100)  # 1101..1201 not seen: gap 1
    f.add(5, "c", 1101, 5001, TH_ACK, payload=100)  # resent: gap 1 was lost upstream
    f.add(6, "s", 5001, 1301, TH_ACK)
    f.add(7, "c", 1401, 5001, TH_ACK, payload=100)  # 1301..1401 not seen: gap 2
    f.add(8, "s", 5001, 1501, TH_ACK)  # acknowledged without a resend: the capture missed it
    t = track(f.packets(), batch=batch)
    assert t.counts.gaps_lost_upstream == 1
    assert t.counts.gaps_missed_by_capture == 1
    assert t.counts.gaps_unsettled == 0
    got = flags_of(t)
    assert got[5] == ["lost_segment"] and got[8] == ["lost_segment"]
    assert "ack_lost_segment" in got[9]
    assert "ack_lost_segment" not in got[7]


def test_gap_still_open_at_the_end_is_unsettled():
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK, payload=100)
    f.add(4, "c", 1201, 5001, TH_ACK, payload=100)
    t = track(f.packets())
    assert (t.counts.gaps_lost_upstream, t.counts.gaps_missed_by_capture,
            t.counts.gaps_unsettled) == (0, 0, 1)


def test_dup_acks_then_fast_retransmission_and_karn():
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK, payload=100)
    f.add(3.1, "c", 1101, 5001, TH_ACK, payload=100)  # lost after the capture point
    f.add(3.2, "c", 1201, 5001, TH_ACK, payload=100)
    f.add(4, "s", 5001, 1101, TH_ACK, ip_id=1)  # distinct IPv4 IDs, as Linux sends them
    f.add(4.1, "s", 5001, 1101, TH_ACK, ip_id=2)
    f.add(4.2, "s", 5001, 1101, TH_ACK, ip_id=3)
    f.add(4.3, "c", 1101, 5001, TH_ACK, payload=100)
    f.add(5.3, "s", 5001, 1301, TH_ACK)
    t = track(f.packets())
    got = flags_of(t)
    assert got[8] == ["duplicate_ack"] and got[9] == ["duplicate_ack"]
    assert got[10] == ["retransmission", "fast_retransmission"]
    by_frame = {int(s["frame"]): s for s in t.segments}
    assert by_frame[9]["dupack_count"] == 2
    # The ACK covering the retransmitted range gives no RTT sample (Karn's rule).
    assert by_frame[11]["ack_rtt_ns"] == -1
    assert by_frame[7]["ack_rtt_ns"] == 1_000_000


def test_capture_duplicate_is_not_a_retransmission():
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK, payload=100, ip_id=7)
    f.add(3.00001, "c", 1001, 5001, TH_ACK, payload=100, ip_id=7)  # same packet, second copy
    f.add(4, "s", 5001, 1101, TH_ACK)
    t = track(f.packets())
    assert flags_of(t)[5] == ["duplicate"]
    assert t.flows["retransmissions"][0].tolist() == [0, 0]


@pytest.mark.parametrize(("linktype", "ifaces", "counted"), [
    (LINKTYPE_ETHERNET, (0, 0, 0), 3),  # a burst of identical RSTs: three real packets
    (LINKTYPE_ETHERNET, (0, 1, 0), 1),  # one RST seen on two interfaces: copies
    (LINKTYPE_LINUX_SLL, (0, 0, 0), 1),  # Linux "any": one RST per device it crossed
])
def test_identical_rsts_are_copies_only_across_interfaces(linktype, ifaces, counted):
    f = handshake(Flow())
    f.add(3, "s", 5001, 1001, TH_ACK, payload=100)
    for k in range(3):
        f.add(4 + k * 0.002, "c", 1001, 0, TH_RST)  # a middlebox answering each segment
    packets = f.packets()
    packets["linktype"] = linktype
    packets["iface"][-3:] = ifaces
    t = track(packets)
    assert t.rsts.shape[0] == counted
    assert t.counts.duplicates == 3 - counted


def test_window_scaling_from_the_handshake():
    f = Flow()
    f.add(0, "c", 1000, 0, TH_SYN, window=65535, wscale=7)
    f.add(1, "s", 5000, 1001, TH_SYN | TH_ACK, window=65535, wscale=3)
    f.add(2, "c", 1001, 5001, TH_ACK, window=500)
    f.add(3, "s", 5001, 1001, TH_ACK, window=500)
    segs = track(f.packets()).segments
    assert segs["window"].tolist() == [65535, 65535, 500 << 7, 500 << 3]


def test_no_scaling_when_one_side_lacks_the_option():
    f = Flow()
    f.add(0, "c", 1000, 0, TH_SYN, window=65535, wscale=7)
    f.add(1, "s", 5000, 1001, TH_SYN | TH_ACK, window=65535)
    f.add(2, "c", 1001, 5001, TH_ACK, window=500)
    assert track(f.packets()).segments["window"].tolist() == [65535, 65535, 500]


@pytest.mark.parametrize("batch", [None, 1, 3, 6])
def test_port_reuse_starts_a_new_flow(batch):
    # batch=6: the new SYN opens the second batch, the first flow having started in the first.
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK | TH_FIN)
    f.add(4, "s", 5001, 1002, TH_ACK | TH_FIN)
    f.add(5, "c", 1002, 5002, TH_ACK)
    handshake(f, isn_c=90000, isn_s=70000, t=10)
    t = track(f.packets(), batch)
    assert t.flows["flow_id"].tolist() == [0, 1]
    assert t.flows["reused"].tolist() == [False, True]
    assert flags_of(t)[7] == ["reused_ports"]
    assert t.segments["flow_id"].tolist() == [0] * 6 + [1] * 3


def test_midstream_flow_takes_the_ephemeral_port_as_initiator():
    f = Flow(cport=51000, sport=443)
    f.add(0, "s", 9000, 3000, TH_ACK, payload=50)  # the server speaks first in the capture
    f.add(1, "c", 3000, 9050, TH_ACK)
    (flow,) = track(f.packets()).flows
    assert flow["midstream"]
    assert flow["initiator_port"] == 51000 and flow["responder_port"] == 443


def rst_rows(f: Flow) -> np.ndarray:
    return track(f.packets()).rsts


def test_refused_connection():
    f = Flow()
    f.add(0, "c", 1000, 0, TH_SYN)
    f.add(0.1, "s", 0, 1001, TH_RST | TH_ACK)
    t = track(f.packets())
    (r,) = t.rsts
    assert v.PHASE_NAMES[r["phase"]] == "refused"
    assert v.SEQ_CLASS_NAMES[r["seq_class"]] == "no_state"
    assert v.SIDE_NAMES[r["sender_side"]] == "responder" and r["with_ack"]
    assert v.FLOW_STATE_NAMES[t.flows["state"][0]] == "refused"


def test_server_reset_during_request_exact_sequence():
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK | TH_PSH, payload=100)
    f.add(4, "s", 5001, 1101, TH_ACK)
    f.add(504, "s", 5001, 1101, TH_RST | TH_ACK, ttl=64)
    (r,) = rst_rows(f)
    assert v.PHASE_NAMES[r["phase"]] == "request_in_flight"
    assert v.SEQ_CLASS_NAMES[r["seq_class"]] == "exact" and r["seq_offset"] == 0
    assert r["idle_sender_ns"] == 500_000_000 and r["idle_receiver_ns"] == 501_000_000
    assert r["age_ns"] == 504_000_000
    assert r["ttl_known"] and r["ttl_delta"] == 0
    assert not r["continued"]


def test_injected_reset_stands_out():
    """A middlebox RST: another TTL, a sequence number off the window, and the 'sender' goes on."""
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK | TH_PSH, payload=100, ttl=57)
    f.add(3.5, "s", 5001, 1101, TH_ACK, payload=1000, ttl=64)
    f.add(3.6, "s", 5001 + 900_000, 1101, TH_RST, ttl=250)
    f.add(3.7, "s", 6001, 1101, TH_ACK, payload=1000, ttl=64)
    (r,) = rst_rows(f)
    assert v.SEQ_CLASS_NAMES[r["seq_class"]] == "out_of_window"
    assert r["ttl_delta"] == 186
    assert r["continued"]
    assert not r["with_ack"]
    assert v.PHASE_NAMES[r["phase"]] == "response_in_flight"
    assert r["outstanding"].tolist() == [0, 1000]


def test_reset_in_window_but_not_exact_and_after_fin():
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK | TH_FIN)
    f.add(4, "s", 5001, 1002, TH_ACK)
    f.add(5, "c", 1002 + 10, 5001, TH_RST)
    (r,) = rst_rows(f)
    assert v.SEQ_CLASS_NAMES[r["seq_class"]] == "in_window" and r["seq_offset"] == 10
    assert v.PHASE_NAMES[r["phase"]] == "closing"


def test_reset_as_first_packet_has_no_state():
    f = Flow()
    f.add(0, "s", 777, 0, TH_RST)
    (r,) = rst_rows(f)
    assert v.PHASE_NAMES[r["phase"]] == "no_state"
    assert v.SEQ_CLASS_NAMES[r["seq_class"]] == "no_state"


def test_several_resets_in_one_flow_are_all_reported():
    f = handshake(Flow())
    f.add(3, "s", 5001, 1001, TH_RST | TH_ACK)
    f.add(3.1, "s", 5001, 1001, TH_RST | TH_ACK, ip_id=1)
    f.add(3.2, "c", 1001, 5001, TH_RST)
    rows = rst_rows(f)
    assert rows["frame"].tolist() == [4, 5, 6]
    assert rows["rst_index"].tolist() == [1, 2, 3]
    other = handshake(Flow(cport=40001), t=0.5)
    other.add(3.05, "c", 1001, 5001, TH_RST)
    both = np.concatenate((f.packets(), other.packets()))
    both = both[np.argsort(both["ts_ns"], kind="stable")]
    both["frame"] = np.arange(1, both.shape[0] + 1)
    for batch in (1, 2, both.shape[0]):  # RSTs of two flows, counted across batches
        rows = track(both, batch=batch).rsts
        by_flow = {}
        for r in rows:
            by_flow.setdefault(int(r["flow_id"]), []).append(int(r["rst_index"]))
        assert sorted(by_flow.values()) == [[1], [1, 2, 3]], batch


def test_closed_flows_are_evicted_so_state_stays_small():
    rows = []
    for i in range(200):
        f = handshake(Flow(cport=20000 + i), t=i * 1000.0)
        f.add(i * 1000.0 + 3, "c", 1001, 5001, TH_ACK | TH_FIN)
        f.add(i * 1000.0 + 4, "s", 5001, 1002, TH_ACK | TH_FIN)
        f.add(i * 1000.0 + 5, "c", 1002, 5002, TH_ACK)
        rows.append(f.packets())
    packets = np.concatenate(rows)
    packets["frame"] = np.arange(1, packets.shape[0] + 1)
    tracker = FlowTracker(closed_timeout_s=2.0)
    active = []
    for lo in range(0, packets.shape[0], 60):
        tracker.add(packets[lo : lo + 60])
        active.append(int(tracker.in_use.sum()))
    tracker.finish()
    assert max(active) <= 12
    assert tracker.flows.shape[0] == 200 and int(tracker.in_use.sum()) == 0


def test_hash_collisions_are_counted_not_merged_silently(monkeypatch):
    import tracer.flows.tracker as tracker_module

    # Every endpoint pair gets the same table key: only the check word tells them apart.
    monkeypatch.setattr(tracker_module, "_pair_key", lambda a, b: np.zeros(a.shape, np.uint64))
    first = handshake(Flow(cport=1111)).packets()
    second = handshake(Flow(cport=2222)).packets()
    t = FlowTracker()
    t.add(first)
    t.add(second)
    assert t.counts.hash_collisions == 3


REAL = [CAPTURES / "demo-basic.pcapng", CAPTURES / "netns-eth-loss.pcapng",
        CAPTURES / "lo-ipv4-ipv6.pcapng", CORPUS / "zeek-tcp" / "ssh-dups.pcap",
        CORPUS / "zeek-tcp" / "reassembly.pcap"]


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_results_do_not_depend_on_batching(path):
    packets, _, _ = decode_file(path)
    whole = track(packets)
    for batch in (3, 61, 1000):
        cut = track(packets, batch=batch)
        for table in ("segments", "flows", "rsts"):
            a, b = getattr(whole, table), getattr(cut, table)
            a = np.sort(a, order=a.dtype.names[0])
            b = np.sort(b, order=b.dtype.names[0])
            assert a.tobytes() == b.tobytes(), (table, batch)
        ra, rb = np.sort(whole.rtts, order=["frame", "kind", "rtt_ns"]), np.sort(
            cut.rtts, order=["frame", "kind", "rtt_ns"])
        assert ra.tobytes() == rb.tobytes(), ("rtts", batch)


def reused_ports_traffic() -> np.ndarray:
    """One 4-tuple used five times: closed by FINs, by an RST, left open, abandoned after a lone
    SYN, and a last one still open at the end, interleaved with another connection."""
    f, other = Flow(), Flow(cport=40001)
    t = 0.0
    for k, close in enumerate(("fin", "rst", "open", "syn-only", "open")):
        isn_c, isn_s = 1000 + 100_000 * k, 5000 + 70_000 * k
        if close == "syn-only":
            f.add(t, "c", isn_c, 0, TH_SYN)
        else:
            handshake(f, isn_c, isn_s, t)
            f.add(t + 3, "c", isn_c + 1, isn_s + 1, TH_ACK | TH_PSH, payload=100)
            f.add(t + 4, "s", isn_s + 1, isn_c + 101, TH_ACK | TH_PSH, payload=300)
        if close == "fin":
            f.add(t + 5, "c", isn_c + 101, isn_s + 301, TH_ACK | TH_FIN)
            f.add(t + 6, "s", isn_s + 301, isn_c + 102, TH_ACK | TH_FIN)
            f.add(t + 7, "c", isn_c + 102, isn_s + 302, TH_ACK)
        elif close == "rst":
            f.add(t + 5, "s", isn_s + 301, isn_c + 101, TH_RST | TH_ACK)
        other.add(t + 1, "c", 7000 + k, 9000, TH_ACK | TH_PSH, payload=10)
        t += 20
    packets = np.concatenate(f.rows + other.rows)
    packets = packets[np.argsort(packets["ts_ns"], kind="stable")]
    packets["frame"] = np.arange(1, packets.shape[0] + 1)
    return packets


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 13])
def test_port_reuse_does_not_depend_on_batching(batch):
    packets = reused_ports_traffic()
    whole, cut = track(packets), track(packets, batch)
    assert whole.flows.shape[0] == 6  # five on the reused 4-tuple, one other
    assert whole.flows["reused"].sum() == 4
    for table in ("segments", "flows", "rsts"):
        a, b = getattr(whole, table), getattr(cut, table)
        a = np.sort(a, order=a.dtype.names[0])
        b = np.sort(b, order=b.dtype.names[0])
        assert a.tobytes() == b.tobytes(), table


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_flow_table_accounts_for_every_segment(path):
    packets, _, _ = decode_file(path)
    t = track(packets)
    assert int(t.flows["packets"].sum()) == packets.shape[0]
    assert t.counts.flows == t.flows.shape[0]
    rst_frames = packets["frame"][(packets["flags"] & TH_RST) != 0]
    copies = t.segments["frame"][(t.segments["flags"] & v.A_DUPLICATE) != 0]
    expected = np.setdiff1d(rst_frames, copies)
    assert int(t.flows["rst_count"].sum()) == t.rsts.shape[0] == expected.shape[0]
    assert sorted(t.rsts["frame"].tolist()) == expected.tolist()


def test_rtt_samples_past_the_cap_are_a_uniform_reservoir():
    rows = []
    for i in range(300):
        f = handshake(Flow(cport=10000 + i), t=i * 10.0, rtt=1.0 + (i % 3))
        rows.append(f.packets())
    packets = np.concatenate(rows)
    packets["frame"] = np.arange(1, packets.shape[0] + 1)
    capped = FlowTracker(max_rtt_samples=100)
    for lo in range(0, packets.shape[0], 45):
        capped.add(packets[lo : lo + 45])
    capped.finish()
    assert capped.rtt_samples_seen == 600  # two handshake halves per flow
    kept = capped.rtts
    assert kept.shape[0] == 100
    # The responder half takes 1, 2 or 3 ms in equal shares: the reservoir keeps all three.
    responder = kept[kept["kind"] == RTT_KIND_HANDSHAKE_RESPONDER]["rtt_ns"]
    assert set(responder.tolist()) == {1_000_000, 2_000_000, 3_000_000}
    assert len(set(kept["flow_id"].tolist())) > 60  # from all over the capture, not the start
    assert kept["flow_id"].max() > 200


@pytest.mark.parametrize("quiet_ms, phase", [(10, "response_in_flight"), (5000, "established_idle")])
def test_responder_reset_soon_after_sending_aborts_its_response(quiet_ms, phase):
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK | TH_PSH, payload=100)
    f.add(4, "s", 5001, 1101, TH_ACK | TH_PSH, payload=500)
    f.add(5, "c", 1101, 5501, TH_ACK)  # everything the server sent is acknowledged
    f.add(4 + quiet_ms, "s", 5501, 1101, TH_RST | TH_ACK)
    (r,) = rst_rows(f)
    assert v.PHASE_NAMES[r["phase"]] == phase


def test_idle_timeout_finishes_a_quiet_flow_between_batches():
    f = handshake(Flow())
    f.add(3, "c", 1001, 5001, TH_ACK | TH_PSH, payload=10)
    f.add(5_000, "c", 1011, 5001, TH_ACK | TH_PSH, payload=10)  # 5 s of quiet
    f.add(5_001, "s", 5001, 1021, TH_ACK)
    packets = f.packets()
    kept = track(packets, batch=1)
    assert kept.flows.shape[0] == 1
    cut = track(packets, batch=1, idle_timeout_s=1.0)
    assert cut.flows.shape[0] == 2
    assert cut.flows["midstream"].tolist() == [False, True]

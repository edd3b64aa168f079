"""The flow oracle (tests/flow_oracle.py) and the lossy-link fixture (tests/netns.py) check
themselves.

Ground truth that is not tshark's own -T fields output:
- captures with known loss: captures/netns-eth-loss.pcapng (a bridge dropped server -> client
  packets only) and a live `loss_link` run, where the nft rule's counter and a capture on each
  side of the bridge say exactly which packets were lost;
- edits of a clean capture: one segment deleted (a gap tshark must see exactly there) or
  duplicated (a retransmission exactly there);
- frame timestamps, for ack_rtt and the iRTT;
- tshark's display filters (a different code path from -T fields) for the flag counts;
- crafted captures for the quirks the oracle's module notes claim (port reuse, mid-stream
  starts, ACK flag off).
The live tests need root (ip netns, nft, dumpcap in a namespace); CI runs as root.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CAPTURES, CORPUS, bundled_captures, corpus_captures
from flow_oracle import (
    FLAG_FIELDS,
    FLOW_PREFS,
    WSCALE_NOT_SHOWN,
    conversations_from_rows,
    direction_mask,
    resent_mask,
    tshark_conversations,
    tshark_flow_analysis,
)
from netns import BulkResult, bulk_transfer, loss_link, our_namespaces
from oracle import ORACLE_PREFS, TCP_DISPLAY_FILTER, tshark_packets
from pcaputil import pcap_record_ends, write_pcap

LOSS_CAPTURE = CAPTURES / "netns-eth-loss.pcapng"
LOSS_CAPTURE_SERVER_PORT = 23080  # make_basic_captures.sh drops only what this port sends
CLEAN_CAPTURE = CAPTURES / "lo-ipv4.pcap"  # loopback: nothing lost, nothing reordered
FAST_RETRANSMIT = CORPUS / "zeek-tcp" / "retransmit-fast009.pcap"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ip netns, nft, dumpcap")


def _rows_by_frame(rows: np.ndarray) -> dict[int, np.void]:
    return {int(row["frame"]): row for row in rows}


# ---------------------------------------------------------------- recorded captures


def test_real_loss_capture_shows_losses_where_the_bridge_dropped() -> None:
    rows = tshark_flow_analysis(LOSS_CAPTURE)
    from_server = rows["sport"] == LOSS_CAPTURE_SERVER_PORT
    assert rows["retransmission"].sum() > 10
    assert rows["fast_retransmission"].sum() > 0
    assert rows["duplicate_ack"].sum() > 0
    # Captured at the client, downstream of the drops: loss shows as gaps in what the server
    # sent, and only there (the client's own packets were all captured on their way out).
    assert rows["lost_segment"].sum() > 10
    assert not (rows["lost_segment"] & ~from_server).any()
    # Every byte the client ACKed passed this capture point first: no ACK of unseen data.
    assert rows["ack_lost_segment"].sum() == 0
    # The client answers gaps with duplicate ACKs: those go the other way.
    assert not (rows["duplicate_ack"] & from_server).any()


def test_clean_capture_has_no_loss_flags() -> None:
    rows = tshark_flow_analysis(CLEAN_CAPTURE)
    for name in ("retransmission", "out_of_order", "lost_segment", "ack_lost_segment",
                 "duplicate_ack", "reused_ports"):
        assert not rows[name].any(), name


def test_fast_retransmission_follows_duplicate_acks() -> None:
    rows = tshark_flow_analysis(FAST_RETRANSMIT)
    fast = rows[rows["fast_retransmission"]]
    assert len(fast) == 1
    retx = fast[0]
    assert retx["retransmission"]  # tshark adds the generic flag to a fast retransmission
    assert retx["payload_len"] > 0
    peer = (rows["sport"] == retx["dport"]) & (rows["frame"] < retx["frame"])
    dupacks = rows[peer & rows["duplicate_ack"]]
    assert len(dupacks) >= 2
    # The duplicate ACKs ask for exactly the bytes the fast retransmission carries.
    assert (dupacks["ack_rel"] == retx["seq_rel"]).all()
    assert list(dupacks["duplicate_ack_num"]) == list(range(1, len(dupacks) + 1))
    original = _rows_by_frame(rows)[int(dupacks[0]["duplicate_ack_frame"])]
    assert original["ack_rel"] == retx["seq_rel"] and not original["duplicate_ack"]


@pytest.mark.parametrize("path", [LOSS_CAPTURE, FAST_RETRANSMIT, CAPTURES / "demo-basic.pcapng"],
                         ids=lambda p: p.name)
def test_ack_rtt_is_the_time_since_the_acked_frame(path: Path) -> None:
    rows = tshark_flow_analysis(path)
    by_frame = _rows_by_frame(rows)
    acking = rows[rows["acks_frame"] > 0]
    assert len(acking) > 0
    for row in acking:
        acked = by_frame[int(row["acks_frame"])]
        assert row["ack_rtt_ns"] == row["ts_ns"] - acked["ts_ns"], int(row["frame"])
        assert acked["stream"] == row["stream"] and acked["sport"] == row["dport"]
        assert row["tcp_flags"] & 0x10  # only an ACK acks
        assert (row["ack_rel"] - acked["nxtseq"]) % 2**32 < 2**31  # and it covers the segment

    # iRTT: from the SYN to the third packet of the handshake, shown on that packet, never
    # before, and the same wherever shown after it (not on every frame: see flow_oracle).
    checked = 0
    for stream in np.unique(rows["stream"]):
        flow = rows[rows["stream"] == stream]
        if len(flow) < 3 or [int(f) & 0x12 for f in flow["tcp_flags"][:3]] != [0x02, 0x12, 0x10]:
            continue
        expected = flow["ts_ns"][2] - flow["ts_ns"][0]
        later = flow["initial_rtt_ns"][2:]
        assert (flow["initial_rtt_ns"][:2] == -1).all()
        assert later[0] == expected
        assert (later[later != -1] == expected).all()
        checked += 1
    assert checked > 0


def _display_filter_counts(path: Path, filters: list[str]) -> list[int]:
    """Frames matching each display filter, by tshark's io,stat tap (not -T fields)."""
    argv = ["tshark", "-n", "-r", os.fspath(path)]
    for pref in (*ORACLE_PREFS, *FLOW_PREFS):
        argv += ["-o", pref]
    argv += ["-q", "-z", "io,stat,0," + ",".join(filters)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    row = next(line for line in out.splitlines() if "<>" in line)
    numbers = [int(cell) for cell in row.split("|")[2:] if cell.strip()]
    return numbers[0::2]  # each filter has a Frames and a Bytes column


@pytest.mark.parametrize("path", [LOSS_CAPTURE, CORPUS / "zeek-tcp" / "reassembly.pcap",
                                  CAPTURES / "synth-tcp-options.pcap"], ids=lambda p: p.name)
def test_flag_counts_match_display_filters(path: Path) -> None:
    rows = tshark_flow_analysis(path)
    filters = [f"tcp.analysis.{name} && {TCP_DISPLAY_FILTER}" for name in FLAG_FIELDS]
    filters.append(TCP_DISPLAY_FILTER)
    counts = _display_filter_counts(path, filters)
    ours = [int(rows[name].sum()) for name in FLAG_FIELDS] + [len(rows)]
    assert dict(zip([*FLAG_FIELDS, "rows"], ours, strict=True)) == dict(
        zip([*FLAG_FIELDS, "rows"], counts, strict=True))


@pytest.mark.parametrize("path", bundled_captures() + corpus_captures(), ids=lambda p: p.name)
def test_oracle_invariants(path: Path) -> None:
    rows = tshark_flow_analysis(path)
    assert (np.diff(rows["frame"]) > 0).all()
    assert (rows["stream"] >= 0).all()
    assert not (rows["fast_retransmission"] & ~rows["retransmission"]).any()
    assert not (rows["spurious_retransmission"] & ~rows["retransmission"]).any()
    assert ((rows["duplicate_ack_num"] > 0) == rows["duplicate_ack"]).all()
    dup = rows[rows["duplicate_ack"]]
    assert ((dup["duplicate_ack_frame"] > 0) & (dup["duplicate_ack_frame"] < dup["frame"])).all()
    acking = rows[rows["acks_frame"] > 0]
    assert (acking["acks_frame"] < acking["frame"]).all()
    timed = rows["ts_ns"] != 0  # pcapng Simple Packet Blocks carry no time: no ack_rtt there
    assert ((rows["acks_frame"] > 0) == (rows["ack_rtt_ns"] >= 0))[timed].all()
    factor = rows["window_size_scaling_factor"]
    assert np.isin(factor[factor < 0], [-1, -2, WSCALE_NOT_SHOWN]).all()
    assert ((factor[factor > 0] & (factor[factor > 0] - 1)) == 0).all()  # a power of two
    scaled = np.where(factor > 0, rows["window_size_value"] * np.maximum(factor, 1),
                      rows["window_size_value"])
    assert (rows["window_size"] == scaled).all()
    syn_only = (rows["tcp_flags"] & 0x12) == 0x02
    assert (factor[(rows["tcp_flags"] & 0x02) != 0] == WSCALE_NOT_SHOWN).all()
    assert (rows["seq_rel"][syn_only & ~rows["retransmission"]] == 0).all()
    conversations = conversations_from_rows(rows)
    assert sum(c.frames for c in conversations.values()) == len(rows)
    assert sorted(conversations) == sorted(np.unique(rows["stream"]).tolist())


# ---------------------------------------------------------------- edited clean capture


def _records(path: Path) -> tuple[bytes, list[tuple[int, int]]]:
    data = path.read_bytes()
    ends = pcap_record_ends(data)
    starts = [24, *ends[:-1]]
    return data, list(zip(starts, ends, strict=True))


def _gap_candidate(rows: np.ndarray) -> tuple[int, int, int]:
    """(data frame X, the peer's ACK of exactly X, X's side's next frame), middle candidate."""
    found = []
    for x in rows[rows["payload_len"] > 0]:
        later = rows[(rows["stream"] == x["stream"]) & (rows["frame"] > x["frame"])]
        if len(later) < 2:
            continue
        ack = later[0]
        same_side = later[later["sport"] == x["sport"]]
        if (ack["sport"] == x["dport"] and ack["acks_frame"] == x["frame"]
                and ack["ack_rel"] == x["nxtseq"] and len(same_side)):
            found.append((int(x["frame"]), int(ack["frame"]), int(same_side[0]["frame"])))
    assert found, "no segment followed by its own ACK"
    return found[len(found) // 2]


def test_deleted_segment_shows_as_a_gap(tmp_path: Path) -> None:
    original = tshark_flow_analysis(CLEAN_CAPTURE)
    deleted, ack, next_same_side = _gap_candidate(original)
    data, records = _records(CLEAN_CAPTURE)
    start, end = records[deleted - 1]
    edited = tmp_path / "deleted.pcap"
    edited.write_bytes(data[:start] + data[end:])

    rows = _rows_by_frame(tshark_flow_analysis(edited))
    # Frames after the deleted one move up by one.
    assert rows[ack - 1]["ack_lost_segment"]  # the peer ACKs bytes this capture never had
    assert rows[next_same_side - 1]["lost_segment"]  # the next segment starts past a hole
    assert sum(bool(r["lost_segment"]) for r in rows.values()) == 1


def test_duplicated_segment_is_a_retransmission(tmp_path: Path) -> None:
    original = tshark_flow_analysis(CLEAN_CAPTURE)
    copied, _, _ = _gap_candidate(original)
    data, records = _records(CLEAN_CAPTURE)
    start, end = records[copied - 1]
    edited = tmp_path / "duplicated.pcap"
    edited.write_bytes(data[:end] + data[start:end] + data[end:])

    rows = tshark_flow_analysis(edited)
    by_frame = _rows_by_frame(rows)
    first, copy = by_frame[copied], by_frame[copied + 1]
    assert not first["retransmission"]
    # It ends where the highest sequence number already is (so not out_of_order) and is not
    # ACKed yet (so not spurious): a plain retransmission.
    assert copy["retransmission"] and not copy["out_of_order"]
    assert not copy["spurious_retransmission"] and not copy["fast_retransmission"]
    assert (copy["stream"], copy["seq_rel"]) == (first["stream"], first["seq_rel"])
    assert rows["retransmission"].sum() == 1


# ---------------------------------------------------------------- crafted captures

SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10
CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
CLIENT_PORT, SERVER_PORT = 40000, 80


def _frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
           payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq % 2**32, ack % 2**32, 5 << 4, flags,
                      1000, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst)
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + tcp


def _c2s(seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return _frame(CLIENT, SERVER, CLIENT_PORT, SERVER_PORT, seq, ack, flags, payload)


def _s2c(seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return _frame(SERVER, CLIENT, SERVER_PORT, CLIENT_PORT, seq, ack, flags, payload)


def _connection(isn_c: int, isn_s: int, ending: str) -> list[bytes]:
    """Handshake, 100 bytes from the client, the server's ACK, then the ending."""
    after = isn_c + 101
    frames = [_c2s(isn_c, 0, SYN), _s2c(isn_s, isn_c + 1, SYN | ACK),
              _c2s(isn_c + 1, isn_s + 1, ACK), _c2s(isn_c + 1, isn_s + 1, ACK | PSH, b"x" * 100),
              _s2c(isn_s + 1, after, ACK)]
    if ending == "fin":
        frames += [_c2s(after, isn_s + 1, FIN | ACK), _s2c(isn_s + 1, after + 1, FIN | ACK),
                   _c2s(after + 1, isn_s + 2, ACK)]
    elif ending == "rst":
        frames += [_c2s(after, 0, RST)]
    return frames


@pytest.mark.parametrize("ending", ["fin", "rst", "open", "syn_only"])
def test_new_isn_on_the_same_ports_is_a_new_stream(tmp_path: Path, ending: str) -> None:
    first = _connection(1000, 5000, ending) if ending != "syn_only" else [_c2s(1000, 0, SYN)]
    path = write_pcap(tmp_path / f"reuse-{ending}.pcap", first + _connection(900_000, 7000, "fin"))
    rows = tshark_flow_analysis(path)
    second_syn = len(first)  # index of the second connection's SYN
    assert list(rows["stream"]) == [0] * len(first) + [1] * (len(rows) - len(first))
    assert list(np.flatnonzero(rows["reused_ports"])) == [second_syn]
    assert rows["seq_rel"][second_syn] == 0
    assert not rows["retransmission"].any()

    conversations = tshark_conversations(path)
    assert [c.first_frame for c in conversations.values()] == [1, second_syn + 1]
    assert [c.frames for c in conversations.values()] == [len(first), len(rows) - len(first)]
    assert {(c.src, c.sport, c.dst, c.dport) for c in conversations.values()} == {
        ("10.0.0.1", CLIENT_PORT, "10.0.0.2", SERVER_PORT)}

    # The split does not depend on sequence analysis; only the flag does.
    plain = tshark_flow_analysis(path, ["tcp.analyze_sequence_numbers:FALSE"])
    assert list(plain["stream"]) == list(rows["stream"])
    assert not plain["reused_ports"].any()


def test_synack_with_another_isn_is_flagged_but_not_split() -> None:
    rows = tshark_flow_analysis(CORPUS / "zeek-tcp" / "rst-inject-rae.pcap")
    assert (rows["stream"] == 0).all()
    flagged = rows[rows["reused_ports"]]
    assert len(flagged) == 1 and flagged[0]["tcp_flags"] & 0x12 == 0x12
    assert flagged[0]["seq_rel"] == 0  # the SYN/ACK re-bases its direction


def test_same_isn_again_is_a_retransmission(tmp_path: Path) -> None:
    frames = _connection(1000, 5000, "fin")
    path = write_pcap(tmp_path / "same-isn.pcap", frames + frames)
    rows = tshark_flow_analysis(path)
    assert (rows["stream"] == 0).all() and not rows["reused_ports"].any()
    again = rows[len(frames):]
    assert again["retransmission"][0]  # the repeated SYN
    assert again["retransmission"][again["payload_len"] > 0].all()


def test_first_segment_mid_stream(tmp_path: Path) -> None:
    frames = [_s2c(5001, 1101, ACK, b"z" * 50), _c2s(1101, 5051, ACK),
              _c2s(1101, 5051, ACK | PSH, b"q" * 10), _s2c(5051, 1111, ACK)]
    rows = tshark_flow_analysis(write_pcap(tmp_path / "mid.pcap", frames))
    assert list(rows["seq_rel"]) == [1, 1, 1, 51]  # base = first seq - 1, each direction
    assert list(rows["ack_rel"]) == [1, 51, 51, 11]
    assert list(rows["nxtseq"]) == [51, 1, 11, 51]
    assert not any(rows[name].any() for name in FLAG_FIELDS)
    assert (rows["window_size_scaling_factor"] == -1).all()  # no SYN: scale unknown
    assert (rows["window_size"] == rows["window_size_value"]).all()
    assert list(rows["acks_frame"]) == [0, 1, 0, 3]


def test_first_ack_sets_the_other_sides_base(tmp_path: Path) -> None:
    frames = [_c2s(1101, 5001, ACK), _s2c(4001, 1101, ACK, b"z" * 50)]
    rows = tshark_flow_analysis(write_pcap(tmp_path / "ack-first.pcap", frames))
    assert rows["seq_rel"][1] == (4001 - 5000) % 2**32  # server base = first ack - 1
    assert rows["retransmission"][1] and rows["spurious_retransmission"][1]


def test_ack_field_without_ack_flag_is_raw(tmp_path: Path) -> None:
    frames = _connection(1000, 5000, "open") + [_c2s(1101, 5006, RST)]
    rows = tshark_flow_analysis(write_pcap(tmp_path / "rst.pcap", frames))
    assert rows["ack_rel"][-1] == 5006 == rows["ack_raw"][-1]
    assert rows["ack_rel"][0] == 0  # the SYN's zero ack field, shown as is
    assert rows["ack_rel"][1] == 1  # ACK flag set: relative


# ---------------------------------------------------------------- live lossy link

LIVE_PORT = 23095
LIVE_DROP_PERCENT = 5
LIVE_BYTES = 2_000_000
# The re-sent fraction of the sender's data segments (resent_mask at the sender's capture).
# Each transmission is dropped with p = 0.05 and every dropped data segment must be sent again,
# so the fraction is the drop rate plus whatever TCP re-sends without need. Over ~1450
# segments the drops are Binomial(1450, 0.05): 72 +- 8.3, i.e. 5 % +- 0.57 points. 2.5 % is
# more than 4 sigma below; 8.5 % leaves 3 sigma of drops plus ~2 points (30 segments) of
# needless re-sends (a tail-loss probe, part of a window after a timeout; the 64 KiB receive
# buffer of bulk_transfer keeps that part small). 40 runs here: 4.0 % .. 5.7 %.
LIVE_RESENT_BAND = (0.025, 0.085)
LIVE_TIME_LIMIT_S = 30.0


def _captured_transfer(link, tmp_path: Path, nbytes: int) -> tuple[BulkResult, Path, Path]:
    sender_pcap, receiver_pcap = tmp_path / "sender.pcapng", tmp_path / "receiver.pcapng"
    bpf = f"tcp port {LIVE_PORT}"
    at_sender = link.capture(link.sender_ns, link.sender_iface, sender_pcap, bpf)
    at_receiver = link.capture(link.capture_ns, link.capture_iface, receiver_pcap, bpf)
    result = bulk_transfer(link, nbytes, port=LIVE_PORT)
    time.sleep(0.3)  # the last FIN/ACKs
    link.stop(at_sender)
    link.stop(at_receiver)
    return result, sender_pcap, receiver_pcap


@needs_root
@pytest.mark.netns
@pytest.mark.slow
def test_live_loss_link_loses_what_it_says(tmp_path: Path) -> None:
    started = time.monotonic()
    with loss_link(LIVE_DROP_PERCENT) as link:
        names = link.namespaces
        assert set(names) <= set(our_namespaces())
        result, sender_pcap, receiver_pcap = _captured_transfer(link, tmp_path, LIVE_BYTES)
        drops = link.dropped_packets()
    elapsed = time.monotonic() - started
    assert not set(names) & set(our_namespaces())
    assert result.received == result.acknowledged == LIVE_BYTES

    sent = tshark_flow_analysis(sender_pcap)
    got = tshark_flow_analysis(receiver_pcap)
    forward_sent = sent[direction_mask(sent, link.sender_addr, link.receiver_addr)]
    forward_got = got[direction_mask(got, link.sender_addr, link.receiver_addr)]
    assert forward_sent["tcp_flags"][0] == SYN  # the capture was ready before the connect

    # The bridge is the only place packets vanish, and only the dropped ones vanish, in order.
    assert drops == len(forward_sent) - len(forward_got)
    sent_ids = tshark_packets(sender_pcap)
    got_ids = tshark_packets(receiver_pcap)
    sent_ids = sent_ids[sent_ids["dport"] == LIVE_PORT]["ip_id"]
    got_ids = got_ids[got_ids["dport"] == LIVE_PORT]["ip_id"]
    position = {int(ip_id): i for i, ip_id in enumerate(sent_ids)}
    assert len(position) == len(sent_ids)  # IP IDs identify packets within this transfer
    assert (np.diff([position[int(ip_id)] for ip_id in got_ids]) > 0).all()
    dropped_data = int((forward_sent["payload_len"] > 0).sum()
                       - (forward_got["payload_len"] > 0).sum())

    data_sent = forward_sent[forward_sent["payload_len"] > 0]
    resent = int(resent_mask(data_sent).sum())
    rate = resent / len(data_sent)
    low, high = LIVE_RESENT_BAND
    assert low <= drops / len(forward_sent) <= high
    assert low <= rate <= high, (resent, len(data_sent), drops)
    assert resent >= dropped_data  # every lost segment had to be sent again
    # At the sender nothing is missing; at the receiver every gap is at least one drop.
    assert not sent["lost_segment"].any()
    gaps = int(forward_got["lost_segment"].sum())
    assert 0 < gaps <= dropped_data
    assert not got["lost_segment"][~direction_mask(got, link.sender_addr,
                                                   link.receiver_addr)].any()
    assert elapsed < LIVE_TIME_LIMIT_S
    print(f"\nlive 5 % link: {drops} drops of {len(forward_sent)} packets "
          f"({drops / len(forward_sent):.2%}), re-sent {resent}/{len(data_sent)} data segments "
          f"({rate:.2%}; retransmission {int(data_sent['retransmission'].sum())}, out_of_order "
          f"{int(data_sent['out_of_order'].sum())}), {gaps} gaps at the receiver, transfer "
          f"{result.seconds:.2f} s, test {elapsed:.2f} s")


@needs_root
@pytest.mark.netns
def test_live_lossless_link_ipv6_reverse_direction(tmp_path: Path) -> None:
    with loss_link(0, direction="b_to_a", ipv6=True) as link:
        assert link.sender_ns == link.ns_b and link.capture_ns == link.ns_a
        result, sender_pcap, receiver_pcap = _captured_transfer(link, tmp_path, 300_000)
        drops = link.dropped_packets()
    assert result.received == 300_000 and drops == 0
    for path in (sender_pcap, receiver_pcap):
        rows = tshark_flow_analysis(path)
        assert (rows["ip_version"] == 6).all()
        for name in ("retransmission", "out_of_order", "lost_segment", "ack_lost_segment"):
            assert not rows[name].any(), (path.name, name)
        conversations = list(tshark_conversations(path).values())
        assert len(conversations) == 1
        assert (conversations[0].src, conversations[0].dst, conversations[0].dport) == (
            link.sender_addr, link.receiver_addr, LIVE_PORT)


@needs_root
@pytest.mark.netns
def test_loss_link_cleans_up_after_an_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), loss_link(50, direction="both") as link:
        names = link.namespaces
        sleeper = link.run_in(link.ns_a, ["sleep", "60"])
        dumpcap = link.capture(link.ns_b, link.iface_b, tmp_path / "x.pcapng", "tcp")
        with pytest.raises(ValueError):
            link.run_in("not-one-of-ours", ["true"])
        raise RuntimeError("boom")
    assert sleeper.poll() is not None and dumpcap.poll() is not None
    assert not set(names) & set(our_namespaces())
    assert not os.path.exists(link.workdir)

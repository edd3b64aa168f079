"""The closed vocabulary of the flow stage, used the same way by every output.

Like Zeek's `conn_state`, every label here is a fixed, documented string; tables store their
index (a small integer) and outputs print the string. Tests and later stages refer to the names.

Per-segment analysis flags (a bitmask per TCP segment, after Wireshark's tcp.analysis.*):
"""

from __future__ import annotations

# -- per-segment analysis flags (bit values of `SEGMENT_FLAGS`) ---------------------------------
A_RETRANSMISSION = 1 << 0  # data (or SYN/FIN) below the sender's highest sequence seen
A_FAST_RETRANSMISSION = 1 << 1  # ... answering >= 2 duplicate ACKs within 20 ms
A_SPURIOUS_RETRANSMISSION = 1 << 2  # ... of data the receiver had already acknowledged
A_OUT_OF_ORDER = 1 << 3  # ... arriving sooner after the previous segment than one RTT
A_LOST_SEGMENT = 1 << 4  # a gap before this segment: data lost before the capture point
A_ACK_LOST_SEGMENT = 1 << 5  # acknowledges data the capture never saw (missed by the capture)
A_DUPLICATE_ACK = 1 << 6  # same ACK, window and sequence as the previous segment, no data
A_ZERO_WINDOW = 1 << 7  # advertises a zero receive window
A_WINDOW_FULL = 1 << 8  # fills the receiver's advertised window exactly
A_KEEP_ALIVE = 1 << 9  # one byte (or none) just below the next sequence number
A_DUPLICATE = 1 << 10  # the same packet captured twice (not a retransmission)
A_REUSED_PORTS = 1 << 11  # a SYN that starts a new flow on a 4-tuple seen before

SEGMENT_FLAG_NAMES = (
    "retransmission",
    "fast_retransmission",
    "spurious_retransmission",
    "out_of_order",
    "lost_segment",
    "ack_lost_segment",
    "duplicate_ack",
    "zero_window",
    "window_full",
    "keep_alive",
    "duplicate",
    "reused_ports",
)

# -- direction ---------------------------------------------------------------------------------
FROM_INITIATOR = 0  # the SYN sender (or, midstream, the ephemeral-port side)
FROM_RESPONDER = 1
SIDE_NAMES = ("initiator", "responder")

# -- how a flow ended (one per flow) -----------------------------------------------------------
FLOW_OPEN = 0  # still open at the end of the capture (or when evicted as idle)
FLOW_CLOSED_FIN = 1  # FIN from both sides, no RST
FLOW_CLOSED_RST = 2  # ended by an RST after it was established (or midstream)
FLOW_REFUSED = 3  # the SYN was answered by an RST
FLOW_HALF_CLOSED = 4  # FIN from one side only, no RST
FLOW_HANDSHAKE_ONLY = 5  # SYN (and maybe SYN/ACK) seen, never established, no RST
FLOW_STATE_NAMES = ("open", "closed_fin", "closed_rst", "refused", "half_closed", "handshake_only")

# -- RST sequence number against the receiver (RFC 5961 section 3) ------------------------------
SEQ_EXACT = 0  # equals the receiver's next expected sequence number (RCV.NXT)
SEQ_IN_WINDOW = 1  # inside the receiver's window but not exact (RFC 5961: challenge ACK)
SEQ_OUT_OF_WINDOW = 2  # outside the window: a conforming receiver ignores it
SEQ_NO_STATE = 3  # the flow was never seen established: nothing to compare with
SEQ_CLASS_NAMES = ("exact", "in_window", "out_of_window", "no_state")

# -- flow phase at the moment of an RST ---------------------------------------------------------
PHASE_REFUSED = 0  # the responder answered a SYN with RST (port closed, rejected)
PHASE_HANDSHAKE = 1  # before the three-way handshake completed
PHASE_ESTABLISHED_IDLE = 2  # established, nothing unanswered or unacknowledged
PHASE_REQUEST_IN_FLIGHT = 3  # the initiator sent data last and no answer came yet
PHASE_RESPONSE_IN_FLIGHT = 4  # the responder sent data last: some unacknowledged, or the
# responder itself resets less than 1 s after sending
PHASE_CLOSING = 5  # after a FIN from either side
PHASE_NO_STATE = 6  # the RST is the first packet of its flow in the capture
PHASE_NAMES = (
    "refused",
    "handshake",
    "established_idle",
    "request_in_flight",
    "response_in_flight",
    "closing",
    "no_state",
)


def flag_names(mask: int) -> list[str]:
    return [name for bit, name in enumerate(SEGMENT_FLAG_NAMES) if mask & (1 << bit)]

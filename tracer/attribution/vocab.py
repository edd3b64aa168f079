"""The closed vocabulary of RST attribution, used the same way by every output.

Like tracer.flows.vocab (and Zeek's conn_state), each label is a fixed string; arrays store
its index and outputs print the string. Where a label corresponds to one of HAProxy's own
termination states (configuration manual section 8.5, "session state at disconnection"), the
table `REASON_TERMINATION` says which; the first letter is who or what ended the stream (C
client abort, S server abort or refusal, P proxy policy, R resource limit, c client-side
timeout, s server-side timeout, - normal), the second the phase (R request, Q queue, C
connect, H response headers, D data, - normal completion).

Definitions every output uses:

- **leg**: `frontend` (client <-> HAProxy), `backend` (HAProxy <-> server), `unknown`.
- **sender**: the host that put the RST on the wire: `client`, `haproxy`, `server`, or
  `network` (a middlebox forging one of the endpoints' addresses), `unknown`.
- **cause** (root cause): the party whose action or policy started the chain that ended in
  this RST. HAProxy's own policies (reject, deny, silent-drop, connect timeout, limits) are
  `haproxy`; a timeout HAProxy enforces on an idle party is that party's (a client that sends
  nothing until `timeout http-request` is the client's doing; a server that does not answer
  within `timeout server` is the server's); an RST HAProxy sends on one leg because of an abort
  on the other leg carries the cause of that abort; an RST a middlebox forged is `network`.
- **routine**: a close HAProxy makes by design on an exchange where nothing failed (the RST
  ending a server connection after a complete response, `option nolinger` closes, health
  check closes). Routine RSTs are reported, never counted as faults.
- **origin**: `originated` (this RST starts the chain on its leg) or `propagated` (HAProxy
  passed on an event of the other leg; `caused_by_frame` names that event's frame). The reason
  of a propagated RST names the event at the root of the chain (a client abort passed on to the
  server is `client_abort`, origin `propagated`).
"""

from __future__ import annotations

LEG_UNKNOWN, LEG_FRONTEND, LEG_BACKEND = 0, 1, 2
LEG_NAMES = ("unknown", "frontend", "backend")

ROLE_UNKNOWN, ROLE_CLIENT, ROLE_HAPROXY, ROLE_SERVER, ROLE_NETWORK = range(5)
ROLE_NAMES = ("unknown", "client", "haproxy", "server", "network")

ORIGIN_ORIGINATED, ORIGIN_PROPAGATED = 0, 1
ORIGIN_NAMES = ("originated", "propagated")

# -- reasons (index = code stored in arrays) -------------------------------------------------
REASONS: tuple[tuple[str, str], ...] = (
    ("unknown", "no rule explains this RST"),
    ("client_abort", "the client reset its connection while a request or response was under way"),
    ("client_close", "the client reset a connection on which nothing was outstanding"),
    ("server_abort", "the server reset its connection before or during its response"),
    ("server_refused", "the server (its kernel) answered HAProxy's SYN with RST: port closed"),
    ("server_close", "the server reset a connection on which nothing was outstanding"),
    ("haproxy_reject", "`tcp-request connection|content reject`: HAProxy resets the accepted "
                       "connection at once, before any data; never logged at connection level"),
    ("haproxy_deny", "HAProxy refused the request itself (`http-request deny|reject`, a request "
                     "too large for its buffers: 403/413/400) and closed while the client was "
                     "still sending: its kernel resets the unread data"),
    ("haproxy_silent_drop", "`silent-drop`: HAProxy could not drop the connection silently "
                            "(no CAP_NET_ADMIN) and sent an RST with IP TTL 1 instead"),
    ("haproxy_refused", "the frontend port answered the client's SYN with RST (not listening)"),
    ("haproxy_timeout_client", "`timeout client` expired on an idle client"),
    ("haproxy_timeout_http_request", "`timeout http-request` expired before a complete request"),
    ("haproxy_timeout_server", "`timeout server` expired waiting for the server"),
    ("haproxy_timeout_connect", "`timeout connect` expired on a connection attempt: the RST is "
                                "HAProxy's kernel answering the server's late SYN/ACK (an "
                                "attempt nothing answers is abandoned without any RST)"),
    ("haproxy_nolinger", "`option nolinger`: HAProxy closes with RST instead of FIN"),
    ("haproxy_server_close", "HAProxy closed the server connection after a complete exchange; "
                             "closing before the server's FIN it resets (no TIME_WAIT)"),
    ("haproxy_check", "a health check connection closed by HAProxy"),
    ("haproxy_overload", "the frontend was full (`maxconn`): its kernel reset a connection it "
                         "could not accept (only with net.ipv4.tcp_abort_on_overflow = 1; by "
                         "default the SYNs are dropped, and a `timeout queue` ends with a 503 "
                         "and FIN: neither leaves an RST)"),
    ("haproxy_abort", "HAProxy reset the connection for a reason not seen on the wire"),
    ("middlebox_injected", "the RST came from the network, not from the host whose address it "
                           "carries (TTL/hop count, timing or sequence give it away)"),
)
REASON_NAMES = tuple(name for name, _ in REASONS)
REASON = {name: code for code, name in enumerate(REASON_NAMES)}

CAUSE_NAMES = ("unknown", "client", "haproxy", "server", "network")
CAUSE = {name: code for code, name in enumerate(CAUSE_NAMES)}

# HAProxy termination state (first two letters) a reason corresponds to; a callable choice
# (phase-dependent) is made in tracer.attribution.rst. Empty: the stream is not logged or has
# no state of its own (routine closes are "--").
REASON_TERMINATION = {
    "client_abort": "CD",  # CR when no request was complete (HTTP)
    "server_abort": "SD",  # SH when no response header came (HTTP)
    "server_refused": "SC",
    "haproxy_reject": "",  # tcp-request connection reject: no log line at all
    "haproxy_deny": "PR",
    "haproxy_silent_drop": "",  # no log line
    "haproxy_timeout_client": "cD",
    "haproxy_timeout_http_request": "cR",
    "haproxy_timeout_server": "sD",  # sH when no response header came (HTTP)
    "haproxy_timeout_connect": "sC",
    "haproxy_overload": "",  # never accepted: no log line
    "haproxy_nolinger": "--",
    "haproxy_server_close": "--",
    "haproxy_check": "",
}

# Evidence tags (each RST carries a list of these with values, e.g. "ttl_below_baseline:-63").
EVIDENCE: dict[str, str] = {
    "ttl_one": "IP TTL / hop limit 1: HAProxy's silent-drop fallback",
    "ttl_mismatch": "TTL differs from the sender's baseline (its other packets)",
    "sender_continued": "the purported sender went on sending after its RST",
    "faster_than_rtt": "the RST came sooner after the peer's packet than the sender's minimum RTT allows",
    "seq_out_of_window": "RST sequence number outside the receiver's window",
    "refused_syn": "RST answering a SYN",
    "no_data_before_rst": "HAProxy reset the accepted connection before sending anything",
    "config_rule": "the HAProxy configuration has a matching rule",
    "quiet_matches_timeout": "the quiet time before HAProxy's close matches a configured timeout",
    "quiet_cluster": "the quiet time before HAProxy's close matches other closes (a timeout peak)",
    "age_matches_timeout": "HAProxy acted first at an age matching `timeout http-request` (it runs from the accept)",
    "age_cluster": "HAProxy acted first at the same age as in other flows (a timeout peak)",
    "peer_leg_event": "the other leg had an event first (its frame and the delay are given)",
    "exchange_complete": "the response was complete and acknowledged when HAProxy reset",
    "client_closed_first": "the client had sent its FIN before HAProxy's RST",
    "request_in_flight": "the request was not answered yet",
    "response_in_flight": "the response was still being sent",
    "not_joined": "no flow on the other leg could be joined",
    "unjoined_backend": "a server connection no client stream explains (health check)",
    "same_flow_followup": "a further RST in a flow already reset: same attribution as the first",
    "server_rst_burst": "fault RSTs on this server's connections in the same second (>= 3)",
    "frontend_at_maxconn": "other connections open on the frontend at the RST (>= its maxconn)",
    "late_synack": "HAProxy reset the server's SYN/ACK, which came this many ms after the SYN",
}

"""Leg joining: which frontend flow (client <-> HAProxy) each backend flow served (pure).

Rules: HAProxy opens a server connection for a stream it accepted earlier and that is still
open: in tcp mode right after the accept, in http mode right after the request (or, with
keep-alive, after a later request). So a backend flow's candidates are the frontend flows
open at its SYN (started before, not finished), allowed by the routing when the config is
known (the frontend's `use_backend`/`default_backend` reach a backend listing the server); among them
the one whose *trigger* (its client's first payload if it came before the SYN, else its
accept) is closest before the SYN wins. The *trigger* is the latest request turn (see
tracer.attribution.timeline) before the SYN, so each request of a keep-alive client stream
can get its own server connection.

Evidence that overrides timing when it is there:
- **the forwarded response**: HAProxy passes a server's first response bytes to its client at
  once (measured in the lab: median 0.06 ms, at most 5.5 ms under 3% loss), so the stream a
  server connection served has a HAProxy->client turn within FORWARD_NS after the server's
  first payload. When some candidate has one, the others are out (a slowloris client, a
  stream HAProxy answered itself, a stream still queued). One client-side turn forwards one
  response: when two server connections claim it, the nearer one before it wins;
- **retries** (with the config's `timeout connect`): HAProxy retries a failed connect at once
  after the connect timeout, or min(1 s, timeout connect) after a refusal; a connection that
  no fresh request nor freed slot explains and opens that long after a failed attempt is its
  retry (`_retries`). Several backend flows may join one frontend flow
(retries, redispatch); a frontend flow HAProxy answered itself or rejected joins none; a
backend flow open while no frontend flow is (health checks) joins none. When several streams
were waiting, the first come is served first (see `_first_come_first_served`); when both a
fresh request and a freed slot just preceded a connection, the nearer of the two explains it.

Vectorized: frontend flows are sorted by start; each backend SYN is placed with searchsorted
and the CANDIDATES nearest earlier starts are scored at once as a (backends x CANDIDATES)
matrix. A join is *ambiguous* when more than one candidate was possible; the join statistics
count them. HAProxy log lines, when given, override the packet join for the streams they name
(tracer.attribution.logs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.attribution import vocab as av

CANDIDATES = 32  # frontend flows considered per backend flow (nearest earlier starts)
QUEUE_GRACE_NS = 10_000_000_000  # how long a stream may wait in a queue (`timeout queue`)
NONE = -1
# HAProxy passes a server's response on to its client as soon as it has it (the headers in
# http mode, the bytes in tcp mode): the client-side turn follows the server-side one by well
# under a millisecond on one host; 20 ms leaves room for a loaded proxy and capture timestamps.
FORWARD_NS = 20_000_000


class TurnIndex:
    """Turns (tracer.attribution.timeline) by (flow row, direction), searchable by time for many
    queries at once. Times are replaced by their rank among all turn times so that (group,
    time) fits one sortable int64 key: group * (turns + 1) + rank."""

    def __init__(self, row: np.ndarray, ts: np.ndarray, direction: np.ndarray) -> None:
        self.ts_sorted = np.sort(ts)
        self.m = np.int64(ts.size + 1)
        group = row.astype(np.int64) * 2 + direction.astype(np.int64)
        key = group * self.m + np.searchsorted(self.ts_sorted, ts, side="left")
        o = np.argsort(key, kind="stable")
        self.key, self.ts = key[o], ts[o]

    @staticmethod
    def empty() -> TurnIndex:
        z = np.zeros(0, np.int64)
        return TurnIndex(z, z, z)

    def _group(self, row: np.ndarray, direction: int) -> np.ndarray:
        return row.astype(np.int64) * 2 + direction

    def latest_at_or_before(self, row: np.ndarray, direction: int, t: np.ndarray) -> np.ndarray:
        """Per query: the latest turn of that flow row and direction at or before t (-1)."""
        if self.key.size == 0:
            return np.full(np.shape(t), -1, np.int64)
        g = self._group(row, direction)
        pos = np.searchsorted(self.key, g * self.m + np.searchsorted(self.ts_sorted, t, side="right")) - 1
        p = np.maximum(pos, 0)
        ok = (pos >= 0) & (self.key[p] // self.m == g)
        return np.where(ok, self.ts[p], -1)

    def first_at_or_after(self, row: np.ndarray, direction: int, t: np.ndarray) -> np.ndarray:
        """Per query: the first turn of that flow row and direction at or after t (-1)."""
        if self.key.size == 0:
            return np.full(np.shape(t), -1, np.int64)
        g = self._group(row, direction)
        pos = np.searchsorted(self.key, g * self.m + np.searchsorted(self.ts_sorted, t, side="left"))
        p = np.minimum(pos, self.key.size - 1)
        ok = (pos < self.key.size) & (self.key[p] // self.m == g)
        return np.where(ok, self.ts[p], -1)


@dataclass
class Join:
    """Rows are indices into the flow table."""

    front_of: np.ndarray  # per flow: the frontend flow row a backend flow served (-1: none)
    candidates: np.ndarray  # per flow: how many frontend flows were possible (backend flows)
    method: np.ndarray  # per flow: 0 none, 1 timing, 2 log, 3 queued stream whose client left,
    # 4 payload (METHOD_PAYLOAD)
    stats: dict = field(default_factory=dict)


def flow_start(flows: np.ndarray) -> np.ndarray:
    return np.where(flows["syn_ts"] >= 0, flows["syn_ts"], flows["first_ts"])


def join_legs(flows: np.ndarray, leg: np.ndarray, first_client_data_ts: np.ndarray,
              route_ok: np.ndarray | None = None, frontend_index: np.ndarray | None = None,
              server_index: np.ndarray | None = None, client_left_ts: np.ndarray | None = None,
              queue_grace_ns: int = QUEUE_GRACE_NS, turns: TurnIndex | None = None,
              response_ts: np.ndarray | None = None, connect_ns: np.ndarray | None = None) -> Join:
    """`first_client_data_ts`: per flow, the initiator's first payload time (-1: none).
    `route_ok[frontend, server]`: the config's routing (None: any); `frontend_index` and
    `server_index` per flow (-1 unknown); `client_left_ts`: when the client closed or reset
    first (-1: it did not)."""
    n = flows.shape[0]
    front_of = np.full(n, NONE, np.int64)
    candidates = np.zeros(n, np.int32)
    method = np.zeros(n, np.uint8)
    fronts = np.flatnonzero(leg == av.LEG_FRONTEND)
    backs = np.flatnonzero(leg == av.LEG_BACKEND)
    start = flow_start(flows)
    if fronts.size and backs.size:
        f_order = fronts[np.argsort(start[fronts], kind="stable")]
        f_start = start[f_order]
        f_last = flows["last_ts"][f_order]
        data = first_client_data_ts[f_order]
        b_start = start[backs]
        top = np.searchsorted(f_start, b_start, side="right") - 1
        k = np.arange(CANDIDATES)
        pos = top[:, None] - k[None, :]
        valid = pos >= 0
        pos = np.maximum(pos, 0)
        alive = valid & (f_last[pos] >= b_start[:, None])
        release_gap = _release_gap(flows, backs, b_start)
        dequeued = release_gap <= RELEASE_WINDOW_NS
        if client_left_ts is not None:
            # a stream whose client left can still be served from a queue, but only by a
            # server connection that opens as another one to the same server closes (HAProxy
            # dequeues when a connection slot frees)
            left = client_left_ts[f_order][pos]
            alive |= (valid & (left >= 0) & (b_start[:, None] <= left + queue_grace_ns)
                      & dequeued[:, None] & (f_last[pos] < b_start[:, None]))
        if route_ok is not None and frontend_index is not None and server_index is not None:
            fe = frontend_index[f_order][pos]
            be = server_index[backs][:, None]
            known = (fe >= 0) & (be >= 0)
            routed = route_ok[np.maximum(fe, 0), np.maximum(be, 0)]
            alive &= ~known | routed
        b_at = np.broadcast_to(b_start[:, None], pos.shape)
        if turns is not None:
            # the latest request (client turn) before the connect: with keep-alive on the
            # client side, each request on the frontend flow gets its own server connection
            trig_data = turns.latest_at_or_before(f_order[pos], 0, b_at)
        else:
            trig_data = data[pos]
        trigger = np.where((trig_data >= 0) & (trig_data <= b_at), trig_data, f_start[pos])
        if turns is not None and response_ts is not None:
            # The server's response is forwarded: the stream it served has a HAProxy turn to
            # its client right after the server's first payload. When some candidate shows
            # it, the others (a slowloris client, a stream HAProxy answered itself, a stream
            # still queued) did not get this response.
            t_s = np.broadcast_to(response_ts[backs][:, None], pos.shape)
            fwd = turns.first_at_or_after(f_order[pos], 1, t_s)
            forwarded = alive & (t_s >= 0) & (fwd >= 0) & (fwd - t_s <= FORWARD_NS)
            # one client-side turn forwards one response: the server turn nearest before it
            # (two slow responses can end together; the stream's own server was the nearer)
            claim = np.flatnonzero(forwarded.ravel())
            if claim.size > 1:
                f_rows = f_order[pos].ravel()[claim]
                t_f = fwd.ravel()[claim]
                gap = t_f - t_s.ravel()[claim]
                o = np.lexsort((gap, t_f, f_rows))
                same = (f_rows[o][1:] == f_rows[o][:-1]) & (t_f[o][1:] == t_f[o][:-1])
                beaten = np.zeros(claim.size, bool)
                beaten[o[1:]] = same & (gap[o][1:] > gap[o][:-1])
                # a claim beaten by a tie-holder keeps losing: carry the group minimum
                flat = forwarded.ravel().copy()
                flat[claim[beaten]] = False
                forwarded = flat.reshape(forwarded.shape)
            alive = np.where(forwarded.any(axis=1)[:, None], forwarded, alive)
        delay = np.where(alive, b_start[:, None] - trigger, np.iinfo(np.int64).max)
        best = np.argmin(delay, axis=1)
        found = alive[np.arange(backs.size), best]
        chosen = f_order[pos[np.arange(backs.size), best]]
        n_cand = alive.sum(axis=1)
        plain = found & (n_cand == 1)
        front_of[backs[plain]] = chosen[plain]
        candidates[backs] = n_cand
        method[backs[found]] = 1
        ambiguous = np.flatnonzero(n_cand > 1)
        if ambiguous.size:
            _first_come_first_served(flows, backs, b_start, f_order, pos, alive, trigger, delay,
                                     ambiguous, front_of, queue_grace_ns, release_gap)
        fresh = np.where(alive, delay, np.iinfo(np.int64).max).min(axis=1)
        if connect_ns is not None:
            _retries(flows, backs, b_start, fresh, release_gap, front_of, method, connect_ns)
    joined = front_of[backs] >= 0
    served = np.unique(front_of[front_of >= 0])
    stats = {
        "frontend_flows": int(fronts.size),
        "backend_flows": int(backs.size),
        "backend_flows_joined": int(joined.sum()),
        "backend_flows_unjoined": int((~joined).sum()),
        "backend_flows_ambiguous": int((candidates[backs] > 1).sum()),
        "frontend_flows_with_backend": int(served.size),
        "join_rate": float(joined.mean()) if backs.size else None,
    }
    return Join(front_of=front_of, candidates=candidates, method=method, stats=stats)


RELEASE_WINDOW_NS = 50_000_000
PROMPT_NS = 50_000_000  # HAProxy connects within this of a request it is not holding back
RETRY_TOLERANCE_NS = 50_000_000  # HAProxy's timers and scheduling around a retry's delay


def _release_gap(flows: np.ndarray, backs: np.ndarray, b_start: np.ndarray) -> np.ndarray:
    """Per backend flow: how long before it opened another connection to the same server
    endpoint ended (ns; a large value when none did within RELEASE_WINDOW_NS)."""
    key = (flows["responder_hi"][backs].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
           ^ flows["responder_lo"][backs].astype(np.uint64)
           ^ (flows["responder_port"][backs].astype(np.uint64) << np.uint64(48)))
    end = flows["last_ts"][backs]
    o = np.lexsort((end, key))
    k_sorted, e_sorted = key[o], end[o]
    lo = np.searchsorted(k_sorted, key, side="left")
    hi = np.searchsorted(k_sorted, key, side="right")
    out = np.full(backs.size, np.iinfo(np.int64).max, np.int64)
    for i in np.flatnonzero(hi - lo > 1).tolist():
        ends = e_sorted[lo[i]:hi[i]]
        a = np.searchsorted(ends, b_start[i] - RELEASE_WINDOW_NS, side="left")
        b = np.searchsorted(ends, b_start[i], side="left")
        if b > a:
            out[i] = b_start[i] - ends[b - 1]
    return out


def _first_come_first_served(flows, backs, b_start, f_order, pos, alive, trigger, delay, ambiguous,
                             front_of, grace_ns, release_gap) -> None:
    """Several client streams were waiting when a server connection opened. A connection that
    opens as another one to the same server closes, or long after any request, is HAProxy
    dequeuing (a server or frontend slot freed): queues are served
    first come, first served, and each request gets one server exchange, so it goes to the
    stream that asked first among those not yet served (a stream whose client left while
    queued still counts: without `option abortonclose` HAProxy serves it). Any other
    connection is a direct connect for the most recent asker. In order of the server
    connections' starts; a loop over ambiguous ones only."""
    answered = flows["payload_bytes"][:, 1] > 0
    served_at = np.full(flows.shape[0], -1, np.int64)
    done = front_of[backs] >= 0
    if done.any():
        b_done, f_done = backs[done], front_of[backs[done]]
        ok = answered[b_done]
        order = np.argsort(-b_start[done][ok], kind="stable")  # earliest last wins
        served_at[f_done[ok][order]] = b_start[done][ok][order]
    for i in ambiguous[np.argsort(b_start[ambiguous], kind="stable")].tolist():
        cand = np.flatnonzero(alive[i])
        rows = f_order[pos[i, cand]]
        t = trigger[i, cand]
        waiting = ((served_at[rows] < 0) | (served_at[rows] >= b_start[i])) & (t >= b_start[i] - grace_ns)
        # a connection right after a request is that request's; one that follows no fresh
        # request (a slot freed: server maxconn, frontend maxconn) serves the longest waiting;
        # when both happened just before, the nearer one explains the connect (HAProxy acts on
        # either within a fraction of a millisecond)
        fresh = delay[i, cand].min()
        prompt = fresh <= PROMPT_NS
        dequeued = release_gap[i] <= RELEASE_WINDOW_NS and release_gap[i] < fresh
        if waiting.any() and (dequeued or not prompt):
            k = cand[waiting][np.argmin(t[waiting])]
        else:
            k = cand[np.argmin(delay[i, cand])]
        f = f_order[pos[i, k]]
        front_of[backs[i]] = f
        if answered[backs[i]] and (served_at[f] < 0 or served_at[f] > b_start[i]):
            served_at[f] = b_start[i]


def _retries(flows, backs, b_start, fresh, release_gap, front_of, method, connect_ns) -> None:
    """HAProxy retries a failed connect on a new connection, to the same server or,
    redispatching, to another: at once when `timeout connect` expired (no SYN/ACK), after
    min(1 s, timeout connect) when the server refused (RST to the SYN). No fresh request
    precedes a retry; a failed attempt does, by exactly that delay. With the config's
    `timeout connect` (per backend flow, -1 unknown), a server connection that neither a fresh
    request (PROMPT_NS) nor a freed slot explains, and that opens that delay after a failed
    attempt not yet followed, is the attempt's retry and serves its stream. Without the
    config the delay is unknown and the timing join stands. A loop over such connections only.
    """
    tc = connect_ns[backs]
    failed = (flows["synack_ts"][backs] < 0) & (flows["payload_bytes"][backs, 1] == 0) & (tc > 0)
    if not failed.any():
        return
    refused = flows["rst_count"][backs, 1] > 0
    # when HAProxy moves on: the connect timeout, or the turn-around after the refusal
    moves_on = np.where(refused, flows["first_rst_ts"][backs, 1] + np.minimum(tc, 1_000_000_000),
                        b_start + tc)
    f_idx = np.flatnonzero(failed)
    f_idx = f_idx[np.argsort(moves_on[f_idx], kind="stable")]
    f_at = moves_on[f_idx]
    followed = np.zeros(f_idx.size, bool)
    lone = (fresh > PROMPT_NS) & (release_gap > RELEASE_WINDOW_NS)
    for i in np.flatnonzero(lone)[np.argsort(b_start[lone], kind="stable")].tolist():
        lo = int(np.searchsorted(f_at, b_start[i] - RETRY_TOLERANCE_NS, side="left"))
        hi = int(np.searchsorted(f_at, b_start[i] + RETRY_TOLERANCE_NS, side="right"))
        for k in range(lo, hi):
            if not followed[k] and front_of[backs[f_idx[k]]] >= 0 and f_idx[k] != i:
                followed[k] = True
                front_of[backs[i]] = front_of[backs[f_idx[k]]]
                method[backs[i]] = 1
                break


def backends_of(front_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of `front_of`: backend rows sorted by their frontend row, with per frontend row
    (dense over all flows) the [start, end) slice into them."""
    n = front_of.shape[0]
    backs = np.flatnonzero(front_of >= 0)
    order = backs[np.argsort(front_of[backs], kind="stable")]
    keys = front_of[order]
    lo = np.searchsorted(keys, np.arange(n), side="left")
    hi = np.searchsorted(keys, np.arange(n), side="right")
    return order, lo, hi


# What a server connection's payload named (tracer.attribution.payload), per flow.
CLAIM_DTYPE = np.dtype([("source", np.int8),  # index into CLAIM_SOURCES, -1: no claim
                        ("hi", np.uint64), ("lo", np.uint64),
                        ("port", np.int32),  # -1: the address only
                        ("proxy_len", np.int32)])  # PROXY protocol header bytes (0: none)
CLAIM_SOURCES = ("proxy_v1", "proxy_v2", "unique_id", "forwarded_for", "real_ip")
METHOD_PAYLOAD = 4


def no_claims(n: int) -> np.ndarray:
    c = np.zeros(n, CLAIM_DTYPE)
    c["source"] = -1
    c["port"] = -1
    return c


def _endpoint_key(hi: np.ndarray, lo: np.ndarray, port: np.ndarray) -> np.ndarray:
    h = hi.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ lo.astype(np.uint64)
    h = (h ^ (h >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    return h ^ port.astype(np.uint64)


def apply_payload_join(flows: np.ndarray, leg: np.ndarray, join: Join, claims: np.ndarray,
                       queue_grace_ns: int = QUEUE_GRACE_NS) -> None:
    """Payload over timing. A backend flow whose first bytes name its client's address and port
    (PROXY protocol, a unique id with %ci:%cp) joins the frontend flow from that address and
    port that was open when it started (the latest started before it; a client that left may
    still be served from a queue for `queue_grace_ns`), whatever timing said. One that names
    the address only (forwarded-for, X-Real-IP) checks timing: a timing join to a flow from
    another address is replaced by the latest-started open frontend flow from the named one.
    Counts into join.stats how many joins payload made, confirmed and contradicted."""
    backs = np.flatnonzero((leg == av.LEG_BACKEND) & (claims["source"] >= 0))
    fronts = np.flatnonzero(leg == av.LEG_FRONTEND)
    stats = join.stats
    by_source = np.bincount(claims["source"][backs].astype(np.int64), minlength=len(CLAIM_SOURCES))
    stats["payload_claims"] = int(backs.size)
    stats["payload_claims_by_source"] = {name: int(by_source[i])
                                         for i, name in enumerate(CLAIM_SOURCES) if by_source[i]}
    for name in ("payload_joined", "payload_confirmed", "payload_contradicted", "payload_unmatched"):
        stats[name] = 0
    if backs.size == 0 or fronts.size == 0:
        return
    start = flow_start(flows)
    b_start = start[backs]
    exact = claims["port"][backs] >= 0
    port = np.where(exact, claims["port"][backs], 0)
    # frontend flows by (client address, port) and by client address, each sorted by start
    f_port = flows["initiator_port"][fronts].astype(np.int64)
    chosen = np.full(backs.size, NONE, np.int64)
    for use_port in (True, False):
        q = np.flatnonzero(exact == use_port)
        if q.size == 0:
            continue
        fk = _endpoint_key(flows["initiator_hi"][fronts], flows["initiator_lo"][fronts],
                           f_port if use_port else np.zeros(fronts.size, np.int64))
        o = np.lexsort((start[fronts], fk))
        fk_s, rows_s = fk[o], fronts[o]
        s_s = start[rows_s]
        qk = _endpoint_key(claims["hi"][backs[q]], claims["lo"][backs[q]],
                           port[q] if use_port else np.zeros(q.size, np.int64))
        # the latest frontend flow of that key started at or before the backend flow
        hi_pos = np.searchsorted(fk_s, qk, side="right")
        lo_pos = np.searchsorted(fk_s, qk, side="left")
        pos = _last_at_or_before(s_s, lo_pos, hi_pos, b_start[q])
        ok = pos >= 0
        cand = np.where(ok, rows_s[np.maximum(pos, 0)], NONE)
        last = flows["last_ts"][np.maximum(cand, 0)]
        open_then = ok & (last + (queue_grace_ns if use_port else 0) >= b_start[q])
        chosen[q] = np.where(open_then, cand, NONE)
    current = join.front_of[backs]
    cur = np.maximum(current, 0)
    same_addr = ((current >= 0) & (flows["initiator_hi"][cur] == claims["hi"][backs])
                 & (flows["initiator_lo"][cur] == claims["lo"][backs]))
    confirmed = np.where(exact, (chosen >= 0) & (current == chosen), same_addr)
    contradicted = (current >= 0) & ~confirmed & (chosen >= 0)
    fresh = (current < 0) & (chosen >= 0) & exact
    take = contradicted | fresh
    join.front_of[backs[take]] = chosen[take]
    join.method[backs[take]] = METHOD_PAYLOAD
    join.candidates[backs[take]] = 1
    stats["payload_joined"] = int(take.sum())
    stats["payload_confirmed"] = int(confirmed.sum())
    stats["payload_contradicted"] = int(contradicted.sum())
    stats["payload_unmatched"] = int((chosen < 0).sum() - (~exact & same_addr & (chosen < 0)).sum())
    all_backs = np.flatnonzero(leg == av.LEG_BACKEND)
    joined = join.front_of[all_backs] >= 0
    stats["backend_flows_joined"] = int(joined.sum())
    stats["backend_flows_unjoined"] = int((~joined).sum())
    stats["frontend_flows_with_backend"] = int(np.unique(join.front_of[join.front_of >= 0]).size)
    stats["join_rate"] = float(joined.mean()) if all_backs.size else None


def _last_at_or_before(sorted_ts: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       t: np.ndarray) -> np.ndarray:
    """Per query: the index in [lo, hi) of the last sorted_ts <= t (runs sorted), else -1."""
    if sorted_ts.size == 0:
        return np.full(t.shape, -1, np.int64)
    # a binary search of every run at once: log2(longest run) whole-array steps
    out = np.full(t.shape, -1, np.int64)
    a, b = lo.astype(np.int64), hi.astype(np.int64)
    while True:
        live = a < b
        if not live.any():
            break
        mid = (a + b) // 2
        le = live & (sorted_ts[np.minimum(mid, sorted_ts.size - 1)] <= t)
        a = np.where(le, mid + 1, a)
        b = np.where(live & ~le, mid, b)
    found = a - 1
    ok = (found >= lo) & (found < hi)
    out[ok] = found[ok]
    return out

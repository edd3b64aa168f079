"""Leg joining: which frontend flow (client <-> HAProxy) each backend flow served (pure).

Rules: HAProxy opens a server connection for a stream it accepted earlier and that is still
open: in tcp mode right after the accept, in http mode right after the request (or, with
keep-alive, after a later request). So a backend flow's candidates are the frontend flows
open at its SYN (started before, not finished), allowed by the routing when the config is
known (the frontend's `use_backend`/`default_backend` reach a backend listing the server); among them
the one whose *trigger* (its client's first payload if it came before the SYN, else its
accept) is closest before the SYN wins. Several backend flows may join one frontend flow
(retries, redispatch); a frontend flow HAProxy answered itself or rejected joins none; a
backend flow open while no frontend flow is (health checks) joins none. When several streams
were waiting, the first come is served first (see `_first_come_first_served`).

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


@dataclass
class Join:
    """Rows are indices into the flow table."""

    front_of: np.ndarray  # per flow: the frontend flow row a backend flow served (-1: none)
    candidates: np.ndarray  # per flow: how many frontend flows were possible (backend flows)
    method: np.ndarray  # per flow: 0 none, 1 timing, 2 log, 3 queued stream whose client left
    stats: dict = field(default_factory=dict)


def flow_start(flows: np.ndarray) -> np.ndarray:
    return np.where(flows["syn_ts"] >= 0, flows["syn_ts"], flows["first_ts"])


def join_legs(flows: np.ndarray, leg: np.ndarray, first_client_data_ts: np.ndarray,
              route_ok: np.ndarray | None = None, frontend_index: np.ndarray | None = None,
              server_index: np.ndarray | None = None, client_left_ts: np.ndarray | None = None,
              queue_grace_ns: int = QUEUE_GRACE_NS) -> Join:
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
        dequeued = _opens_on_release(flows, backs, b_start)
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
        trig_data = data[pos]
        trigger = np.where((trig_data >= 0) & (trig_data <= b_start[:, None]), trig_data, f_start[pos])
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
                                     ambiguous, front_of, queue_grace_ns, dequeued)
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


def _opens_on_release(flows: np.ndarray, backs: np.ndarray, b_start: np.ndarray) -> np.ndarray:
    """Per backend flow: another connection to the same server endpoint ended within
    RELEASE_WINDOW_NS before it opened."""
    key = (flows["responder_hi"][backs].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
           ^ flows["responder_lo"][backs].astype(np.uint64)
           ^ (flows["responder_port"][backs].astype(np.uint64) << np.uint64(48)))
    end = flows["last_ts"][backs]
    o = np.lexsort((end, key))
    k_sorted, e_sorted = key[o], end[o]
    # composite search: same key, end in [start - window, start)
    lo = np.searchsorted(k_sorted, key, side="left")
    hi = np.searchsorted(k_sorted, key, side="right")
    out = np.zeros(backs.size, bool)
    for i in np.flatnonzero(hi - lo > 1).tolist():
        ends = e_sorted[lo[i]:hi[i]]
        a = np.searchsorted(ends, b_start[i] - RELEASE_WINDOW_NS, side="left")
        b = np.searchsorted(ends, b_start[i], side="left")
        out[i] = b > a
    return out


def _first_come_first_served(flows, backs, b_start, f_order, pos, alive, trigger, delay, ambiguous,
                             front_of, grace_ns, dequeued) -> None:
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
        # request (a slot freed: server maxconn, frontend maxconn) serves the longest waiting
        prompt = delay[i, cand].min() <= PROMPT_NS
        if waiting.any() and (dequeued[i] or not prompt):
            k = cand[waiting][np.argmin(t[waiting])]
        else:
            k = cand[np.argmin(delay[i, cand])]
        f = f_order[pos[i, k]]
        front_of[backs[i]] = f
        if answered[backs[i]] and (served_at[f] < 0 or served_at[f] > b_start[i]):
            served_at[f] = b_start[i]


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

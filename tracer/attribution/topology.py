"""Who is who: HAProxy's frontends, its backend-side addresses and the servers (pure).

Rules: a topology comes from one of three sources, in this order of trust:

1. `--haproxy-config`: frontends are the `bind` endpoints, servers the `server` endpoints;
   HAProxy's backend-side addresses are the `source` addresses plus whatever address opens the
   connections to the servers in the capture.
2. `--proxy ADDR[:PORT]`: the frontend is ADDR (on PORT, else on every port that accepts
   connections); the backend side is found as in 3, with the frontend given.
3. Inference from the traffic: HAProxy is a host that accepts connections on some endpoints
   and, while those connections are open, opens connections of its own to other endpoints.
   For a candidate pair (A accepts, B initiates; B never connects to A), the *nesting
   fraction* is the share of B's connections that start while one of A's accepted connections
   is open (a prefix maximum over A's flows sorted by start, searched with searchsorted). A
   proxy nests nearly all its server connections inside client connections; a client that
   happens to be busy does not, and B's that also connect to A are A's clients. Pairs nesting
   at least NEST_MIN are candidates. In busy traffic anything nests in something, so a
   candidate must also be *prompt*: HAProxy connects right after the accept (tcp mode) or the
   request (http mode), so the median lag from the latest such trigger on A to B's SYN must be
   small against the median spacing of A's accepts (LAG_SHARE_MAX) and under LAG_MAX_NS. Where
   no pair passes (a busy proxy, keep-alive everywhere), `--proxy` says it.

Health checks: HAProxy's checks to a `check port` open on a timer (`inter`), serve no client
and must stay out of the join. Without the config, a destination whose connections open at
near-constant gaps (TIMER_CV_MAX) is a check destination, however often its connections
happen to nest in client connections in busy traffic; the destinations that serve clients
are the others that nest.

Each flow then gets a leg: frontend (its responder is a frontend endpoint), backend (its
responder is a server endpoint, or its initiator is a HAProxy backend-side address and it is
not a frontend flow), or unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.attribution import vocab as av
from tracer.attribution.config import Config
from tracer.packet import format_address, parse_address

NEST_MIN = 0.9  # share of B's connections nested in A's for inference
NEST_MIN_GIVEN = 0.5  # with --proxy the frontend is given: a weaker signal suffices
MIN_NESTED_FLOWS = 3
# A proxy opens about as many server connections as it accepts (fewer with connection reuse):
# a B with a handful of connections next to thousands of accepts is a client elsewhere.
MIN_BACKEND_SHARE = 0.2
LAG_SHARE_MAX = 0.25  # median trigger->SYN lag against the median spacing of accepts
LAG_MAX_NS = 1_000_000_000
TIMER_MIN_GAPS = 5  # connections to one destination needed to call it timer-driven
TIMER_CV_MAX = 0.1  # coefficient of variation of their gaps at most this: health checks


@dataclass
class FrontendSpec:
    name: str
    mode: str | None  # http / tcp / None (unknown)
    addresses: list[tuple[int, int] | None]  # None: any address
    ports: list[tuple[int, int]]  # (lo, hi) per bind, same order as addresses


@dataclass
class ServerSpec:
    backend: str
    name: str
    address: tuple[int, int] | None
    port: int | None
    mode: str | None
    check: bool = False
    check_port: int | None = None  # `check port N`: health checks go to another port


@dataclass
class Topology:
    source: str  # config / proxy / inferred / none
    frontends: list[FrontendSpec] = field(default_factory=list)
    servers: list[ServerSpec] = field(default_factory=list)
    backend_addresses: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    # Without a config: the (address hi, lo, port) destinations whose connections nest in
    # client connections. HAProxy's other connections (health checks to a check port) are
    # not serving clients and are kept out of the join. None: not known (config).
    serving: set[tuple[int, int, int]] | None = None

    def describe(self) -> dict:
        return {
            "source": self.source,
            "frontends": [
                {"name": f.name, "mode": f.mode,
                 "binds": [_endpoint_text(a, lo, hi) for a, (lo, hi) in zip(f.addresses, f.ports, strict=True)]}
                for f in self.frontends],
            "haproxy_backend_addresses": sorted(format_address(*a) for a in self.backend_addresses),
            "servers": [
                {"backend": s.backend, "name": s.name,
                 "address": _endpoint_text(s.address, s.port or 0, s.port or 65535),
                 "mode": s.mode, "check": s.check}
                for s in self.servers],
            "notes": list(self.notes),
        }


def _endpoint_text(address, lo: int, hi: int) -> str:
    addr = format_address(*address) if address else "*"
    port = str(lo) if lo == hi else ("*" if (lo, hi) == (0, 65535) else f"{lo}-{hi}")
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass
class FlowRoles:
    """Per flow (rows of the flow table): leg, frontend / server index (-1: none)."""

    leg: np.ndarray  # uint8, vocab.LEG_*
    frontend: np.ndarray  # int32 index into Topology.frontends
    server: np.ndarray  # int32 index into Topology.servers
    check: np.ndarray  # bool: a health-check connection (to a server's `check port`)


def _addr(text: str | None) -> tuple[int, int] | None:
    return parse_address(text) if text else None


def from_config(config: Config) -> Topology:
    topo = Topology(source="config")
    for p in config.frontends:
        topo.frontends.append(FrontendSpec(
            name=p.name, mode=p.mode,
            addresses=[_addr(b.address) for b in p.binds],
            ports=[(b.port_lo, b.port_hi) for b in p.binds]))
    for p in config.backends:
        for s in p.servers:
            topo.servers.append(ServerSpec(p.name, s.name, _addr(s.address), s.port, p.mode, s.check,
                                           s.check_port if s.check else None))
            if s.source:
                topo.backend_addresses.add(parse_address(s.source))
        if p.source:
            topo.backend_addresses.add(parse_address(p.source))
    return topo


def from_proxy(specs: list[str]) -> Topology:
    """`--proxy ADDR[:PORT]` (repeatable): HAProxy's frontend address(es)."""
    from tracer.attribution.config import parse_endpoint

    topo = Topology(source="proxy")
    for i, text in enumerate(specs):
        endpoint = parse_endpoint(text)
        if endpoint is None or endpoint.address is None:
            raise ValueError(f"--proxy {text!r}: expected ADDR or ADDR:PORT (e.g. 10.0.0.5:443)")
        topo.frontends.append(FrontendSpec(
            name=f"proxy{i}" if len(specs) > 1 else "proxy", mode=None,
            addresses=[parse_address(endpoint.address)], ports=[(endpoint.port_lo, endpoint.port_hi)]))
    return topo


# -- per-flow roles ---------------------------------------------------------------------------

def _match_frontend(flows: np.ndarray, topo: Topology) -> np.ndarray:
    out = np.full(flows.shape[0], -1, np.int32)
    server_addr = _server_address_mask(flows, topo)
    for i, f in enumerate(topo.frontends):
        for address, (lo, hi) in zip(f.addresses, f.ports, strict=True):
            hit = (flows["responder_port"] >= lo) & (flows["responder_port"] <= hi) & (out < 0)
            if address is not None:
                hit &= (flows["responder_hi"] == address[0]) & (flows["responder_lo"] == address[1])
            else:
                hit &= ~server_addr  # a wildcard bind: any address that is not a server's
            out[hit] = i
    return out


def _server_address_mask(flows: np.ndarray, topo: Topology) -> np.ndarray:
    mask = np.zeros(flows.shape[0], bool)
    for s in topo.servers:
        if s.address is not None:
            mask |= (flows["responder_hi"] == s.address[0]) & (flows["responder_lo"] == s.address[1])
    return mask


def _match_server(flows: np.ndarray, topo: Topology) -> tuple[np.ndarray, np.ndarray]:
    """Server index per flow (-1) and whether the flow went to the server's check port."""
    out = np.full(flows.shape[0], -1, np.int32)
    check = np.zeros(flows.shape[0], bool)
    for i, s in enumerate(topo.servers):
        if s.address is None:
            continue
        at = (flows["responder_hi"] == s.address[0]) & (flows["responder_lo"] == s.address[1]) & (out < 0)
        hit = at & (flows["responder_port"] == s.port) if s.port is not None else at
        out[hit] = i
        if s.check_port is not None and s.check_port != s.port:
            to_check = at & (flows["responder_port"] == s.check_port) & (out < 0)
            out[to_check] = i
            check |= to_check
    return out, check


def assign_roles(flows: np.ndarray, topo: Topology) -> FlowRoles:
    """Legs of every flow; learns HAProxy's backend-side addresses and, when the topology has
    no server list (`--proxy`, inference), the servers, from the traffic."""
    frontend = _match_frontend(flows, topo)
    is_front = frontend >= 0
    server, check = _match_server(flows, topo)
    if topo.source == "config":
        # whoever opens the connections to configured servers is HAProxy's backend side
        learned = _addresses(flows["initiator_hi"][server >= 0], flows["initiator_lo"][server >= 0])
        clients = _addresses(flows["initiator_hi"][is_front], flows["initiator_lo"][is_front])
        topo.backend_addresses |= learned - clients if learned - clients else learned
    elif topo.frontends and not topo.backend_addresses:
        _infer_backend_side(flows, frontend, topo, NEST_MIN_GIVEN)
    from_back = _from_addresses(flows, topo.backend_addresses) & ~is_front
    if topo.source != "config":
        _learn_servers(flows, from_back, topo)
        server, check = _match_server(flows, topo)
    backend = ((server >= 0) | from_back) & ~is_front
    if topo.serving is not None and backend.any():
        dest = np.stack([flows["responder_hi"], flows["responder_lo"],
                         flows["responder_port"].astype(np.uint64)], axis=1)
        serving = np.array(sorted(topo.serving), np.uint64).reshape(-1, 3)
        known = _rows_in(dest, serving)
        check |= backend & ~known
    leg = np.full(flows.shape[0], av.LEG_UNKNOWN, np.uint8)
    leg[is_front] = av.LEG_FRONTEND
    leg[backend] = av.LEG_BACKEND
    return FlowRoles(leg=leg, frontend=frontend, server=np.where(backend, server, -1).astype(np.int32),
                     check=check & backend)


def _rows_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Which rows (n x 3 uint64) appear in table (m x 3 uint64)."""
    if table.shape[0] == 0:
        return np.zeros(rows.shape[0], bool)
    dt = np.dtype([("a", np.uint64), ("b", np.uint64), ("c", np.uint64)])
    r = np.ascontiguousarray(rows).view(dt).ravel()
    t = np.ascontiguousarray(table).view(dt).ravel()
    return np.isin(r, t)


def _addresses(hi: np.ndarray, lo: np.ndarray) -> set[tuple[int, int]]:
    pairs = np.unique(np.stack([hi, lo], axis=1), axis=0) if hi.size else np.zeros((0, 2), np.uint64)
    return {(int(a), int(b)) for a, b in pairs}


def _from_addresses(flows: np.ndarray, addresses: set[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(flows.shape[0], bool)
    for hi, lo in addresses:
        mask |= (flows["initiator_hi"] == hi) & (flows["initiator_lo"] == lo)
    return mask


def _learn_servers(flows: np.ndarray, from_back: np.ndarray, topo: Topology) -> None:
    if not from_back.any():
        return
    ends = np.unique(np.stack([flows["responder_hi"][from_back], flows["responder_lo"][from_back],
                               flows["responder_port"][from_back].astype(np.uint64)], axis=1), axis=0)
    known = {(s.address, s.port) for s in topo.servers}
    for hi, lo, port in ends:
        key = ((int(hi), int(lo)), int(port))
        if key not in known:
            name = _endpoint_text(key[0], key[1], key[1])
            topo.servers.append(ServerSpec("", name, key[0], key[1], None))


def _nesting(inner_start: np.ndarray, outer_start: np.ndarray, outer_last: np.ndarray) -> np.ndarray:
    """For each inner start: does it fall inside some outer flow's [start, last]?"""
    if outer_start.size == 0:
        return np.zeros(inner_start.shape[0], bool)
    o = np.argsort(outer_start, kind="stable")
    reach = np.maximum.accumulate(outer_last[o])
    idx = np.searchsorted(outer_start[o], inner_start, side="right") - 1
    return (idx >= 0) & (reach[np.maximum(idx, 0)] >= inner_start)


def _nested_by_destination(flows: np.ndarray, mine: np.ndarray, start: np.ndarray,
                           outer_start: np.ndarray, outer_last: np.ndarray,
                           share_min: float) -> tuple[np.ndarray, np.ndarray]:
    """B's flows (mask `mine`) grouped by destination endpoint: the flows going to endpoints
    whose connections nest in A's at `share_min` or more (a proxy's server traffic), and the
    nesting of each. Health checks and other traffic of the same host go to endpoints that do
    not nest, and do not count against it."""
    idx = np.flatnonzero(mine) if mine.dtype == bool else mine  # a mask or row indices
    nested = _nesting(start[idx], outer_start, outer_last)
    dest = (flows["responder_lo"][idx].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            ^ flows["responder_hi"][idx].astype(np.uint64)
            ^ flows["responder_port"][idx].astype(np.uint64))
    _, inv = np.unique(dest, return_inverse=True)
    inv = inv.ravel()
    share = np.bincount(inv, weights=nested) / np.bincount(inv)
    keep = (share[inv] >= share_min) & ~_on_a_timer(start[idx], inv)[inv]
    return idx[keep], nested[keep]


def _on_a_timer(start: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Per group (destination): are its connections opened on a timer? Health checks run
    every `inter` (HAProxy's default 2 s), so the gaps between a check destination's
    connections barely vary (lab: coefficient of variation <= 0.03); connections that serve
    clients follow the clients' requests (lab: >= 0.29, even with scheduled clients)."""
    n_groups = int(group.max()) + 1 if group.size else 0
    o = np.lexsort((start, group))
    g, t = group[o], start[o]
    same = g[1:] == g[:-1]
    gaps = (t[1:] - t[:-1]).astype(np.float64)[same]
    gg = g[1:][same]
    count = np.bincount(gg, minlength=n_groups)
    total = np.bincount(gg, weights=gaps, minlength=n_groups)
    squares = np.bincount(gg, weights=gaps * gaps, minlength=n_groups)
    mean = total / np.maximum(count, 1)
    var = np.maximum(squares / np.maximum(count, 1) - mean * mean, 0.0)
    cv = np.sqrt(var) / np.maximum(mean, 1.0)
    return (count >= TIMER_MIN_GAPS) & (cv <= TIMER_CV_MAX)


def _destinations(flows: np.ndarray, rows: np.ndarray) -> set[tuple[int, int, int]]:
    return set(zip(flows["responder_hi"][rows].tolist(), flows["responder_lo"][rows].tolist(),
                   flows["responder_port"][rows].tolist(), strict=True))


def _start(flows: np.ndarray) -> np.ndarray:
    return np.where(flows["syn_ts"] >= 0, flows["syn_ts"], flows["first_ts"])


def _infer_backend_side(flows: np.ndarray, frontend: np.ndarray, topo: Topology, nest_min: float) -> None:
    """With the frontend known: the initiator addresses whose connections nest in it."""
    is_front = frontend >= 0
    if not is_front.any():
        topo.notes.append("no connection to the given frontend address in the capture")
        return
    start, last = _start(flows), flows["last_ts"]
    clients = _addresses(flows["initiator_hi"][is_front], flows["initiator_lo"][is_front])
    front_hosts = _addresses(flows["responder_hi"][is_front], flows["responder_lo"][is_front])
    outside = ~is_front
    for hi, lo in _addresses(flows["initiator_hi"][outside], flows["initiator_lo"][outside]):
        if (hi, lo) in clients and (hi, lo) not in front_hosts:
            continue
        mine = outside & (flows["initiator_hi"] == hi) & (flows["initiator_lo"] == lo)
        served, nested = _nested_by_destination(flows, mine, start, start[is_front], last[is_front],
                                                nest_min)
        if served.size and nested.sum() >= min(MIN_NESTED_FLOWS, served.size):
            topo.backend_addresses.add((hi, lo))
            topo.serving = (topo.serving or set()) | _destinations(flows, served)
            topo.notes.append(f"{format_address(hi, lo)} is HAProxy's backend side: "
                              f"{int(nested.sum())}/{served.size} of its connections to the "
                              "servers open while a frontend connection is open")


def _prompt(b_start: np.ndarray, a_start: np.ndarray, a_data: np.ndarray) -> tuple[bool, float, float]:
    """Do B's connections follow A's triggers (accepts, first client payloads) promptly?"""
    triggers = np.sort(np.concatenate((a_start, a_data[a_data >= 0])))
    idx = np.searchsorted(triggers, b_start, side="right") - 1
    ok = idx >= 0
    if not ok.any() or a_start.size < 2:
        return False, float("nan"), float("nan")
    lag = float(np.median(b_start[ok] - triggers[idx[ok]]))
    spacing = float(np.median(np.diff(np.sort(a_start))))
    return (lag <= LAG_MAX_NS and lag <= LAG_SHARE_MAX * spacing), lag, spacing


def infer(flows: np.ndarray, first_client_data: np.ndarray | None = None) -> Topology:
    """No config, no --proxy: find (A accepts, B initiates) pairs where B's connections nest
    inside A's accepted ones, promptly (see the module rules). `first_client_data`: per flow,
    the initiator's first payload time (-1: none)."""
    if first_client_data is None:
        first_client_data = np.full(flows.shape[0], -1, np.int64)
    topo = Topology(source="inferred")
    if flows.shape[0] == 0:
        topo.notes.append("no flows")
        return topo
    start, last = _start(flows), flows["last_ts"]
    accepted = flows["syn_ts"] >= 0  # only flows whose handshake was seen say who accepts
    resp = np.stack([flows["responder_hi"], flows["responder_lo"]], axis=1)
    init = np.stack([flows["initiator_hi"], flows["initiator_lo"]], axis=1)
    a_keys, a_inv, a_counts = np.unique(resp[accepted], axis=0, return_inverse=True, return_counts=True)
    b_keys, b_counts = np.unique(init, axis=0, return_counts=True)
    a_top = np.argsort(-a_counts, kind="stable")[:16]
    b_top = np.argsort(-b_counts, kind="stable")[:64]
    chosen: list[tuple[tuple[int, int], tuple[int, int], float, int, int]] = []
    rejected: list[str] = []
    serving: set[tuple[int, int, int]] = set()
    # The pairs tried are bounded (16 x 64); each costs the rows of its B, not all flows:
    # address columns are read once, B's rows found once.
    init_hi, init_lo = np.ascontiguousarray(flows["initiator_hi"]), np.ascontiguousarray(flows["initiator_lo"])
    resp_hi, resp_lo = np.ascontiguousarray(flows["responder_hi"]), np.ascontiguousarray(flows["responder_lo"])
    b_rows = {int(bi): np.flatnonzero((init_hi == b_keys[bi][0]) & (init_lo == b_keys[bi][1]))
              for bi in b_top}
    for ai in a_top:
        a = (int(a_keys[ai][0]), int(a_keys[ai][1]))
        to_a = (resp_hi == a[0]) & (resp_lo == a[1])
        clients_a = _addresses(init_hi[to_a], init_lo[to_a])
        # B's flows never go to A, so A's accepted flows are the same for every B
        outer = to_a & accepted
        outer_start, outer_last, outer_n = start[outer], last[outer], int(outer.sum())
        for bi in b_top:
            b = (int(b_keys[bi][0]), int(b_keys[bi][1]))
            if b in clients_a and b != a:
                continue
            mine = b_rows[int(bi)]
            mine = mine[~to_a[mine]]
            if not mine.size:
                continue
            served, nested = _nested_by_destination(flows, mine, start, outer_start, outer_last,
                                                    NEST_MIN)
            enough = nested.sum() >= max(MIN_NESTED_FLOWS, MIN_BACKEND_SHARE * outer_n)
            if enough and served.size:
                prompt, lag, spacing = _prompt(start[served], outer_start, first_client_data[outer])
                if not prompt:
                    rejected.append(f"{format_address(*a)} accepts and {format_address(*b)} opens "
                                    f"nested connections, but {lag / 1e6:.1f} ms after the trigger "
                                    f"(accepts {spacing / 1e6:.1f} ms apart): not a proxy")
                    continue
                chosen.append((a, b, float(nested.mean()), int(nested.sum()), int(mine.size)))
                serving |= _destinations(flows, served)
    # One host cannot be a proxy's server and another proxy pair's frontend, nor its client:
    # take pairs strongest first (most nested connections) and drop a pair whose frontend is
    # a server of a pair already taken, or whose backend side is a client of one.
    chosen.sort(key=lambda c: -c[3])
    kept: list = []
    servers_taken: set[tuple[int, int]] = set()
    clients_taken: set[tuple[int, int]] = set()
    for c in chosen:
        a, b = c[0], c[1]
        if a in servers_taken or b in clients_taken:
            rejected.append(f"{format_address(*a)} / {format_address(*b)}: a server or client of "
                            "a stronger proxy pair, not a proxy")
            continue
        kept.append(c)
        from_b = (flows["initiator_hi"] == b[0]) & (flows["initiator_lo"] == b[1])
        to_a = (flows["responder_hi"] == a[0]) & (flows["responder_lo"] == a[1])
        servers_taken |= _addresses(flows["responder_hi"][from_b & ~to_a], flows["responder_lo"][from_b & ~to_a])
        clients_taken |= _addresses(flows["initiator_hi"][to_a], flows["initiator_lo"][to_a])
    chosen = kept
    if not chosen:
        topo.notes.extend(rejected[:4])
        topo.notes.append("no host both accepts connections and promptly opens nested ones: "
                          "no proxy found (give --proxy ADDR[:PORT] or --haproxy-config)")
        return topo
    topo.serving = serving
    fronts: dict[tuple[int, int], list] = {}
    for a, b, share, k, n in chosen:
        fronts.setdefault(a, []).append(b)
        topo.backend_addresses.add(b)
        topo.notes.append(f"{format_address(*a)} accepts, {format_address(*b)} opens {k}/{n} of its "
                          f"connections while one of those is open ({share:.0%}): HAProxy")
    for i, a in enumerate(fronts):
        to_a = accepted & (flows["responder_hi"] == a[0]) & (flows["responder_lo"] == a[1])
        ports = np.unique(flows["responder_port"][to_a])
        name = f"inferred{i}" if len(fronts) > 1 else "inferred"
        topo.frontends.append(FrontendSpec(name=name, mode=None, addresses=[a] * len(ports),
                                           ports=[(int(p), int(p)) for p in ports]))
    return topo

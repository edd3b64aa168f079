"""Rolling aggregates of a live capture (pure: no I/O, no clock, no asyncio).

Rules:
- Packets go through the same stages as offline analysis: `LiveAnalysis.add` feeds a
  `CaptureAnalysis` (decode counts, flows, the attribution timeline). Nothing here re-implements
  a stage; this module only decides *when* to ask attribution and what to keep of its answers.
- An RST is counted once, when it is *settled*: its flow was finished by the flow stage (closed
  and quiet for the tracker's `closed_timeout`, or idle-evicted) and the capture has gone on
  `settle_s` more, so the flows on the other leg that HAProxy closed with it are finished too
  and the leg join sees them. `settle_s` is the longest a stream can wait for a server
  connection (`settle_for`: the config's timeout queue/connect and retries, else 10 s, the
  join's own default): a client that gave up while queued is joined to the server connection
  HAProxy opens for its slot later, and that connection must be in the table. Its attribution is then fixed and never revised. RST packets are
  also counted at once, unattributed (`rst_packets`), so the view shows a burst in the window
  it happens; causes follow `closed_timeout + settle_s` (about 20 s) later.
- Each settling pass runs `tracer.attribution.attribute` on the *context* of the RSTs it
  settles: the finished flows that ended at most `context_s` before the earliest of them began,
  so the cost of a pass follows the recent flow rate, not the run's length.
- Memory is bounded. Windows keep aggregates only (counts, RTT histograms, a few newest fault
  RSTs, RTT samples of the current window capped by reservoir). The flow stage keeps one row per
  finished flow and the timeline one row per flow id (that is what attribution reads).
- The timeline also keeps one *turn* per request and per response (the leg join reads them):
  on keep-alive traffic that is one row per payload packet, which grew without end on long
  runs. The join asks only two things of them: per (flow, direction), the latest turn at or
  before a time and the first at or after it, at the times backend flows start and get their
  first response. Each tick keeps the turns that answer those questions for every flow this
  generation knows (finished or open) and for any time from `horizon` on (the clock less
  PRUNE_MARGIN_NS: flows not seen yet start after it), and drops the rest (tracer.attribution.timeline.needed_turns):
  every answer stays what it was, so the attribution of every RST is the same as offline.
- A generation ends when it holds `max_flows` finished flows or `max_rows` rows of per-segment
  facts (turns kept, rare segment events, per-flow-second data counts: the patterns stage's
  inputs, which grow with time on a few long busy flows): its open flows are finished, every
  RST settled, and a fresh `CaptureAnalysis` takes over. Connections open across that boundary
  are seen again as midstream flows by the next generation; that is the price of the bound
  (documented in the README; with the defaults a generation lasts minutes to hours). The final
  report covers the last generation, so it needs no memory beyond one generation's.
- The final report (`final_summary`) is the generation's `CaptureAnalysis.summary()`, the very
  function offline analysis calls, so with one generation it equals `tracer analyze` of the
  capture file that was written.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from tracer.analysis import AttributionOptions, CaptureAnalysis, join_query_times
from tracer.attribution import attribute
from tracer.attribution import vocab as av
from tracer.flows.tables import (
    RTT_KIND_DATA,
    RTT_KIND_HANDSHAKE_INITIATOR,
    RTT_KIND_HANDSHAKE_RESPONDER,
)
from tracer.packet import DecodeCounts, format_address

SETTLE_S = 10.0  # the join's default queue grace (tracer.attribution.join.QUEUE_GRACE_NS)
CONTEXT_S = 60.0
MAX_FLOWS = 200_000
MAX_ROWS = 5_000_000  # per generation: turns, segment events, data rows (~16-21 bytes each)
PRUNE_MARGIN_NS = 2_000_000_000  # packets of several interfaces may come this much out of order
NEWEST_FINDINGS = 8
QUIET_ADVANCE_NS = 1_000_000_000  # a link quiet for longer moves the flow stage's clock on
WINDOW_RTT_SAMPLES = 100_000  # per (kind, leg) and window: a uniform subset past this

# Prometheus-style histogram bounds ("le"), seconds; the last bucket is +Inf.
RTT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0, 10.0)
_RTT_BOUNDS_NS = (np.array(RTT_BUCKETS_S) * 1e9).astype(np.int64)

RST_LABELS = ("leg", "sender", "cause", "reason", "routine", "frontend", "backend", "server")
RTT_KINDS = ("handshake", "data")


@dataclass
class Tally:
    """What one window (or the whole run) counted. Keys of `rsts` follow RST_LABELS."""

    frames: int = 0
    tcp_segments: int = 0
    rst_packets: int = 0  # RST segments seen, attributed or not yet
    payload_bytes: int = 0
    rsts: Counter = field(default_factory=Counter)
    flows: Counter = field(default_factory=Counter)  # settled flows by leg
    packets_by_leg: Counter = field(default_factory=Counter)
    retransmissions: Counter = field(default_factory=Counter)  # by leg
    lost_segments: Counter = field(default_factory=Counter)  # sequence gaps, by leg
    rtt_buckets: dict = field(default_factory=dict)  # (kind, leg, server) -> counts per bucket
    rtt_sum_s: Counter = field(default_factory=Counter)  # (kind, leg, server) -> seconds

    def merge(self, other: Tally) -> None:
        self.frames += other.frames
        self.tcp_segments += other.tcp_segments
        self.rst_packets += other.rst_packets
        self.payload_bytes += other.payload_bytes
        for name in ("rsts", "flows", "packets_by_leg", "retransmissions", "lost_segments",
                     "rtt_sum_s"):
            getattr(self, name).update(getattr(other, name))
        for key, counts in other.rtt_buckets.items():
            mine = self.rtt_buckets.get(key)
            self.rtt_buckets[key] = counts.copy() if mine is None else mine + counts

    def rsts_by(self, label: str, faults_only: bool = False) -> dict[str, int]:
        at = RST_LABELS.index(label)
        out: Counter = Counter()
        for key, n in self.rsts.items():
            if faults_only and key[4] == "true":
                continue
            out[key[at]] += n
        return dict(out.most_common())


def _names(codes: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return np.asarray(names, dtype=object)[codes]


def settle_for(options: AttributionOptions, floor_s: float = SETTLE_S) -> float:
    """Seconds to wait after a flow's end: the longest queue wait the config allows (timeout
    queue, else timeout connect, plus a connect timeout per retry), at least `floor_s`."""
    config = options.config
    longest_ns = 0
    for proxy in (config.proxies if config is not None else []):
        t = proxy.timeouts_ns
        longest_ns = max(longest_ns, t.get("queue", t.get("connect", 0))
                         + t.get("connect", 0) * (1 + (proxy.retries or 0)))
    return max(floor_s, longest_ns / 1e9)


class LiveAnalysis:
    """Feed `add` with decoded batches; call `tick` once per interval; `finish` at the end."""

    def __init__(self, label: str, options: AttributionOptions | None = None, *,
                 settle_s: float | None = None, context_s: float = CONTEXT_S,
                 max_flows: int = MAX_FLOWS, max_rows: int = MAX_ROWS) -> None:
        self.label = label
        self.options = options or AttributionOptions()
        if settle_s is None:
            settle_s = settle_for(self.options)
        self.settle_ns = int(settle_s * 1e9)
        self.context_ns = int(context_s * 1e9)
        self.max_flows = max_flows
        self.max_rows = max_rows
        self.total = Tally()
        self.window = Tally()
        self.newest: deque[dict] = deque(maxlen=NEWEST_FINDINGS)
        self.generations = 0
        self.windows = 0
        self.unsettled_rsts = 0
        self._window_rtts: dict[tuple[str, str], list[np.ndarray]] = {}
        self._rng = np.random.default_rng(0x11FE)
        self._new_generation()

    # -- input ---------------------------------------------------------------------------------

    def add(self, packets: np.ndarray, counts: DecodeCounts) -> None:
        self.generation.add(packets, counts)
        w = self.window
        w.frames += counts.frames
        w.tcp_segments += counts.tcp_packets
        w.rst_packets += counts.flag_counts.get("RST", 0)
        if packets.shape[0]:
            w.payload_bytes += int(packets["payload_len"].sum(dtype=np.int64))

    # -- per interval ----------------------------------------------------------------------------

    def tick(self, now_ns: int | None = None) -> tuple[Tally, Tally]:
        """Settle what can be settled; return (this window, since start) and open a new window.

        `now_ns`: the wall clock of the capturing host (the clock of the capture timestamps).
        Time in the flow stage moves with packets; on a link gone quiet it would stand still
        and the last flows would never finish, so a clock ahead of the last packet by more
        than QUIET_ADVANCE_NS moves it on (see `_advance`)."""
        if now_ns is not None:
            self._advance(now_ns)
        # the finished-flow table is built anew on each access (~360 bytes a row): once a tick
        flows = self._settle(final=False)
        self._prune_turns(flows)
        if (flows.shape[0] >= self.max_flows
                or sum(self.retained_rows(flows).values()) >= self.max_rows):
            self._settle(final=True)
            self._new_generation()
        return self._close_window()

    def retained_rows(self, flows: np.ndarray | None = None) -> dict[str, int]:
        """What this generation holds, in rows, by kind (what bounds its memory). `flows`: the
        finished-flow table, when the caller has it at hand."""
        gen = self.generation
        facts = gen.segment_facts
        return {
            "flows_finished": int((gen.flows.flows if flows is None else flows).shape[0]),
            "flows_open": int(gen.flows.in_use.sum()),
            "rsts": int(gen.flows.rsts.shape[0]),
            "rtt_samples": min(gen.flows.rtt_samples_seen, gen.flows.max_rtt_samples),
            "turns": int(gen.timeline.turns().shape[0]),
            "segment_events": int(facts.events.shape[0]),
            "data_rows": int(facts.data_segments()[0].shape[0]),
        }

    def finish(self) -> tuple[Tally, Tally]:
        """The end of the capture: every flow finished, every RST settled; the last window."""
        self._settle(final=True)
        return self._close_window()

    def window_rtt_ms(self) -> dict[str, dict[str, dict]]:
        """p50/p99 (ms) and sample count of the window that `tick` just closed, per leg."""
        out: dict[str, dict[str, dict]] = {}
        for (kind, leg), parts in sorted(self._closed_rtts.items()):
            values = np.concatenate(parts)
            out.setdefault(leg, {})[kind] = {
                "samples": int(values.shape[0]),
                "p50": float(np.percentile(values, 50)) / 1e6,
                "p99": float(np.percentile(values, 99)) / 1e6,
            }
        return out

    def final_summary(self, **facts) -> dict:
        """The last generation's capture summary, computed as offline analysis computes it."""
        summary = self.generation.summary(**facts)
        summary["path"] = self.label
        return summary

    # -- internals ------------------------------------------------------------------------------

    def _advance(self, now_ns: int) -> None:
        tracker = self.generation.flows
        if tracker.latest_ts < 0 or now_ns - tracker.latest_ts < QUIET_ADVANCE_NS:
            return
        advance = getattr(tracker, "advance", None)
        if advance is not None:
            advance(now_ns)
            return
        # FlowTracker has no public clock: evict as its own `add` would with a packet at
        # now_ns (asked of the flow stage's owner as `FlowTracker.advance(now_ns)`).
        tracker.latest_ts = now_ns
        tracker._evict(finish=False)

    def _new_generation(self) -> None:
        self.generation = CaptureAnalysis(path=self.label, engine="native", options=self.options)
        self.generations += 1
        # Flows finish out of id order, so rows of the finished-flow table (sorted by id) move;
        # done is kept per flow id. RST rows are only ever appended: done per row.
        self._flow_done = np.zeros(0, bool)  # per flow id of this generation
        self._rst_done = np.zeros(0, bool)  # per RST row of this generation

    def _close_window(self) -> tuple[Tally, Tally]:
        window = self.window
        self.total.merge(window)
        self.window = Tally()
        self._closed_rtts = self._window_rtts
        self._window_rtts = {}
        self.windows += 1
        return window, self.total

    def _settle(self, final: bool) -> np.ndarray:
        """Settle what is ready; the finished-flow table it looked at."""
        gen = self.generation
        tracker = gen.flows
        if final:
            tracker.finish()
        flows = tracker.flows
        rsts = tracker.rsts
        ids = flows["flow_id"]
        self._flow_done = _grow(self._flow_done, int(ids.max()) + 1 if ids.shape[0] else 0)
        self._rst_done = _grow(self._rst_done, rsts.shape[0])
        wait_ns = tracker.closed_timeout_ns + self.settle_ns
        old_enough = np.ones(flows.shape[0], bool) if final else (
            (tracker.latest_ts - flows["last_ts"]) >= wait_ns)
        ready = ~self._flow_done[ids] & old_enough
        ready_ids = np.sort(flows["flow_id"][ready])
        # An RST row may come after its flow was accounted (the flow stage can hand over a
        # flow's row before the RST rows of its last batch): settle it with the next pass.
        rst_ready = ~self._rst_done & _member(rsts["flow_id"],
                                              np.sort(flows["flow_id"][old_enough]))
        finished_ids = np.sort(flows["flow_id"])
        self.unsettled_rsts = int((~self._rst_done & ~rst_ready).sum())
        if not ready.any() and not rst_ready.any():
            return flows
        # The context: finished flows that ended after the earliest ready flow began, less
        # context_s (joins, propagation and timeout clusters look that far at most).
        settling = ready | _member(flows["flow_id"], np.sort(rsts["flow_id"][rst_ready]))
        since = int(flows["first_ts"][settling].min()) - self.context_ns
        context = flows[flows["last_ts"] >= since]
        in_context = _member(rsts["flow_id"], np.sort(context["flow_id"]))
        in_context &= _member(rsts["flow_id"], finished_ids)
        ctx_rows = np.flatnonzero(in_context)
        o = self.options
        att = attribute(context, rsts[ctx_rows], tracker.rtts, gen.timeline, config=o.config,
                        proxy=o.proxy, log_entries=None)
        self._count_rsts(att, rsts, ctx_rows, rst_ready[ctx_rows])
        self._count_flows(att, ready_ids, tracker.rtts)
        self._flow_done[ready_ids] = True
        self._rst_done |= rst_ready
        return flows

    def _prune_turns(self, flows: np.ndarray) -> None:
        """Drop the turns no question of the join can reach any more (module rules)."""
        gen = self.generation
        if gen.flows.latest_ts >= 0:
            gen.timeline.prune_turns(join_query_times(flows, gen.flows, gen.timeline),
                                     gen.flows.latest_ts - PRUNE_MARGIN_NS)

    def _flow_labels(self, att) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per flow of the attribution (sorted by id): leg, frontend index, server index,
        with a backend flow's frontend taken from the client stream it was joined to."""
        roles, join = att.roles, att.join
        leg = roles.leg.astype(np.int64)
        fe = roles.frontend.astype(np.int64)
        joined = (fe < 0) & (join.front_of >= 0)
        fe[joined] = roles.frontend[join.front_of[joined]]
        return leg, fe, roles.server.astype(np.int64), joined

    def _count_rsts(self, att, rsts: np.ndarray, ctx_rows: np.ndarray, pick: np.ndarray) -> None:
        if not pick.any():
            return
        t = att.result.table[pick]
        r = rsts[ctx_rows[pick]]
        pos = np.searchsorted(att.flows["flow_id"], r["flow_id"])
        _, fe_of_flow, _, _ = self._flow_labels(att)
        fe = fe_of_flow[pos]
        srv = t["server"].astype(np.int64)
        codes = np.stack([t["leg"].astype(np.int64), t["sender"].astype(np.int64),
                          t["cause"].astype(np.int64), t["reason"].astype(np.int64),
                          t["routine"].astype(np.int64), fe, srv], axis=1)
        uniq, counts = np.unique(codes, axis=0, return_counts=True)
        topo = att.topology
        for row, n in zip(uniq.tolist(), counts.tolist(), strict=True):
            leg, sender, cause, reason, routine, f, s = row
            server = topo.servers[s] if s >= 0 else None
            key = (av.LEG_NAMES[leg], av.ROLE_NAMES[sender], av.CAUSE_NAMES[cause],
                   av.REASON_NAMES[reason], "true" if routine else "false",
                   topo.frontends[f].name if f >= 0 else "",
                   (server.backend or "") if server else "", server.name if server else "")
            self.window.rsts[key] += n
        # The newest faults, for the view (a handful: formatted one by one).
        faults = np.flatnonzero(~t["routine"])[-NEWEST_FINDINGS:]
        for i in faults.tolist():
            s = int(srv[i])
            server = topo.servers[s] if s >= 0 else None
            self.newest.append({
                "ts": int(r["ts_ns"][i]) / 1e9,
                "frame": int(t["frame"][i]),
                "src": f"{format_address(r['src_hi'][i], r['src_lo'][i])}:{int(r['sport'][i])}",
                "dst": f"{format_address(r['dst_hi'][i], r['dst_lo'][i])}:{int(r['dport'][i])}",
                "leg": av.LEG_NAMES[t["leg"][i]],
                "sender": av.ROLE_NAMES[t["sender"][i]],
                "cause": av.CAUSE_NAMES[t["cause"][i]],
                "reason": av.REASON_NAMES[t["reason"][i]],
                "origin": av.ORIGIN_NAMES[t["origin"][i]],
                "confidence": round(float(t["confidence"][i]), 3),
                "server": (f"{server.backend}/{server.name}" if server and server.backend
                           else server.name if server else None),
            })

    def _count_flows(self, att, ready_ids: np.ndarray, rtts: np.ndarray) -> None:
        flows = att.flows
        pos = np.flatnonzero(_member(flows["flow_id"], ready_ids))
        leg_all, _, srv_all, _ = self._flow_labels(att)
        leg = leg_all[pos]
        legs = np.arange(len(av.LEG_NAMES))
        w = self.window
        for name, column in (("retransmissions", "retransmissions"),
                             ("lost_segments", "lost_segments"), ("packets_by_leg", "packets")):
            sums = np.bincount(leg, weights=flows[column][pos].sum(axis=1),
                               minlength=legs.shape[0])
            for code, value in enumerate(sums.tolist()):
                if value:
                    getattr(w, name)[av.LEG_NAMES[code]] += int(value)
        for code, n in enumerate(np.bincount(leg, minlength=legs.shape[0]).tolist()):
            if n:
                w.flows[av.LEG_NAMES[code]] += n
        # RTT samples of the settled flows, by kind, leg and server.
        take = _member(rtts["flow_id"], ready_ids)
        kind = rtts["kind"][take]
        hand = (kind == RTT_KIND_HANDSHAKE_RESPONDER) | (kind == RTT_KIND_HANDSHAKE_INITIATOR)
        data = kind == RTT_KIND_DATA
        keep = hand | data
        if not keep.any():
            return
        samples = rtts[take][keep]
        kind_code = np.where(data[keep], 1, 0)
        fpos = np.searchsorted(flows["flow_id"], samples["flow_id"])
        s_leg, s_srv = leg_all[fpos], srv_all[fpos]
        bucket = np.searchsorted(_RTT_BOUNDS_NS, samples["rtt_ns"], side="left")
        groups = np.stack([kind_code, s_leg, s_srv], axis=1)
        uniq, inverse = np.unique(groups, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        nb = _RTT_BOUNDS_NS.shape[0] + 1
        counts = np.bincount(inverse * nb + bucket, minlength=uniq.shape[0] * nb).reshape(-1, nb)
        sums = np.bincount(inverse, weights=samples["rtt_ns"] / 1e9, minlength=uniq.shape[0])
        topo = att.topology
        for g, (k, lg, s) in enumerate(uniq.tolist()):
            server = topo.servers[s] if s >= 0 else None
            name = (f"{server.backend}/{server.name}" if server and server.backend
                    else server.name if server else "")
            key = (RTT_KINDS[k], av.LEG_NAMES[lg], name)
            mine = w.rtt_buckets.get(key)
            w.rtt_buckets[key] = counts[g].copy() if mine is None else mine + counts[g]
            w.rtt_sum_s[key] += float(sums[g])
        for k in (0, 1):
            for lg in np.unique(s_leg[kind_code == k]).tolist():
                values = samples["rtt_ns"][(kind_code == k) & (s_leg == lg)]
                parts = self._window_rtts.setdefault((RTT_KINDS[k], av.LEG_NAMES[lg]), [])
                parts.append(values)
                held = sum(p.shape[0] for p in parts)
                if held > WINDOW_RTT_SAMPLES:
                    merged = np.concatenate(parts)
                    parts[:] = [self._rng.choice(merged, WINDOW_RTT_SAMPLES, replace=False)]


def _grow(mask: np.ndarray, n: int) -> np.ndarray:
    if mask.shape[0] >= n:
        return mask
    return np.concatenate((mask, np.zeros(n - mask.shape[0], bool)))


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values in sorted_set, elementwise (sorted_set sorted ascending)."""
    if sorted_set.shape[0] == 0 or values.shape[0] == 0:
        return np.zeros(values.shape[0], bool)
    pos = np.searchsorted(sorted_set, values)
    pos[pos >= sorted_set.shape[0]] = 0
    return sorted_set[pos] == values

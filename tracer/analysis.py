"""What one capture says, accumulated batch by batch (pure: no I/O).

Rules: `CaptureAnalysis` takes packet batches and decode counts in capture order and keeps
only aggregates, so its memory does not depend on the capture's length. `summary()` returns a
plain dict in the JSON schema (see docs/json-schema.md); the text report is rendered from that
same dict, so the two never disagree. Later stages (flows, attribution) add their own keys.

Attribution needs the finished flow table and a per-flow timeline (tracer.attribution.timeline)
fed from the flow stage's segment rows batch by batch; with it on, memory grows by one flow row
per flow (segment rows are consumed per batch, never kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.attribution import Attribution, Timeline, attribute
from tracer.attribution import summary as attribution_summary
from tracer.attribution.config import Config
from tracer.attribution.prefixes import StreamPrefixes
from tracer.decode.vocab import linktype_name
from tracer.flows import FlowTracker, PreparedPackets
from tracer.flows import vocab as fv
from tracer.flows.tables import RTT_KIND_NAMES, segments_with_packets
from tracer.packet import TCP_FLAG_NAMES, DecodeCounts
from tracer.patterns import Patterns, analyze_patterns
from tracer.patterns.events import SegmentFacts

SCHEMA_VERSION = 1


@dataclass
class AttributionOptions:
    """What the user told us about HAProxy (all optional: without them the topology is
    inferred from the traffic)."""

    config: Config | None = None
    proxy: list[str] | None = None
    log_entries: list | None = None
    enabled: bool = True
    # read what HAProxy writes into server connections about the client (PROXY protocol,
    # forwarded-for, unique id) for the leg join. None: when the config says HAProxy writes
    # some; without a config, while the first streams show some (a probe, see
    # tracer.attribution.prefixes); never with a config that says it writes none.
    payload: bool | None = None

    def wants_payload(self) -> bool:
        if not self.enabled:
            return False
        if self.payload is not None:
            return self.payload
        return self.config is None or self.config.payload_signals

    def probes_payload(self) -> bool:
        return self.payload is None and self.config is None


# The attribution timeline's request/response turns (one per exchange on keep-alive traffic)
# are pruned to those the leg join can still ask about once they pass this many rows; the limit
# then doubles with what is kept, so pruning stays a small share of the work and memory follows
# the open flows, not the capture. Packets of several interfaces may come this much out of
# order: turns later than the newest packet minus this margin are always kept.
TURN_PRUNE_ROWS = 1_000_000
PRUNE_MARGIN_NS = 2_000_000_000


def join_query_times(finished: np.ndarray, tracker, timeline: Timeline) -> np.ndarray:
    """The times the leg join asks the timeline about: each flow's start (its SYN, else its
    first packet) and its first response, for finished flows (FLOW_DTYPE rows) and the
    tracker's open ones."""
    open_ids, open_starts = tracker.open_flow_starts()
    starts = np.where(finished["syn_ts"] >= 0, finished["syn_ts"], finished["first_ts"])
    ids = np.concatenate((finished["flow_id"], open_ids))
    responses = timeline.table(int(ids.max()) if ids.size else -1)["first_data_ts"][ids, 1]
    return np.concatenate((starts, open_starts, responses))


@dataclass
class CaptureAnalysis:
    path: str
    engine: str = "native"
    counts: DecodeCounts = field(default_factory=DecodeCounts)
    ip_versions: dict[int, int] = field(default_factory=dict)
    payload_bytes: int = 0
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    filtered_out: int = 0  # TCP segments decoded but outside --filter
    # Finished-flow rows are not kept: the report needs their counts only (memory stays flat).
    flows: FlowTracker | None = None
    options: AttributionOptions = field(default_factory=AttributionOptions)
    timeline: Timeline = field(default_factory=Timeline)
    attribution: Attribution | None = None
    segment_facts: SegmentFacts = field(default_factory=SegmentFacts)  # for tracer.patterns
    turn_prune_rows: int = TURN_PRUNE_ROWS  # see TURN_PRUNE_ROWS
    _turn_limit: int = 0  # timeline turns held before the next pruning
    patterns: Patterns | None = None
    prefixes: StreamPrefixes | None = None  # with options.wants_payload()

    def __post_init__(self) -> None:
        self._turn_limit = self.turn_prune_rows
        if self.flows is None:
            on = self.options.enabled
            self.flows = FlowTracker(keep_flows=on, keep_segments=on)
        if self.prefixes is None and self.options.wants_payload():
            self.prefixes = StreamPrefixes(probe=self.options.probes_payload())

    def add(self, packets: np.ndarray, counts: DecodeCounts,
            payload: np.ndarray | None = None, *, prepared: PreparedPackets | None = None
            ) -> None:
        """`payload`: decode's payload prefixes of this batch (tracer.decode.payload), when
        options.wants_payload(); `prepared`: the same packets as prepare_packets made them (in
        a reader thread), for a single in-process flow tracker."""
        self.counts.merge(counts)
        if packets.shape[0] == 0:
            return
        self.flows.add(prepared if prepared is not None else packets)
        if self.options.enabled:
            seg, pk = segments_with_packets(packets, self.flows.take_segments())
            self.timeline.add(seg, pk)
            self.segment_facts.add(seg, pk)
            if self.prefixes is not None and payload is not None:
                self.prefixes.add(seg, payload)
            if self.timeline.turn_rows > self._turn_limit and hasattr(self.flows,
                                                                     "open_flow_starts"):
                kept = self.timeline.prune_turns(
                    join_query_times(self.flows.flows, self.flows, self.timeline),
                    self.flows.latest_ts - PRUNE_MARGIN_NS)
                self._turn_limit = max(self.turn_prune_rows, 2 * kept)
        by_version = np.bincount(packets["ip_version"])
        for version in np.flatnonzero(by_version).tolist():
            self.ip_versions[version] = self.ip_versions.get(version, 0) + int(by_version[version])
        fields = prepared if prepared is not None else packets  # dense copies when prepared
        self.payload_bytes += int(fields["payload_len"].sum(dtype=np.int64))
        ts = fields["ts_ns"]
        lo, hi = int(ts.min()), int(ts.max())
        self.first_ts_ns = lo if self.first_ts_ns is None else min(self.first_ts_ns, lo)
        self.last_ts_ns = hi if self.last_ts_ns is None else max(self.last_ts_ns, hi)

    def summary(self, *, capture_format: str | None = None, compressed: bool = False,
                linktypes: list[int] | None = None, leftover_bytes: int = 0,
                reader_anomalies: dict[str, int] | None = None, problem: str | None = None,
                filter_expr: str | None = None) -> dict:
        counts = self.counts
        anomalies = dict(reader_anomalies or {})
        for name, value in counts.anomalies.items():
            anomalies[name] = anomalies.get(name, 0) + value
        kinds = list(linktypes) if linktypes is not None else sorted(counts.linktypes)
        for lt in counts.linktypes:
            if lt not in kinds:
                kinds.append(lt)
        duration = (
            (self.last_ts_ns - self.first_ts_ns) / 1e9 if self.first_ts_ns is not None else 0.0
        )
        self.flows.finish()
        extra = {}
        if self.options.enabled:
            o = self.options
            self.attribution = attribute(self.flows.flows, self.flows.rsts, self.flows.rtts,
                                         self.timeline, config=o.config, proxy=o.proxy,
                                         log_entries=o.log_entries, prefixes=self.prefixes)
            extra = attribution_summary(self.attribution)
            self.patterns = analyze_patterns(
                self.attribution, self.flows.rtts, self.timeline, self.segment_facts,
                config=o.config, first_ts_ns=self.first_ts_ns, last_ts_ns=self.last_ts_ns)
            extra.update(self.patterns.document())
        return {
            "path": self.path,
            "engine": self.engine,
            "format": capture_format,
            "compressed": compressed,
            "link_types": [linktype_name(lt) for lt in kinds],
            "frames_by_link_type": {linktype_name(lt): n for lt, n in sorted(counts.linktypes.items())},
            "packets": counts.frames,
            "tcp_packets": counts.tcp_packets,
            "tcp_packets_filtered_out": self.filtered_out,
            "filter": filter_expr,
            "ip_versions": {f"ipv{k}": v for k, v in sorted(self.ip_versions.items())},
            "tcp_flags": {name: counts.flag_counts.get(name, 0) for name in TCP_FLAG_NAMES},
            "tcp_payload_bytes": self.payload_bytes,
            "non_tcp": dict(sorted(counts.non_tcp.items())),
            "anomalies": dict(sorted(anomalies.items())),
            "leftover_bytes": leftover_bytes,
            "problem": problem,
            "first_ts": self.first_ts_ns / 1e9 if self.first_ts_ns is not None else None,
            "last_ts": self.last_ts_ns / 1e9 if self.last_ts_ns is not None else None,
            "duration_s": duration,
            **flow_summary(self.flows, counts.tcp_packets - self.filtered_out),
            **extra,
        }


PERCENTILES = (50, 90, 99)


def flow_summary(tracker: FlowTracker, tcp_segments: int) -> dict:
    """The flow stage's part of a capture's document (see docs/json-schema.md)."""
    c = tracker.counts
    states = {name: c.states.get(name, 0) for name in fv.FLOW_STATE_NAMES}
    flags = {name: c.segment_flags.get(name, 0) for name in fv.SEGMENT_FLAG_NAMES}
    rsts = tracker.rsts
    by_side: dict[str, int] = {}
    by_phase: dict[str, int] = {}
    by_seq: dict[str, int] = {}
    for column, names, out in (("sender_side", fv.SIDE_NAMES, by_side),
                               ("phase", fv.PHASE_NAMES, by_phase),
                               ("seq_class", fv.SEQ_CLASS_NAMES, by_seq)):
        values, counts = np.unique(rsts[column], return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            out[names[value]] = count
    data_segments = max(c.data_segments, 1)
    return {
        "flows": {
            "total": c.flows,
            "closed_fin": states["closed_fin"],
            "closed_rst": states["closed_rst"],
            "refused": states["refused"],
            "open": states["open"],
            "half_closed": states["half_closed"],
            "handshake_only": states["handshake_only"],
            "midstream": c.midstream,
            "reused_ports": c.reused,
            "hash_collisions": c.hash_collisions,
        },
        "rsts": c.rsts,
        "rsts_by_sender_side": by_side,
        "rsts_by_phase": by_phase,
        "rsts_by_seq_class": by_seq,
        "rsts_with_ack": int(rsts["with_ack"].sum()),
        "retransmissions": flags["retransmission"],
        "retransmission_rate": flags["retransmission"] / data_segments if c.data_segments else 0.0,
        "segment_analysis": flags,
        "loss": {
            # Gaps in a sender's sequence numbers, settled by what happened next: the sender
            # resent the range (lost before the capture point), or the receiver acknowledged
            # past it without a resend (it arrived: the capture missed it).
            "gaps": flags["lost_segment"],
            "lost_before_capture": c.gaps_lost_upstream,
            "missed_by_capture": c.gaps_missed_by_capture,
            "gaps_unsettled": c.gaps_unsettled,
            "capture_duplicates": c.duplicates,
        },
        "rtt_ms": rtt_percentiles(tracker.rtts),
        "rtt_samples_taken": tracker.rtt_samples_seen,
        "tcp_segments_analysed": tcp_segments,
    }


def rtt_percentiles(rtts: np.ndarray) -> dict:
    """p50/p90/p99 (ms) and sample count per RTT kind."""
    out = {}
    for kind, name in enumerate(RTT_KIND_NAMES):
        values = rtts["rtt_ns"][rtts["kind"] == kind]
        entry = {"samples": int(values.shape[0])}
        for pct in PERCENTILES:
            entry[f"p{pct}"] = (float(np.percentile(values, pct)) / 1e6) if values.size else None
        out[name] = entry
    return out

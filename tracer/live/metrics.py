"""The Prometheus endpoint of `tracer live --metrics-port` (the I/O edge).

Rules:
- The numbers are the live run's own aggregates (tracer.live.rolling.Tally, since start),
  exposed by a custom collector: nothing is observed sample by sample in Python, histograms
  are bucket counts made with numpy when flows settle.
- The event loop publishes a snapshot after each interval (`publish`); the HTTP server thread
  only reads the latest snapshot, so a scrape never sees a half-updated tally.
- A registry of its own (plus the process collector, for RSS and CPU), served on 127.0.0.1 by
  default: the endpoint tells who resets whom in production, not something to expose widely.

Metric names (all counters end in _total; RST labels follow tracer.attribution.vocab):
  tracer_rsts_total{leg,sender,cause,reason,routine,frontend,backend,server}  settled RSTs
  tracer_rst_packets_total                       RST segments seen (attributed or not yet)
  tracer_packets_total, tracer_tcp_segments_total
  tracer_flows_total{leg}                        settled flows
  tracer_retransmissions_total{leg}, tracer_lost_segments_total{leg}, tracer_leg_packets_total{leg}
  tracer_dropped_frames_total{by}                by="tracer" (hand-off full), "dumpcap", "kernel"
  tracer_handshake_rtt_seconds{leg,server}, tracer_data_rtt_seconds{leg,server}  histograms
  tracer_unsettled_rsts                          RSTs seen whose attribution is pending
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from tracer.errors import TracerError
from tracer.live.rolling import RST_LABELS, RTT_BUCKETS_S, Tally


class LiveCollector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total: Tally | None = None
        self._drops: dict[str, int] = {}
        self._unsettled = 0

    def publish(self, total: Tally, drops: dict[str, int], unsettled: int) -> None:
        snapshot = Tally()
        snapshot.merge(total)
        with self._lock:
            self._total, self._drops, self._unsettled = snapshot, dict(drops), unsettled

    def collect(self):
        with self._lock:
            total, drops, unsettled = self._total or Tally(), self._drops, self._unsettled
        rsts = CounterMetricFamily("tracer_rsts", "RSTs attributed (settled), by leg, sender, "
                                   "cause, reason, routine, frontend, backend, server",
                                   labels=list(RST_LABELS))
        for key, n in sorted(total.rsts.items()):
            rsts.add_metric(list(key), n)
        yield rsts
        for name, value, doc in (
                ("tracer_rst_packets", total.rst_packets, "RST segments seen"),
                ("tracer_packets", total.frames, "frames read from the capture"),
                ("tracer_tcp_segments", total.tcp_segments, "TCP segments decoded")):
            yield CounterMetricFamily(name, doc, value=value)
        for name, tally, doc in (
                ("tracer_flows", total.flows, "flows settled, by leg"),
                ("tracer_retransmissions", total.retransmissions,
                 "retransmitted segments of settled flows, by leg"),
                ("tracer_lost_segments", total.lost_segments,
                 "sequence gaps (segments lost before the capture point or missed by it), by leg"),
                ("tracer_leg_packets", total.packets_by_leg, "packets of settled flows, by leg")):
            family = CounterMetricFamily(name, doc, labels=["leg"])
            for leg, n in sorted(tally.items()):
                family.add_metric([leg], n)
            yield family
        dropped = CounterMetricFamily("tracer_dropped_frames", "frames not analysed, by who "
                                      "dropped them", labels=["by"])
        for by, n in sorted(drops.items()):
            dropped.add_metric([by], n)
        yield dropped
        yield GaugeMetricFamily("tracer_unsettled_rsts", "RSTs seen, attribution pending",
                                value=unsettled)
        for kind in ("handshake", "data"):
            family = HistogramMetricFamily(f"tracer_{kind}_rtt_seconds",
                                           f"{kind} RTT samples of settled flows",
                                           labels=["leg", "server"])
            for (k, leg, server), counts in sorted(total.rtt_buckets.items()):
                if k != kind:
                    continue
                cumulative = counts.cumsum().tolist()
                buckets = [(repr(b), c) for b, c in zip(RTT_BUCKETS_S, cumulative, strict=False)]
                buckets.append(("+Inf", cumulative[-1]))
                family.add_metric([leg, server], buckets,
                                  sum_value=total.rtt_sum_s[(k, leg, server)])
            yield family


def serve(port: int, address: str = "127.0.0.1") -> tuple[LiveCollector, object]:
    """Start the endpoint; returns the collector to publish to and the server (to shut down)."""
    registry = CollectorRegistry()
    collector = LiveCollector()
    registry.register(collector)
    ProcessCollector(registry=registry)
    try:
        server, _thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise TracerError(f"--metrics-port {port}: cannot listen on {address}:{port} "
                          f"({exc.strerror or exc})") from None
    return collector, server

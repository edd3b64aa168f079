"""Flows (pure, stateful across batches): TCP flow identity, sequence analysis, RTT, RSTs.

See tracer/flows/tracker.py for the theory of operation, tables.py for the layouts of what it
emits and vocab.py for the closed vocabulary of labels.
"""

from tracer.flows.tracker import FlowCounts, FlowTracker, PreparedPackets, prepare_packets

__all__ = ["FlowCounts", "FlowTracker", "PreparedPackets", "prepare_packets"]

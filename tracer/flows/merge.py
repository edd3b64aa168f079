"""Combining the results of several flow trackers that each saw a disjoint set of 4-tuples.

Rules: every packet of a 4-tuple went to the same tracker (tracker.endpoint_shard), so each
flow, with its RSTs and RTT samples, lives in exactly one tracker; only flow ids, counts and the
RTT reservoir need combining. Flow ids are renumbered as one tracker would number them, in
order of each flow's first frame (like tshark's tcp.stream), from the first frames each tracker
reported as it went (FlowTracker.take_new_flows). Pure: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from tracer.flows.tracker import FlowCounts


class FlowNumbering:
    """Global flow ids for the local ids of several trackers, assigned batch by batch."""

    def __init__(self, shards: int) -> None:
        self.maps = [np.zeros(0, np.int64) for _ in range(shards)]
        self.next_id = 0

    def add(self, first_frames: list[np.ndarray]) -> None:
        """The first frames of the flows each tracker started in one batch (local id order)."""
        sizes = [f.shape[0] for f in first_frames]
        total = sum(sizes)
        if total == 0:
            return
        frames = np.concatenate(first_frames)
        # Frames are unique across trackers (each packet went to one), so this order is total.
        rank = np.empty(total, np.int64)
        rank[np.argsort(frames, kind="stable")] = np.arange(total)
        at = 0
        for k, size in enumerate(sizes):
            if size:
                self.maps[k] = np.concatenate((self.maps[k], self.next_id + rank[at:at + size]))
            at += size
        self.next_id += total

    def globalize(self, shard: int, local_ids: np.ndarray) -> np.ndarray:
        return self.maps[shard][local_ids] if local_ids.size else local_ids.astype(np.int64)


def merge_counts(parts: list[FlowCounts]) -> FlowCounts:
    out = FlowCounts()
    for part in parts:
        for f in fields(FlowCounts):
            mine, theirs = getattr(out, f.name), getattr(part, f.name)
            if isinstance(mine, dict):
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value
            else:
                setattr(out, f.name, mine + theirs)
    return out


def merge_reservoirs(parts: list[np.ndarray], seen: list[int], cap: int,
                     rng: np.random.Generator) -> np.ndarray:
    """One uniform sample of at most `cap` rows from per-tracker uniform samples: each tracker
    contributes in proportion to how many samples it saw."""
    total_seen = sum(seen)
    if total_seen <= cap or sum(p.shape[0] for p in parts) <= cap:
        return np.concatenate(parts) if parts else np.zeros(0)
    taken = []
    for part, n_seen in zip(parts, seen, strict=True):
        want = min(part.shape[0], round(cap * n_seen / total_seen))
        taken.append(part[rng.choice(part.shape[0], want, replace=False)] if want else part[:0])
    return np.concatenate(taken)

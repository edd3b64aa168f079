"""The flow stage's endpoint-key table agrees with a dict through inserts, deletes and rebuilds."""

from __future__ import annotations

import numpy as np

from tracer.flows.slots import SlotTable, usable


def test_slot_table_matches_a_dict_through_churn():
    rng = np.random.default_rng(7)
    table, reference = SlotTable(), {}
    for step in range(120):
        keys = np.unique(usable(rng.integers(0, 2**64, rng.integers(0, 2500), dtype=np.uint64)))
        keys = keys[[k not in reference for k in keys.tolist()]]
        slots = rng.integers(0, 10**6, keys.size)
        table.insert(keys, slots)
        reference.update(zip(keys.tolist(), slots.tolist(), strict=True))
        if reference and step % 3 == 0:  # evict a good share: tombstones, then rebuilds
            stored = np.fromiter(reference, np.uint64, len(reference))
            gone = rng.choice(stored, min(stored.size, 1800), replace=False)
            table.delete(gone)
            for key in gone.tolist():
                del reference[key]
        stored = np.fromiter(reference, np.uint64, len(reference))
        absent = usable(rng.integers(0, 2**64, 300, dtype=np.uint64))
        queries = np.concatenate((stored[:3000], absent, np.array([0, 1], np.uint64)))
        expected = [reference.get(k, -1) for k in queries.tolist()]
        assert table.lookup(queries).tolist() == expected, step
        assert table.live == len(reference)
        assert 2 * (table.live + table.dead) <= table.keys.shape[0]  # probe chains stay short


def test_reserved_values_are_moved_off():
    keys = usable(np.array([0, 1, 2, 2**64 - 1], np.uint64))
    assert keys.tolist() == [2, 3, 2, 2**64 - 1]

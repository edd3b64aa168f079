"""Open-addressing hash table from 64-bit endpoint keys to flow-table slots, vectorized.

Theory of operation: a power-of-two table with linear probing. A batch looks up every packet's
key at once: each round gathers the cell each unresolved key points at and keeps probing only
the keys that met a different key (tombstones included), so a batch costs a few whole-array
gathers instead of the sort that `np.unique` over the batch would need. New keys are inserted
in rounds too: where several want the same free cell, the first wins and the others probe on.
Deleting leaves a tombstone (probe chains stay intact); the table is rebuilt when tombstones
and keys together pass half its size, so probe chains stay short.

Rules: keys 0 and 1 are reserved (empty, tombstone): callers map keys through `usable()`.
Pure: arrays in, arrays out, no I/O.
"""

from __future__ import annotations

import numpy as np

EMPTY = np.uint64(0)
TOMBSTONE = np.uint64(1)


def usable(keys: np.ndarray) -> np.ndarray:
    """Keys moved off the two reserved values (a collision this makes is as unlikely as any
    other 64-bit hash collision, and callers check endpoints anyway)."""
    return np.where(keys < np.uint64(2), keys + np.uint64(2), keys)


class SlotTable:
    def __init__(self, capacity: int = 4096) -> None:
        size = 1 << max(12, int(capacity - 1).bit_length())
        self.keys = np.zeros(size, np.uint64)
        self.slots = np.full(size, -1, np.int64)
        self.live = 0  # keys stored
        self.dead = 0  # tombstones

    @property
    def mask(self) -> np.uint64:
        return np.uint64(self.keys.shape[0] - 1)

    def _cells(self, keys: np.ndarray, want_free: bool) -> np.ndarray:
        """Per key: the cell holding it (want_free=False: -1 if absent), or the first free
        cell (empty or tombstone) of its probe chain (want_free=True)."""
        cell = (keys & self.mask).astype(np.int64)
        out = np.full(keys.shape[0], -1, np.int64)
        todo = np.arange(keys.shape[0])
        size_mask = self.keys.shape[0] - 1
        while todo.size:
            held = self.keys[cell[todo]]
            if want_free:
                done = (held == EMPTY) | (held == TOMBSTONE)
            else:
                found = held == keys[todo]
                out[todo[found]] = cell[todo[found]]
                done = found | (held == EMPTY)
            if want_free:
                out[todo[done]] = cell[todo[done]]
            todo = todo[~done]
            cell[todo] = (cell[todo] + 1) & size_mask
        return out

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, -1 where absent."""
        cells = self._cells(keys, want_free=False)
        out = np.full(keys.shape[0], -1, np.int64)
        hit = cells >= 0
        out[hit] = self.slots[cells[hit]]
        return out

    def insert(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Insert distinct keys not in the table."""
        if keys.size == 0:
            return
        if 2 * (self.live + self.dead + keys.size) > self.keys.shape[0]:
            self._rebuild(self.live + keys.size)
        todo = np.arange(keys.size)
        while todo.size:
            cells = self._cells(keys[todo], want_free=True)
            # Several keys may have found the same free cell: the first of each takes it.
            _, first = np.unique(cells, return_index=True)
            won = todo[first]
            taken = cells[first]
            self.dead -= int(np.count_nonzero(self.keys[taken] == TOMBSTONE))
            self.keys[taken] = keys[won]
            self.slots[taken] = slots[won]
            self.live += won.size
            lost = np.ones(todo.size, bool)
            lost[first] = False
            todo = todo[lost]

    def delete(self, keys: np.ndarray) -> None:
        cells = self._cells(keys, want_free=False)
        cells = cells[cells >= 0]
        self.keys[cells] = TOMBSTONE
        self.slots[cells] = -1
        self.live -= cells.size
        self.dead += cells.size
        if self.dead > self.keys.shape[0] // 4:
            self._rebuild(self.live)

    def _rebuild(self, expected: int) -> None:
        keep = self.keys >= np.uint64(2)
        keys, slots = self.keys[keep], self.slots[keep]
        size = 1 << max(12, int(4 * max(expected, 1) - 1).bit_length())
        self.keys = np.zeros(size, np.uint64)
        self.slots = np.full(size, -1, np.int64)
        self.live = self.dead = 0
        self.insert(keys, slots)

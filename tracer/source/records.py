"""Finding record boundaries in a capture buffer without a per-record Python loop.

Theory of operation. Capture files are a linked list: each record's length field says where the
next one starts, so the boundaries cannot be computed independently. We cut the buffer into
segments of `SEGMENT_BYTES` and *guess* a record start near the beginning of each segment (a
position whose header is plausible and whose next few successors are plausible too). Then all
segments are walked in lockstep, one numpy step advancing every cursor by one record, until each
cursor reaches the next segment's guess. A guess is trusted only if the walk from the verified
segment before it lands on it exactly; a wrong guess is discarded and the walk resumes from the
verified position. Guessing therefore only buys parallelism: the result is always the true chain
that a sequential reader would find, including where it stops (an incomplete record at the end of
the buffer, or a corrupt length).

Rules:
- `RecordLayout` describes a format as data: where the length field is, how the record length
  follows from it, and what a plausible header looks like (for guessing) versus a valid one
  (for walking).
- The walk never reads past `end`; a record is returned only if it lies entirely before `end`.
- A record whose length is invalid stops the walk; the caller reports its offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SEGMENT_BYTES = 32 * 1024
GUESS_WINDOW = 1024  # bytes searched for a plausible start at the head of each segment
GUESS_HOPS = 3  # successors a guess must also look plausible at
MAX_GUESS_FAILURES = 8  # after this many wrong guesses in one call, walk without guessing


def unaligned_view(buf: np.ndarray, dtype: str) -> np.ndarray:
    """Element i is the `dtype` value starting at byte i of `buf` (overlapping, unaligned).

    Reading many fields at arbitrary byte offsets is then one fancy-index gather each.
    """
    width = np.dtype(dtype).itemsize
    count = max(buf.shape[0] - width + 1, 0)
    return np.ndarray((count,), dtype=dtype, buffer=buf, strides=(1,))


def read_u32(buf: np.ndarray, offsets: np.ndarray, little: bool) -> np.ndarray:
    """Unaligned 32-bit reads at many offsets of a uint8 buffer, as native uint32."""
    return unaligned_view(buf, "<u4" if little else ">u4")[offsets].astype(np.uint32, copy=False)


def read_u16(buf: np.ndarray, offsets: np.ndarray, little: bool) -> np.ndarray:
    return unaligned_view(buf, "<u2" if little else ">u2")[offsets].astype(np.uint32)


@dataclass(frozen=True)
class RecordLayout:
    """How to walk one format.

    `length_of(buf, offsets)` returns each record's total length (header included) as int64;
    `length_ok(lengths)` rejects impossible lengths and `valid(buf, offsets, lengths)` checks a
    whole record that fits in the buffer (False in either = corrupt, the walk stops); `plausible(buf, offsets, lengths)` is the stricter test
    used for guessing boundaries inside unknown territory. `header_bytes` must be readable at
    an offset before `length_of` may be called there; `alignment` restricts guesses.
    """

    header_bytes: int
    length_of: Callable[[np.ndarray, np.ndarray], np.ndarray]
    length_ok: Callable[[np.ndarray], np.ndarray]
    valid: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    plausible: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    alignment: int = 1
    # Records of these first-u32 values end a walk (pcapng section headers change byte order).
    barrier: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    # `valid` needs the whole record (a trailer to check); otherwise it is never called.
    check_tail: bool = False
    # Bytes that most record headers share with the first one, as (offset in the header, byte
    # values), read from the first record: guessing looks only where they occur.
    signature: Callable[[np.ndarray, int], tuple[int, bytes]] | None = None


@dataclass
class WalkResult:
    starts: np.ndarray  # int64 offsets of complete, valid records, increasing
    stop: int  # offset just past the last returned record
    corrupt: bool  # True if the record at `stop` has an invalid length
    barrier: bool  # True if the record at `stop` is a barrier (returned separately)


def walk_records(
    buf: np.ndarray, start: int, end: int, layout: RecordLayout, base_offset: int = 0
) -> WalkResult:
    """All record starts in buf[start:end), beginning at the true boundary `start`.

    `base_offset` is the stream offset of buf[0]; it only matters for `layout.alignment`.
    """
    found: list[np.ndarray] = []
    failures = 0
    while True:
        guesses = (
            _guess_starts(buf, start, end, layout, base_offset)
            if failures < MAX_GUESS_FAILURES
            else np.empty(0, np.int64)
        )
        cursors_start = np.concatenate(([start], guesses)).astype(np.int64)
        limits = np.concatenate((guesses, [end])).astype(np.int64)
        seg, pos, final, state = _lockstep(buf, cursors_start, limits, end, layout)
        # Accept segments in order while each one's walk lands exactly on the next guess.
        lands = (state[:-1] == _REACHED) & (final[:-1] == cursors_start[1:])
        misses = np.flatnonzero(~lands)
        last = int(misses[0]) if misses.size else len(cursors_start) - 1
        accepted = seg <= last
        order = np.argsort(seg[accepted], kind="stable")  # walk order within each segment
        found.append(pos[accepted][order])
        if state[last] == _REACHED and last < len(cursors_start) - 1:
            # The walk of a verified segment overshot the next guess: the guess was wrong.
            failures += 1
            start = int(final[last])
            continue
        stop = int(final[last])
        starts = np.concatenate(found) if found else np.empty(0, np.int64)
        return WalkResult(
            starts=starts,
            stop=stop,
            corrupt=state[last] == _CORRUPT,
            barrier=state[last] == _BARRIER,
        )


_REACHED, _INCOMPLETE, _CORRUPT, _BARRIER = 0, 1, 2, 3


def _lockstep(
    buf: np.ndarray,
    starts: np.ndarray,
    limits: np.ndarray,
    end: int,
    layout: RecordLayout,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Walk every segment from its start until its cursor reaches its limit.

    Returns (segment of each record walked, its offset) in walk order, each segment's final
    cursor, and why it stopped: _REACHED (cursor >= limit), _INCOMPLETE (the next record does
    not fit before `end`), _CORRUPT (invalid length), _BARRIER (a barrier record).
    """
    nseg = len(starts)
    cursor = starts.copy()
    state = np.full(nseg, -1, np.int8)
    steps_seg: list[np.ndarray] = []
    steps_pos: list[np.ndarray] = []
    active = np.arange(nseg)
    readable_end = max(end - layout.header_bytes, 0)
    while active.size:
        pos = cursor[active]
        reached = pos >= limits[active]
        if reached.any():
            state[active[reached]] = _REACHED
            active, pos = active[~reached], pos[~reached]
            if not active.size:
                break
        # Read every length at once (clamped so the read is safe), then sort out the rare
        # records that are not simply "fits, plausible length, not a barrier".
        length = layout.length_of(buf, np.minimum(pos, readable_end))
        following = pos + length
        normal = (following <= end) & layout.length_ok(length) & (pos <= readable_end)
        if layout.barrier is not None:
            normal &= ~layout.barrier(buf, np.minimum(pos, readable_end))
        if not normal.all():
            odd = ~normal
            odd_state = _classify(buf, pos[odd], length[odd], end, layout)
            state[active[odd]] = odd_state
            active, pos, length, following = (
                active[normal], pos[normal], length[normal], following[normal]
            )
        if layout.check_tail:
            ok = layout.valid(buf, pos, length)
            if not ok.all():
                state[active[~ok]] = _CORRUPT
                active, pos, following = active[ok], pos[ok], following[ok]
        steps_seg.append(active)
        steps_pos.append(pos)
        cursor[active] = following
    seg = np.concatenate(steps_seg) if steps_seg else np.empty(0, np.int64)
    pos = np.concatenate(steps_pos) if steps_pos else np.empty(0, np.int64)
    return seg, pos, cursor, state


def _classify(buf, pos, length, end, layout) -> np.ndarray:
    """Why records off the normal path stop their walk."""
    out = np.full(pos.shape, _INCOMPLETE, np.int8)  # header or body runs past `end`
    has_header = pos + layout.header_bytes <= end
    if layout.barrier is not None and has_header.any():
        barrier = np.zeros(pos.shape, bool)
        barrier[has_header] = layout.barrier(buf, pos[has_header])
        out[barrier] = _BARRIER
        has_header &= ~barrier
    out[has_header & ~layout.length_ok(length)] = _CORRUPT
    return out


def _guess_starts(
    buf: np.ndarray, start: int, end: int, layout: RecordLayout, base_offset: int
) -> np.ndarray:
    """One plausible record start near the head of each segment after the first (or none)."""
    span = end - start
    nseg = span // SEGMENT_BYTES
    if nseg < 2:
        return np.empty(0, np.int64)
    heads = start + SEGMENT_BYTES * np.arange(1, nseg, dtype=np.int64)
    align = layout.alignment
    if align > 1:
        heads += (-(heads + base_offset)) % align
    if layout.signature is not None and start + layout.header_bytes <= end:
        cand = _signature_candidates(buf, start, end, heads, layout)
    else:
        step = np.arange(0, GUESS_WINDOW, align, dtype=np.int64)
        cand = (heads[:, None] + step[None, :]).ravel()
    cand = cand[cand + layout.header_bytes <= end]
    # Cheapest test first: most byte positions fail on the length field alone.
    cand = cand[layout.length_ok(layout.length_of(buf, cand))]
    ok = np.ones(cand.shape, bool)
    pos = cand
    for _ in range(GUESS_HOPS + 1):
        live = ok & (pos + layout.header_bytes <= end)
        if not live.any():
            break  # every surviving chain ran into the end of the buffer: as good as it gets
        idx = np.flatnonzero(live)
        length = layout.length_of(buf, pos[idx]).astype(np.int64)
        fits = layout.length_ok(length) & (pos[idx] + length <= end)
        good = np.zeros(idx.shape, bool)
        if fits.any():
            good[fits] = layout.plausible(buf, pos[idx][fits], length[fits])
        # A chain leaving the buffer mid-record cannot be checked further, so it is not kept.
        ok[idx] = good
        pos = pos.copy()
        pos[idx] = pos[idx] + length
    if not ok.any():
        return np.empty(0, np.int64)
    good_cand = cand[ok]
    seg_of = (good_cand - start) // SEGMENT_BYTES
    first = np.unique(seg_of, return_index=True)[1]
    return good_cand[first]


def _signature_candidates(buf, start, end, heads, layout) -> np.ndarray:
    """Positions in each segment's guess window where the signature bytes occur."""
    at, sig = layout.signature(buf, start)
    heads = heads[heads + GUESS_WINDOW + at + len(sig) <= end]
    if heads.size == 0:
        return np.empty(0, np.int64)
    block = sliding_window_view(buf, GUESS_WINDOW + at + len(sig))[heads]
    hit = np.ones((heads.shape[0], GUESS_WINDOW), bool)
    for i, value in enumerate(sig):
        hit &= block[:, at + i : at + i + GUESS_WINDOW] == value
    if layout.alignment > 1:
        hit[:, np.arange(GUESS_WINDOW) % layout.alignment != 0] = False
    flat = np.flatnonzero(hit)
    return heads[flat // GUESS_WINDOW] + flat % GUESS_WINDOW

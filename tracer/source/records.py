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

Cost model. A lockstep step costs a few numpy calls whatever the number of cursors, so the walk
costs (records x one gather) + (steps x call overhead), and the number of steps is the record
count of the busiest segment. Two things keep that small: the guess window is wider than the
largest common record (an Ethernet frame plus its record header), so nearly every segment gets
its own cursor; and a step screens all cursors with a couple of whole-array reductions, leaving
per-cursor classification to the rare steps where something is odd (a length out of range, a
record running past the buffer, a pcapng section header).

Rules:
- `RecordLayout` describes a format as data: where the length field is, how the record length
  follows from it, which lengths are valid, and what a plausible header looks like (for
  guessing) versus a valid one (for walking).
- The walk never reads past `end`; a record is returned only if it lies entirely before `end`.
- A record whose length is invalid (or whose trailer does not match, for formats that have one)
  stops the walk; the caller reports its offset.
- The walk returns each record's header bytes along with its offset: reading the whole header
  costs a step no more than reading the length alone, and spares the caller another pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SEGMENT_BYTES = 32 * 1024
# Bytes searched for a plausible start at the head of each segment: more than the longest common
# record (a 1514-byte Ethernet frame + 34 bytes of pcapng EPB overhead), so that a segment full
# of them still gets a guess.
GUESS_WINDOW = 1600
GUESS_HOPS = 3  # successors a guess must also look plausible at
MAX_GUESS_FAILURES = 8  # after this many wrong guesses in one call, walk without guessing


def unaligned_view(buf: np.ndarray, dtype: str, skip: int = 0) -> np.ndarray:
    """Element i is the `dtype` value starting at byte i + skip of `buf` (overlapping, unaligned).

    Reading many fields at arbitrary byte offsets is then one fancy-index gather each.
    """
    width = np.dtype(dtype).itemsize
    count = max(buf.shape[0] - skip - width + 1, 0)
    if count == 0:
        return np.zeros(0, dtype)
    return np.ndarray((count,), dtype=dtype, buffer=buf, offset=skip, strides=(1,))


def read_u32(buf: np.ndarray, offsets: np.ndarray, little: bool) -> np.ndarray:
    """Unaligned 32-bit reads at many offsets of a uint8 buffer, as native uint32."""
    return unaligned_view(buf, "<u4" if little else ">u4")[offsets].astype(np.uint32, copy=False)


def read_u16(buf: np.ndarray, offsets: np.ndarray, little: bool) -> np.ndarray:
    return unaligned_view(buf, "<u2" if little else ">u2")[offsets].astype(np.uint32)


def gather_padded(buf: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """buf[o : o + width] for each offset as one `V<width>` value, zero past the end of buf."""
    size = buf.shape[0]
    if offsets.shape[0] == 0:
        return np.zeros(0, f"V{width}")
    if int(offsets.max()) <= size - width:
        return unaligned_view(buf, f"V{width}")[offsets]
    tail_from = max(int(offsets.min()), 0)
    padded = np.zeros(size - tail_from + width, np.uint8)
    padded[: size - tail_from] = buf[tail_from:]
    return unaligned_view(padded, f"V{width}")[np.minimum(offsets, size) - tail_from]


@dataclass(frozen=True)
class RecordLayout:
    """How to walk one format.

    A record's total length (header included) is the u32 at `length_at` plus `length_bias`; it
    is valid if it lies in [min_length, max_length] and is a multiple of `length_multiple`.
    `valid(buf, offsets, lengths)` checks a whole record that fits in the buffer (a trailer), if
    `check_tail`; an invalid length or a failed check is corruption and the walk stops there.
    `plausible(buf, offsets, lengths, headers)` is the stricter test used for guessing
    boundaries inside unknown territory (`headers`: each record's header bytes, one opaque
    `V<header_bytes>` value per record). `header_bytes` must be readable at an offset before
    its length may be read; `alignment` restricts guesses.
    """

    header_bytes: int
    length_at: int
    length_bias: int
    little: bool
    max_length: int
    plausible: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    min_length: int = 0
    length_multiple: int = 1
    alignment: int = 1
    # Given record headers (`V<header_bytes>` values), True where a record ends a walk (pcapng
    # section headers change byte order).
    barrier: Callable[[np.ndarray], np.ndarray] | None = None
    # `valid` needs the whole record (a trailer to check); otherwise it is never called. It is
    # applied to the chain once walked (see walk_records).
    check_tail: bool = False
    valid: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
    # Bytes that most record headers share with the first one, as (offset in the header, byte
    # values), read from the first record: guessing looks only where they occur.
    signature: Callable[[np.ndarray, int], tuple[int, bytes]] | None = None

    def header_view(self, buf: np.ndarray) -> np.ndarray:
        """Element p is the header of a record starting at byte p, as one opaque value."""
        return unaligned_view(buf, f"V{self.header_bytes}")

    def header_length_field(self) -> np.dtype:
        """A dtype that reads only the length field out of a header value."""
        return np.dtype(
            {
                "names": ["length"],
                "formats": ["<u4" if self.little else ">u4"],
                "offsets": [self.length_at],
                "itemsize": self.header_bytes,
            }
        )

    def length_ok(self, length: np.ndarray) -> np.ndarray:
        ok = (length >= self.min_length) & (length <= self.max_length)
        if self.length_multiple > 1:
            ok &= length % self.length_multiple == 0
        return ok


@dataclass
class WalkResult:
    starts: np.ndarray  # int64 offsets of complete, valid records, increasing
    headers: np.ndarray  # each record's header bytes (dtype V<header_bytes>), same order
    stop: int  # offset just past the last returned record
    corrupt: bool  # True if the record at `stop` has an invalid length or fails `valid`
    barrier: bool  # True if the record at `stop` is a barrier (returned separately)


def walk_records(
    buf: np.ndarray, start: int, end: int, layout: RecordLayout, base_offset: int = 0
) -> WalkResult:
    """All record starts in buf[start:end), beginning at the true boundary `start`.

    `base_offset` is the stream offset of buf[0]; it only matters for `layout.alignment`.
    """
    found: list[np.ndarray] = []
    found_headers: list[np.ndarray] = []
    failures = 0
    while True:
        guesses = (
            _guess_starts(buf, start, end, layout, base_offset)
            if failures < MAX_GUESS_FAILURES
            else np.empty(0, np.int64)
        )
        cursors_start = np.concatenate(([start], guesses)).astype(np.int64)
        limits = np.concatenate((guesses, [end])).astype(np.int64)
        seg, pos, headers, final, state = _lockstep(buf, cursors_start, limits, end, layout)
        # Accept segments in order while each one's walk lands exactly on the next guess.
        lands = (state[:-1] == _REACHED) & (final[:-1] == cursors_start[1:])
        misses = np.flatnonzero(~lands)
        last = int(misses[0]) if misses.size else len(cursors_start) - 1
        if last < len(cursors_start) - 1:
            accepted = seg <= last
            seg, pos, headers = seg[accepted], pos[accepted], headers[accepted]
        # Walk order within each segment; segment numbers fit 16 bits nearly always, where a
        # stable sort is a radix sort.
        key = seg.astype(np.uint16) if len(cursors_start) <= 0x10000 else seg
        order = np.argsort(key, kind="stable")
        found.append(pos[order])
        found_headers.append(headers[order])
        if state[last] == _REACHED and last < len(cursors_start) - 1:
            # The walk of a verified segment overshot the next guess: the guess was wrong.
            failures += 1
            start = int(final[last])
            continue
        stop = int(final[last])
        starts = np.concatenate(found) if len(found) > 1 else found[0]
        headers = np.concatenate(found_headers) if len(found) > 1 else found_headers[0]
        corrupt, barrier = bool(state[last] == _CORRUPT), bool(state[last] == _BARRIER)
        if layout.check_tail and starts.size:
            # Trailers are checked once the chain is known, all at once: the walk stops at the
            # first record that fails, as a sequential reader would.
            lengths = headers.view(layout.header_length_field())["length"].astype(np.int64)
            ok = layout.valid(buf, starts, lengths + layout.length_bias)
            if not ok.all():
                first_bad = int(np.argmin(ok))
                stop, corrupt, barrier = int(starts[first_bad]), True, False
                starts, headers = starts[:first_bad], headers[:first_bad]
        return WalkResult(
            starts=starts, headers=headers, stop=stop, corrupt=corrupt, barrier=barrier
        )


_REACHED, _INCOMPLETE, _CORRUPT, _BARRIER = 0, 1, 2, 3


def _lockstep(
    buf: np.ndarray,
    starts: np.ndarray,
    limits: np.ndarray,
    end: int,
    layout: RecordLayout,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Walk every segment from its start until its cursor reaches its limit.

    Returns (segment of each record walked, its offset, its header) in walk order (a step reads
    the whole header: it costs no more than the length field alone), each segment's final
    cursor, and why it stopped: _REACHED (cursor >= limit), _INCOMPLETE (the next record does
    not fit before `end`), _CORRUPT (invalid length), _BARRIER (a barrier record).

    Every limit but the last is a guess, and guesses have a readable header, so only the last
    segment's cursor can sit where a header does not fit; it is checked on its own.
    """
    nseg = starts.shape[0]
    final = starts.copy()
    state = np.full(nseg, _REACHED, np.int8)
    readable_end = end - layout.header_bytes
    header_view = layout.header_view(buf)
    length_field = layout.header_length_field()
    bias = layout.length_bias
    max_field = layout.max_length - bias
    min_field = layout.min_length - bias
    multiple = layout.length_multiple
    screen_min = min_field > 0
    screen_multiple = multiple > 1
    steps_ids: list[np.ndarray] = []
    steps_pos: list[np.ndarray] = []
    steps_headers: list[np.ndarray] = []
    ids = np.arange(nseg)
    pos = starts.copy()
    lim = limits
    last_seg = nseg - 1
    while True:
        done = pos >= lim
        if done.any():
            final[ids[done]] = pos[done]
            keep = ~done
            ids, pos, lim = ids[keep], pos[keep], lim[keep]
            if not ids.size:
                break
        if ids[-1] == last_seg and pos[-1] > readable_end:
            # The last segment's next header runs past the end of the buffer.
            final[last_seg], state[last_seg] = pos[-1], _INCOMPLETE
            ids, pos, lim = ids[:-1], pos[:-1], lim[:-1]
            if not ids.size:
                break
        headers = header_view[pos]
        field = headers.view(length_field)["length"]
        following = pos + field
        if bias:
            following += bias
        # Screen the whole step with reductions; classify cursors only when something is odd.
        odd = (
            int(field.max()) > max_field
            or int(following.max()) > end
            or (screen_min and int(field.min()) < min_field)
            or (screen_multiple and _not_all_multiples(field, multiple))
        )
        barrier = layout.barrier(headers) if layout.barrier is not None else None
        if odd or (barrier is not None and barrier.any()):
            length = following - pos
            normal = (following <= end) & layout.length_ok(length)
            if barrier is not None:
                normal &= ~barrier
            stopped = ~normal
            odd_pos = pos[stopped]
            final[ids[stopped]] = odd_pos
            state[ids[stopped]] = _classify(odd_pos, length[stopped], headers[stopped], end,
                                            layout)
            ids, pos, lim, following = ids[normal], pos[normal], lim[normal], following[normal]
            headers = headers[normal]
        if not ids.size:
            break
        steps_ids.append(ids)
        steps_pos.append(pos)
        steps_headers.append(headers)
        pos = following
    if not steps_ids:
        return (np.empty(0, np.int64), np.empty(0, np.int64), header_view[:0], final, state)
    seg = np.concatenate(steps_ids)
    pos = np.concatenate(steps_pos)
    headers = np.concatenate(steps_headers)
    return seg, pos, headers, final, state


def _not_all_multiples(values: np.ndarray, multiple: int) -> bool:
    if multiple & (multiple - 1) == 0:  # a power of two: one reduction over the low bits
        return bool(int(np.bitwise_or.reduce(values)) & (multiple - 1))
    return bool((values % multiple).any())


def _classify(pos, length, headers, end, layout) -> np.ndarray:
    """Why records off the normal path stop their walk (their header is readable)."""
    out = np.full(pos.shape, _INCOMPLETE, np.int8)  # the body runs past `end`
    has_header = pos + layout.header_bytes <= end
    if layout.barrier is not None and has_header.any():
        barrier = np.zeros(pos.shape, bool)
        barrier[has_header] = layout.barrier(headers[has_header])
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
    # Follow each candidate's chain for a few hops, reading each header in one gather.
    header_view = layout.header_view(buf)
    length_field = layout.header_length_field()
    ok = np.ones(cand.shape, bool)
    pos = cand
    for _ in range(GUESS_HOPS + 1):
        live = ok & (pos + layout.header_bytes <= end)
        if not live.any():
            break  # every surviving chain ran into the end of the buffer: as good as it gets
        idx = np.flatnonzero(live)
        at = pos[idx]
        header = header_view[at]
        length = header.view(length_field)["length"].astype(np.int64)
        length += layout.length_bias
        fits = layout.length_ok(length) & (at + length <= end)
        good = np.zeros(idx.shape, bool)
        if fits.any():
            good[fits] = layout.plausible(buf, at[fits], length[fits], header[fits])
        # A chain leaving the buffer mid-record cannot be checked further, so it is not kept.
        ok[idx] = good
        pos = pos.copy()
        pos[idx] = at + length
    if not ok.any():
        return np.empty(0, np.int64)
    good_cand = cand[ok]
    seg_of = (good_cand - start) // SEGMENT_BYTES
    if GUESS_WINDOW <= SEGMENT_BYTES:  # windows do not overlap: candidates come sorted
        first = np.flatnonzero(np.diff(seg_of, prepend=-1))
    else:
        first = np.unique(seg_of, return_index=True)[1]
    return good_cand[first]


def _signature_candidates(buf, start, end, heads, layout) -> np.ndarray:
    """Positions in each segment's guess window where the signature bytes occur, in order."""
    at, sig = layout.signature(buf, start)
    heads = heads[heads + GUESS_WINDOW + at + len(sig) <= end]
    if heads.size == 0:
        return np.empty(0, np.int64)
    align = layout.alignment
    if SEGMENT_BYTES % align == 0 and GUESS_WINDOW % align == 0 and len(sig) in (2, 4):
        # Heads are evenly spaced, so every window is a row of one strided view: nothing is
        # copied. A 4-byte aligned signature is compared as one integer per position; a 2-byte
        # one by a single byte first (a fast byte compare), then the other byte at the hits.
        # The first byte is one >= 0x80 if the signature has one: rarer in text payloads.
        width = GUESS_WINDOW // align
        if len(sig) == 4:
            rows = np.ndarray((heads.shape[0], width), dtype="<u4", buffer=buf,
                              offset=int(heads[0]) + at, strides=(SEGMENT_BYTES, align))
            flat = np.flatnonzero(rows == int.from_bytes(sig, "little"))
            return heads[flat // width] + (flat % width) * align
        key = 0 if sig[0] >= 0x80 or sig[1] < 0x80 else 1
        rows = np.ndarray((heads.shape[0], width), dtype=np.uint8, buffer=buf,
                          offset=int(heads[0]) + at + key, strides=(SEGMENT_BYTES, align))
        flat = np.flatnonzero(rows == sig[key])
        cand = heads[flat // width] + (flat % width) * align
        other = 1 - key
        return cand[buf[cand + at + other] == sig[other]]
    block = sliding_window_view(buf, GUESS_WINDOW + at + len(sig))[heads]
    hit = np.ones((heads.shape[0], GUESS_WINDOW), bool)
    for i, value in enumerate(sig):
        hit &= block[:, at + i : at + i + GUESS_WINDOW] == value
    if align > 1:
        hit[:, np.arange(GUESS_WINDOW) % align != 0] = False
    flat = np.flatnonzero(hit)
    return heads[flat // GUESS_WINDOW] + flat % GUESS_WINDOW

"""The reader thread works ahead of the consumer (tracer.pipeline.consume).

The offline pipeline reads and decodes in a worker thread while the event loop runs the flow
stage on the previous batch. These tests pin the hand-over: the reader must not wait for the
consumer to finish handling the item it just handed over, must stay within QUEUE_BATCHES items
ahead, and errors on either side end both without a hang.
"""

from __future__ import annotations

import threading
import time

import pytest

from tracer.pipeline import QUEUE_BATCHES, consume, run


def test_reader_works_ahead_while_an_item_is_handled():
    made: list[float] = []
    handled: list[tuple[float, float]] = []

    def items():
        for i in range(6):
            made.append(time.perf_counter())
            yield i

    def handle(item) -> None:
        start = time.perf_counter()
        time.sleep(0.2)  # a slow flow stage (sleep lets the reader thread run)
        handled.append((start, time.perf_counter()))

    run(consume(items, handle))
    assert len(handled) == 6
    _, first_end = handled[0]
    # Before item 0 was handled, the reader had produced the next ones (up to the bound).
    ahead = [t for t in made[1:] if t < first_end]
    assert len(ahead) >= 2, (made, handled)


def test_reader_stays_within_the_bound():
    produced = 0
    most_ahead = 0
    taken = 0
    lock = threading.Lock()

    def items():
        nonlocal produced, most_ahead
        for i in range(40):
            with lock:
                produced += 1
                most_ahead = max(most_ahead, produced - taken)
            yield i

    def handle(item) -> None:
        nonlocal taken
        time.sleep(0.01)
        with lock:
            taken += 1

    run(consume(items, handle))
    assert taken == 40
    # QUEUE_BATCHES waiting, one being handled, one being made.
    assert most_ahead <= QUEUE_BATCHES + 2


def test_consumer_error_stops_the_reader():
    stopped_after: list[int] = []

    def items():
        i = 0
        try:
            while i < 10_000:  # bounded: the test fails rather than hangs
                yield i
                i += 1
        finally:
            stopped_after.append(i)

    def handle(item) -> None:
        if item == 3:
            raise ValueError("flow stage failed")

    started = time.perf_counter()
    with pytest.raises(ValueError, match="flow stage failed"):
        run(consume(items, handle))
    assert time.perf_counter() - started < 5
    assert stopped_after and stopped_after[0] <= 3 + QUEUE_BATCHES + 2


def test_reader_error_reaches_the_consumer():
    def items():
        yield 1
        raise OSError("read failed")

    seen = []
    with pytest.raises(OSError, match="read failed"):
        run(consume(items, seen.append))
    assert seen == [1]

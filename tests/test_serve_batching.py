"""The batcher alone (no model, no HTTP): how it cuts concurrent requests into forward passes."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from finbert2.serve.batching import Batcher
from finbert2.serve.metrics import ServerMetrics


def run_requests(first: list[int], later: list[list[int]] = (), max_batch_tokens: int = 1000,
                 min_fill: float = 0.5):
    """Submit the ``first`` request (its rows' lengths), then, while its first forward pass runs, the
    ``later`` ones (that pass waits until they are queued: no timing involved). The lengths in every
    forward pass (longest first), and each request's outputs (the forward answers each row with its length)."""
    passes: list[list[int]] = []
    later_queued = threading.Event()

    def forward(rows: list[list[int]]) -> list[int]:
        passes.append(sorted((len(r) for r in rows), reverse=True))  # the order inside a pass is free
        later_queued.wait(timeout=30)
        return [len(r) for r in rows]

    async def scenario():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher("m", forward, executor, ServerMetrics(), max_batch_tokens, wait_seconds=0.002,
                          min_fill=min_fill)
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit([[7] * n for n in first]))]
        while not passes:  # the first pass has started
            await asyncio.sleep(0.001)
        tasks += [asyncio.ensure_future(batcher.submit([[7] * n for n in lengths])) for lengths in later]
        await asyncio.sleep(0)  # let them reach the queue
        later_queued.set()
        outputs = [await t for t in tasks]
        await batcher.stop()
        executor.shutdown()
        return outputs

    return passes, asyncio.run(scenario())


def test_short_inputs_do_not_pad_to_a_long_ones_width():
    passes, outputs = run_requests([40, 3, 38, 2], min_fill=0.5)
    assert passes == [[40, 38], [3, 2]] and outputs == [[40, 3, 38, 2]]
    passes, _ = run_requests([40, 3, 38, 2], min_fill=0.0)  # no fill rule: one pass of 4 x 40 tokens
    assert passes == [[40, 38, 3, 2]]
    passes, _ = run_requests([40, 3, 38, 2], max_batch_tokens=80, min_fill=0.0)  # the token budget still cuts
    assert passes == [[40, 38], [3, 2]]


def test_inputs_that_arrive_during_a_pass_join_the_next_cut_oldest_first():
    # Request A's long input runs first; B arrives during that pass. The next pass holds A's leftover short
    # input (the oldest) together with B's input of its length, and B's long input runs last.
    passes, outputs = run_requests([10, 2], [[9, 3]])
    assert passes == [[10], [3, 2], [9]]
    assert outputs == [[10, 2], [9, 3]]


def test_the_oldest_input_is_not_starved_by_newer_longer_ones():
    # A short input waits while four long requests arrive: the next pass is the one holding the oldest input,
    # not the fuller batch of long ones.
    passes, outputs = run_requests([50, 4], [[48], [48], [48], [48]])
    assert passes == [[50], [4], [48, 48, 48, 48]]
    assert outputs == [[50, 4], [48], [48], [48], [48]]

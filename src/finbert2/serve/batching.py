"""Dynamic batching: inputs of concurrent requests run together, in forward passes bounded by a token budget.

Requests hand in token id lists (already tokenized, off the event loop). The batcher waits a few
milliseconds for more, sorts what it holds by length, cuts it into batches whose padded size stays
within ``max_batch_tokens`` and whose inputs fill at least ``min_fill`` of their width (so a batch pads
little), and runs the batch holding the oldest input in the one model thread (the event loop keeps
answering meanwhile); then it cuts again, with the requests that arrived during that pass. A request whose client went away is cancelled; its inputs not yet
run are dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from finbert2.retrieve.encoder import token_budget_batches
from finbert2.serve.metrics import ServerMetrics


@dataclass
class _Pending:
    rows: list[list[int]]
    future: asyncio.Future
    submitted: float
    outputs: list = field(default_factory=list)
    remaining: int = 0
    started: bool = False


class Batcher:
    """Batches the forward passes of one model; ``await submit(rows)`` -> one output per row."""

    def __init__(self, name: str, forward: Callable[[list[list[int]]], np.ndarray], executor: Executor,
                 metrics: ServerMetrics, max_batch_tokens: int, wait_seconds: float, min_fill: float = 0.0):
        self.name, self.forward, self.executor, self.metrics = name, forward, executor, metrics
        self.max_batch_tokens, self.wait_seconds, self.min_fill = max_batch_tokens, wait_seconds, min_fill
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.queued_inputs = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def submit(self, rows: list[list[int]]) -> list:
        pending = _Pending(rows, asyncio.get_running_loop().create_future(), time.perf_counter(),
                           [None] * len(rows), len(rows))
        self._queued(len(rows))
        self.queue.put_nowait(pending)
        return await pending.future

    def _queued(self, change: int) -> None:
        self.queued_inputs += change
        self.metrics.queue_depth.labels(self.name).set(self.queued_inputs)

    async def _run(self) -> None:
        entries: list[tuple[_Pending, int]] = []  # inputs waiting, oldest request first
        while True:
            if not entries:
                entries += self._inputs_of(await self.queue.get())
                await asyncio.sleep(self.wait_seconds)  # gather concurrent requests into one batch
            while not self.queue.empty():  # requests that came while the last batch ran join the next cut
                entries += self._inputs_of(self.queue.get_nowait())
            live = [e for e in entries if not e[0].future.done()]  # cancelled: client gone
            self._queued(-(len(entries) - len(live)))
            if not live:
                entries = []
                continue
            # Cut everything waiting, run the batch holding the oldest input (inputs of its length from every
            # request), then cut again with what arrived meanwhile: batches fill from the whole queue, and no
            # input waits behind a stream of longer ones.
            batches = token_budget_batches([len(p.rows[r]) for p, r in live], self.max_batch_tokens,
                                           min_fill=self.min_fill)
            chosen = set(next(b for b in batches if 0 in b))
            entries = [e for i, e in enumerate(live) if i not in chosen]
            await self._run_batch([live[i] for i in sorted(chosen)])

    def _inputs_of(self, pending: _Pending) -> list[tuple[_Pending, int]]:
        return [(pending, r) for r in range(len(pending.rows))]

    async def _run_batch(self, live: list[tuple[_Pending, int]]) -> None:
        started = time.perf_counter()
        for p in {id(p): p for p, _ in live}.values():
            if not p.started:  # the queue stage: from submission to the request's first forward pass
                p.started = True
                self.metrics.stage_seconds.labels(self.name, "queue").observe(started - p.submitted)
        rows = [p.rows[r] for p, r in live]
        self.metrics.batch_size.labels(self.name).observe(len(rows))
        padded = len(rows) * max(map(len, rows))
        self.metrics.batch_tokens.labels(self.name).observe(padded)
        self.metrics.batch_fill.labels(self.name).observe(padded / self.max_batch_tokens)
        t0 = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, rows)
        except Exception as err:  # noqa: BLE001 (a backend failure fails the requests in this batch, not the batcher)
            for p, _ in live:
                if not p.future.done():
                    p.future.set_exception(err)
            self._queued(-len(live))
            return
        self.metrics.stage_seconds.labels(self.name, "inference").observe(time.perf_counter() - t0)
        self._queued(-len(live))
        for (p, r), output in zip(live, outputs):
            p.outputs[r] = output
            p.remaining -= 1
            if p.remaining == 0 and not p.future.done():
                p.future.set_result(p.outputs)

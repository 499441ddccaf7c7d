"""Dynamic batching: inputs of concurrent requests run together, in forward passes bounded by a token budget.

Requests hand in token id lists (already tokenized, off the event loop). The batcher waits a few
milliseconds for more, sorts what it holds by length, cuts it into batches whose padded size stays
within ``max_batch_tokens`` and whose inputs fill at least ``min_fill`` of their width (so a batch pads
little), and runs each in the one model thread (the event loop keeps answering meanwhile). A request whose client went away is cancelled; its inputs not yet
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
        while True:
            first = await self.queue.get()
            await asyncio.sleep(self.wait_seconds)  # gather concurrent requests into one batch
            held = [first]
            while not self.queue.empty():
                held.append(self.queue.get_nowait())
            await self._run_held(held)

    async def _run_held(self, held: list[_Pending]) -> None:
        entries = [(p, r) for p in held for r in range(len(p.rows))]
        started = time.perf_counter()
        for p in held:
            self.metrics.stage_seconds.labels(self.name, "queue").observe(started - p.submitted)
        for batch in token_budget_batches([len(p.rows[r]) for p, r in entries], self.max_batch_tokens,
                                          min_fill=self.min_fill):
            live = [entries[i] for i in batch if not entries[i][0].future.done()]  # cancelled: client gone
            self._queued(-(len(batch) - len(live)))
            if not live:
                continue
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
                continue
            self.metrics.stage_seconds.labels(self.name, "inference").observe(time.perf_counter() - t0)
            self._queued(-len(live))
            for (p, r), output in zip(live, outputs):
                p.outputs[r] = output
                p.remaining -= 1
                if p.remaining == 0 and not p.future.done():
                    p.future.set_result(p.outputs)

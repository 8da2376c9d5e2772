"""Dynamic batching (docs/serving.md, "Batching"): requests that arrive together are served by
one call of `run_batch(payloads) -> results` (the text queries of all of them embedded in one
forward pass). The first request of a batch waits at most `max_wait_s` for others, a batch holds
at most `max_batch` items (a payload counts `size(payload)` items), and the batch runs on one
worker thread (one model, its intra-op threads the run's `--threads`), so the event loop keeps
accepting requests meanwhile. Each caller gets its own result; a failed batch fails its own
callers only, and a caller that went away is dropped from the batch before it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger("evilm.serve")


class QueryBatcher:
    def __init__(self, run_batch: Callable[[list], list], size: Callable[[Any], int] = lambda payload: 1,
                 max_batch: int = 64, max_wait_s: float = 0.002,
                 on_batch: Callable[[int, float], None] | None = None):
        self.run_batch, self.size, self.max_batch, self.max_wait_s = run_batch, size, max(1, max_batch), max_wait_s
        self.on_batch = on_batch  # (size, seconds): the metrics' batch-size histogram
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evilm-embed")

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    async def submit(self, payload: Any) -> Any:
        """The result of one caller's payload, computed in a batch with other callers'."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((payload, future))
        return await future

    async def _collect(self) -> list:
        """The next batch: the first caller's payload, then whoever arrives within max_wait_s."""
        items = [await self.queue.get()]
        size, deadline = self.size(items[0][0]), time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item)
            size += self.size(item[0])
        return [(payload, future) for payload, future in items if not future.done()]  # callers that left are dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if not items:
                continue
            payloads = [payload for payload, _ in items]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.pool, self.run_batch, payloads)
            except Exception as err:  # the callers get it; the loop serves the next batch
                log.exception("a batch of %d requests failed", len(payloads))
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(self.size(p) for p in payloads), time.perf_counter() - start)
            for (_, future), result in zip(items, results):
                if not future.done():
                    future.set_result(result)

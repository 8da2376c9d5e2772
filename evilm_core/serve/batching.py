"""Dynamic batching (docs/serving.md, "Batching"): requests that arrive together are served by
one call of `run_batch(payloads) -> results` (the text queries of all of them embedded in one
forward pass). The first request of a batch waits at most `max_wait_s` for others, a batch holds
at most `max_batch` items (a payload counts `size(payload)` items), and the batch runs on a
worker thread (one model, its intra-op threads the run's `--threads`), so the event loop keeps
accepting requests meanwhile. Up to `in_flight` batches run at once (the model's runtimes release
the GIL): while one computes, the next gathers and starts, instead of every caller waiting for
the whole round trip of the batch before it (docs/serving.md, "Batching"). Each caller gets its
own result; a failed batch fails its own callers only, and a caller that went away is dropped
from the batch before it runs.
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
                 max_batch: int = 16, max_wait_s: float = 0.002,
                 on_batch: Callable[[int, float], None] | None = None, in_flight: int = 2):
        self.run_batch, self.size, self.max_batch, self.max_wait_s = run_batch, size, max(1, max_batch), max_wait_s
        self.on_batch = on_batch  # (size, seconds): the metrics' batch-size histogram
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.in_flight = max(1, in_flight)
        self.pool = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="evilm-embed")
        self.running: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.slots = asyncio.Semaphore(self.in_flight)
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
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
        while True:
            await self.slots.acquire()
            try:
                items = await self._collect()
            except BaseException:
                self.slots.release()
                raise
            if not items:
                self.slots.release()
                continue
            task = asyncio.create_task(self._execute(items))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _execute(self, items: list) -> None:
        """One batch on a worker thread; each caller gets its result (or the batch's error)."""
        payloads = [payload for payload, _ in items]
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.pool, self.run_batch, payloads)
        except Exception as err:  # the callers get it; the next batches are served
            log.exception("a batch of %d requests failed", len(payloads))
            for _, future in items:
                if not future.done():
                    future.set_exception(err)
            return
        finally:
            self.slots.release()
        if self.on_batch is not None:
            self.on_batch(sum(self.size(p) for p in payloads), time.perf_counter() - start)
        for (_, future), result in zip(items, results):
            if not future.done():
                future.set_result(result)

"""The query batcher alone (serve/batching.py): callers that arrive together share one call,
batches are bounded, two batches run at once, a failed batch fails its own callers only."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from evilm_core.serve.batching import QueryBatcher


class Recorder:
    def __init__(self, seconds: float = 0.05):
        self.seconds, self.batches, self.active, self.most = seconds, [], 0, 0
        self.lock = threading.Lock()

    def __call__(self, payloads: list) -> list:
        with self.lock:
            self.batches.append(list(payloads))
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        if "boom" in payloads:
            raise ValueError("boom")
        return [p * 2 for p in payloads]


async def _run(batcher: QueryBatcher, payloads: list) -> list:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(p) for p in payloads), return_exceptions=True)
    finally:
        await batcher.stop()


def test_callers_share_bounded_batches_and_two_run_at_once():
    run = Recorder()
    results = asyncio.run(_run(QueryBatcher(run, max_batch=4, max_wait_s=0.01, in_flight=2), list(range(10))))
    assert results == [2 * i for i in range(10)]
    assert all(len(b) <= 4 for b in run.batches) and sum(map(len, run.batches)) == 10 and len(run.batches) >= 3
    assert run.most == 2  # the second batch gathered and ran while the first computed


def test_one_at_a_time_and_a_failed_batch_fails_its_callers_only():
    run = Recorder(0.01)
    results = asyncio.run(_run(QueryBatcher(run, max_batch=1, max_wait_s=0.0, in_flight=1), [1, "boom", 3]))
    assert results[0] == 2 and results[2] == 6 and isinstance(results[1], ValueError)
    assert run.most == 1 and [len(b) for b in run.batches] == [1, 1, 1]


@pytest.mark.parametrize("in_flight", [1, 2])
def test_stop_waits_for_running_batches(in_flight):
    run = Recorder(0.05)

    async def main():
        batcher = QueryBatcher(run, max_batch=2, max_wait_s=0.0, in_flight=in_flight)
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]
        await asyncio.sleep(0.02)
        await batcher.stop()
        return [p.result() for p in pending if p.done()]

    done = asyncio.run(main())
    assert done and run.active == 0  # the batches that started finished before stop returned

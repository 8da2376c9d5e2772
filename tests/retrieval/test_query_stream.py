"""`Searcher.stream`: queries that have arrived are searched together, none waits for more,
answers come in input order, and an error in the input stops the stream after the queries
before it."""

from __future__ import annotations

import threading
import time

import pytest

from evilm_core.errors import EvilmError
from evilm_core.retrieval.query import Hit, Searcher


class RecordingSearcher(Searcher):
    def __init__(self, delay: float = 0.0):  # no index or model: search echoes its batch
        self.batches: list[list[str]] = []
        self.delay = delay

    def search(self, texts, k):
        time.sleep(self.delay)
        self.batches.append(list(texts))
        return [[Hit(t, 1, f"clip-of-{t}", 1.0)] for t in texts]


def test_first_query_is_answered_before_the_next_arrives():
    searcher, answered = RecordingSearcher(), threading.Event()

    def pipe():
        yield "first"
        assert answered.wait(10), "the first answer waited for more input"
        yield from ("second", "third", "fourth")

    results = []
    for hits in searcher.stream(pipe(), k=1, batch=64):
        results.append(hits[0].query)
        answered.set()
    assert results == ["first", "second", "third", "fourth"]
    assert searcher.batches[0] == ["first"]
    assert sum(len(b) for b in searcher.batches) == 4


def test_arrived_queries_are_batched_up_to_the_limit():
    searcher = RecordingSearcher(delay=0.05)  # while one batch is searched, the rest arrive
    texts = [f"q{i}" for i in range(10)]
    assert [h[0].query for h in searcher.stream(iter(texts), k=1, batch=4)] == texts
    assert max(len(b) for b in searcher.batches) == 4 and len(searcher.batches) <= 4


def test_an_input_error_comes_after_the_queries_before_it():
    searcher = RecordingSearcher()

    def pipe():
        yield "ok"
        raise EvilmError("query argument 2: the query is empty")

    seen = []
    with pytest.raises(EvilmError, match="query is empty"):
        for hits in searcher.stream(pipe(), k=1):
            seen.append(hits[0].query)
    assert seen == ["ok"]

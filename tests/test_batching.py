"""facesearch.serve.batching: requests that wait for a compute slot are computed as one batch, each answered its
own; a request alone is computed at once; a batch that fails is answered one request at a time."""

from __future__ import annotations

import threading

import pytest

from builders import all_queued_then_released
from facesearch.errors import BadInput
from facesearch.serve.batching import Batcher


class Recorder:
    """A batch function that answers ``key:item`` and records each batch; items named "bad" make it raise."""

    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, key, items):
        self.calls.append((key, list(items)))
        if "bad" in items:
            raise ValueError(f"cannot compute {items}")
        return [f"{key}:{item}" for item in items]


def queued_while_held(batcher: Batcher, requests: list[tuple[str, str]]) -> dict:
    """Submit ``requests`` (key, item) from one thread each while the only compute slot is held, let the slot go
    once all of them wait, and return each request's answer (or the exception it raised), by item."""
    out = {}

    def submit(key, item):
        try:
            out[item] = batcher.submit(key, item)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            out[item] = e

    all_queued_then_released(batcher.slots, batcher._queue,
                             [lambda r=r: submit(*r) for r in requests], timeout=30, join=30)
    return out


def test_a_request_alone_is_computed_at_once_and_alone():
    compute = Recorder()
    batcher = Batcher(compute, threading.Semaphore(1), max_batch=8)
    assert batcher.submit("k", "a") == "k:a"
    assert batcher.submit("k", "b") == "k:b"
    assert compute.calls == [("k", ["a"]), ("k", ["b"])]  # nothing waited for company


def test_requests_waiting_for_the_slot_are_one_batch_and_each_gets_its_own_answer():
    compute = Recorder()
    batcher = Batcher(compute, threading.Semaphore(1), max_batch=8)
    items = [f"photo{i}" for i in range(6)]
    answers = queued_while_held(batcher, [("k", item) for item in items])
    assert answers == {item: f"k:{item}" for item in items}
    assert len(compute.calls) == 1 and sorted(compute.calls[0][1]) == items


def test_a_batch_holds_at_most_max_batch_requests_of_one_key():
    compute = Recorder()
    batcher = Batcher(compute, threading.Semaphore(1), max_batch=2)
    requests = [("top5", "a"), ("top5", "b"), ("top5", "c"), ("top1", "d"), ("top5", "e")]
    answers = queued_while_held(batcher, requests)
    assert answers == {item: f"{key}:{item}" for key, item in requests}
    assert all(len(items) <= 2 and len({key}) == 1 for key, items in compute.calls)
    assert sorted(i for _, items in compute.calls for i in items) == ["a", "b", "c", "d", "e"]
    assert [items for key, items in compute.calls if key == "top1"] == [["d"]]  # never mixed with the others


def test_a_request_that_breaks_its_batch_fails_alone():
    compute = Recorder()
    batcher = Batcher(compute, threading.Semaphore(1), max_batch=8)
    answers = queued_while_held(batcher, [("k", "a"), ("k", "bad"), ("k", "c")])
    assert isinstance(answers["bad"], ValueError) and "bad" in str(answers["bad"])
    assert answers["a"] == "k:a" and answers["c"] == "k:c"
    assert len(compute.calls[0][1]) == 3  # tried together first, then each alone
    assert sorted(items[0] for _, items in compute.calls[1:]) == ["a", "bad", "c"]


def test_a_batch_function_answering_the_wrong_number_is_an_error_not_a_mixup():
    batcher = Batcher(lambda key, items: [], threading.Semaphore(1), max_batch=8)
    answers = queued_while_held(batcher, [("k", "a"), ("k", "b")])
    assert all(isinstance(e, RuntimeError) and "0 answers to 1 requests" in str(e) for e in answers.values())
    with pytest.raises(BadInput, match="max_batch 0"):
        Batcher(lambda key, items: items, threading.Semaphore(1), max_batch=0)

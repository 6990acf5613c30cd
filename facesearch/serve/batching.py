"""Requests that wait for a compute slot, computed together: one detection and one forward pass for all of them.

Detection and the model already use every core for one photo, so requests beyond the compute slots queue
(``Service``'s semaphore). Batching turns that queue into throughput: a request puts its work in the queue and
waits for a slot; whoever gets a slot takes everything then waiting with the same key (the same answer rule), up
to ``max_batch``, computes it as one batch and hands each request its own answer. A request that finds its work
taken by another thread waits for that batch. Nothing waits for company: a request alone in the queue is taken
alone the moment a slot is free, so one client sees the unbatched latency.

A batch that fails is answered again one request at a time, so that a photo which breaks the batch fails its
own request only.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Sequence, TypeVar

from facesearch.errors import BadInput

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Answer = TypeVar("Answer")


@dataclass(eq=False)
class _Waiting(Generic[Item, Answer]):
    """One request's work in the queue, and, once its batch is done, its answer or its error."""

    key: Hashable
    item: Item
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    error: BaseException | None = None


class Batcher(Generic[Item, Answer]):
    """Computes the items of concurrent ``submit`` calls a batch at a time, on the compute slots they share.

    Args:
        compute: ``compute(key, items)`` → one answer per item, in order: the batch function (items of one key).
        slots: the compute slots (a semaphore shared with the service's other computations).
        max_batch: items per batch at most; 1 computes every request alone, as without batching.
    """

    def __init__(self, compute: Callable[[Hashable, list[Item]], Sequence[Answer]], slots: threading.Semaphore,
                 max_batch: int):
        if max_batch < 1:
            raise BadInput(f"{max_batch}: a batch holds at least one request", param="max_batch")
        self.compute, self.slots, self.max_batch = compute, slots, max_batch
        self._queue: deque[_Waiting] = deque()
        self._lock = threading.Lock()

    def submit(self, key: Hashable, item: Item) -> Answer:
        """``item``'s answer, computed in a batch with whatever else waits with the same ``key``; raises what
        computing it alone would raise."""
        mine = _Waiting(key, item)
        with self._lock:
            self._queue.append(mine)
        while not mine.done.is_set():
            with self.slots:
                batch = self._take()
                if batch:
                    self._run(batch)
            if not batch:  # another thread took this request's work and computes it now
                mine.done.wait()
        if mine.error is not None:
            raise mine.error
        return mine.answer

    def _take(self) -> list[_Waiting]:
        """The oldest waiting request and the next ones with its key, up to ``max_batch``, out of the queue."""
        with self._lock:
            if not self._queue:
                return []
            key = self._queue[0].key
            batch = [w for w in self._queue if w.key == key][: self.max_batch]
            for w in batch:
                self._queue.remove(w)
            return batch

    def _run(self, batch: list[_Waiting]) -> None:
        try:
            try:
                self._answer(batch)
            except Exception:
                if len(batch) == 1:
                    raise
                logger.info("a batch of %d requests failed; answering each alone", len(batch), exc_info=True)
                for w in batch:
                    self._run([w])
        except BaseException as e:  # noqa: BLE001 - handed to the request it belongs to, raised there
            for w in batch:
                w.error = e
        finally:
            for w in batch:
                w.done.set()

    def _answer(self, batch: list[_Waiting]) -> None:
        answers = list(self.compute(batch[0].key, [w.item for w in batch]))
        if len(answers) != len(batch):
            raise RuntimeError(f"the batch function gave {len(answers)} answers to {len(batch)} requests")
        for w, a in zip(batch, answers):
            w.answer = a

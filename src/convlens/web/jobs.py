"""Computation off the event loop: a pool of worker threads, each with its own copy of the model (hooks are
registered on a model during a call, so two calls must never share one), a bounded queue in front of it, a
progress board the page polls, and a cache keyed by the content hash of image + model + parameters."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import json
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from convlens.models.classifier import ImageClassifier


class Busy(Exception):
    """Every worker is busy and the queue is full: the request is refused (503), not left waiting."""


def model_fingerprint(model: ImageClassifier) -> str:
    """A hash of the model's weights, buffers and preprocessing: cached results never outlive a model change."""
    digest = hashlib.sha256(model.spec.encode())
    digest.update(json.dumps(model.preprocessing.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in model.module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class ResultCache:
    """The last ``size`` results, least recently used dropped first (thread-safe)."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class WorkerPool:
    """``await pool.run(description, function)`` runs ``function(model, progress)`` on a worker thread with a
    model of its own; at most ``workers`` run at once and ``queue`` more wait, beyond that ``Busy``."""

    def __init__(self, model: ImageClassifier, workers: int = 1, queue_limit: int = 8) -> None:
        self.workers = max(1, workers)
        self.queue_limit = max(0, queue_limit)
        self.models: queue.Queue[ImageClassifier] = queue.Queue()
        self.models.put(model)
        for _ in range(self.workers - 1):
            self.models.put(copy.deepcopy(model))
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="convlens-worker")
        self._admitted = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.board: dict[int, dict[str, Any]] = {}  # running and waiting jobs, for /api/progress

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.workers + self.queue_limit:
                raise Busy(f"{self._admitted} computations running or waiting; try again in a few seconds")
            self._admitted += 1

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, description: str, function: Callable[[ImageClassifier, Callable], Any]) -> Any:
        self._admit()
        job = next(self._ids)
        self.board[job] = {"job": job, "description": description, "state": "waiting", "done": 0, "total": None,
                           "since": time.time()}

        def progress(step: str, done: int, total: int | None) -> None:
            self.board[job].update(step=step, done=done, total=total)

        def work() -> Any:
            model = self.models.get()
            self.board[job].update(state="running", started=time.time())
            try:
                return function(model, progress)
            finally:
                self.models.put(model)

        try:
            return await asyncio.wrap_future(self.executor.submit(work))
        finally:
            self.board.pop(job, None)
            self._release()

    def progress(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{**entry, "seconds": round(now - entry["since"], 1)} for entry in list(self.board.values())]

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

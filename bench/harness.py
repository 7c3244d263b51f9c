"""Side-by-side timing: check agreement, warm up, alternate convlens and peer, report medians and ratios."""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def bench_device() -> torch.device:
    """Where every case runs: ``CONVLENS_BENCH_DEVICE`` when set (``cpu``, ``cuda``, ``cuda:1``), else the GPU
    when there is one, else the CPU. Both sides of a case run on it; checks compare on the CPU."""
    import os

    return torch.device(os.environ.get("CONVLENS_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


DEVICE = bench_device()
ON_GPU = DEVICE.type == "cuda"


@dataclass
class BenchCase:
    name: str
    convlens: Callable[[], Any]
    peer: Callable[[], Any]
    peer_name: str
    check: Callable[[Any, Any], None] | None = None
    max_ratio: float | None = None  # the target: convlens median / peer median <= max_ratio
    note: str = ""
    # fewer for cases that take minutes per call (None: the runner's number; 0: the checked first calls are the
    # timed ones, for calls of many minutes where the warm-up is a small part)
    repetitions: int | None = None
    # run once before the agreement calls, outside their time and memory (a peer's set-up, such as searching
    # Captum's fastest batch, must not count as convlens's first call)
    setup: Callable[[], None] | None = None


@dataclass
class BenchResult:
    name: str
    peer_name: str
    convlens_seconds: float
    peer_seconds: float
    ratio: float
    max_ratio: float | None
    met: bool | None
    convlens_peak_mb: float
    peer_peak_mb: float
    repetitions: int
    agreement: str
    note: str = ""
    samples: dict = field(default_factory=dict)


class PeakMemory:
    """Peak resident memory above the start (CPU, sampled every 2 ms from /proc) or CUDA peak allocation."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * 4096
        except OSError:  # pragma: no cover - non-Linux
            return 0

    def __enter__(self) -> PeakMemory:
        if ON_GPU:
            torch.cuda.reset_peak_memory_stats(DEVICE)
            self._cuda_start = torch.cuda.memory_allocated(DEVICE)
        self._start = self._rss()
        self.peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss() - self._start)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._start)
        if ON_GPU:
            self.peak = torch.cuda.max_memory_allocated(DEVICE) - self._cuda_start

    @property
    def megabytes(self) -> float:
        return self.peak / 2**20


def _timed(function: Callable[[], Any]) -> tuple[float, Any]:
    if ON_GPU:
        torch.cuda.synchronize(DEVICE)
    start = time.perf_counter()
    result = function()
    if ON_GPU:
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter() - start, result


SHORT_CALL_SECONDS = 1.0
SHORT_CALL_REPETITIONS = 9


def run_case(case: BenchCase, repetitions: int = 5) -> BenchResult:
    """Agreement first (never compare speeds of different work), then alternating timings.

    The agreement call is each side's first: it also warms them up (lazy initialisation, allocator, caches) and
    is where peak memory is measured.
    """
    memory = {}
    if case.setup is not None:
        case.setup()
    gc.collect()
    with PeakMemory() as peak:
        first_ours, ours = _timed(case.convlens)
    memory["convlens"] = peak.megabytes
    gc.collect()
    with PeakMemory() as peak:
        first_peer, theirs = _timed(case.peer)
    memory["peer"] = peak.megabytes
    agreement = "not checked"
    if case.check is not None:
        case.check(ours, theirs)
        agreement = "agree"
    del ours, theirs
    if case.repetitions is None and max(first_ours, first_peer) < SHORT_CALL_SECONDS:
        repetitions = max(repetitions, SHORT_CALL_REPETITIONS)  # noise weighs more on short calls; they are cheap
    convlens_times, peer_times = ([first_ours], [first_peer]) if case.repetitions == 0 else ([], [])
    for repetition in range(repetitions if case.repetitions is None else case.repetitions):
        order = [(case.convlens, convlens_times), (case.peer, peer_times)]
        if repetition % 2:  # alternate who goes first: neither side always gets the warmer cache
            order.reverse()
        for function, times in order:
            gc.collect()
            times.append(_timed(function)[0])
    ours_median, peer_median = statistics.median(convlens_times), statistics.median(peer_times)
    ratio = ours_median / peer_median
    met = None if case.max_ratio is None else ratio <= case.max_ratio
    return BenchResult(case.name, case.peer_name, ours_median, peer_median, ratio, case.max_ratio, met,
                       memory["convlens"], memory["peer"], len(convlens_times), agreement, case.note,
                       {"convlens": convlens_times, "peer": peer_times})

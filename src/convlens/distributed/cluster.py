"""Where a job runs: ``--ray local`` starts Ray on this machine, ``auto`` or an address joins a cluster.

Ray is an optional extra (``pip install 'convlens[ray]'``); without it every Ray entry point fails with one
line that says so. In-process stays the default everywhere: nothing here is imported unless Ray is asked for.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from convlens.errors import ConvlensError

INSTALL_HINT = "--ray needs the optional extra: pip install 'convlens[ray]'"


def import_ray():
    """``ray`` and ``ray.data``, or a one-line ConvlensError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is part of the extra
    except ImportError:
        raise ConvlensError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How a job uses Ray. ``address``: ``local`` (start Ray here), ``auto`` (join the running cluster) or a
    cluster address (``ray://host:10001``, ``host:6379``). ``workers``: model actors (each loads the model
    once). ``gpus_per_worker``: GPUs per actor (fractions share a GPU). ``cpus_per_worker``: CPU cores per
    actor, also its torch thread count; None: see ``worker_cpus``."""

    address: str = "local"
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConvlensError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or (self.cpus_per_worker is not None and self.cpus_per_worker <= 0):
            raise ConvlensError("--gpus-per-worker must be >= 0 and CPUs per worker > 0")

    def worker_cpus(self) -> float:
        """CPU cores per actor (and its torch threads), with Ray connected: as given; else, on a local Ray, the
        largest node's cores shared among the workers (one worker uses the whole machine, as the in-process run
        does: with Ray's default of one core it would run on one thread of many); else (a cluster) 1."""
        if self.cpus_per_worker is not None:
            return self.cpus_per_worker
        if self.address != "local":
            return 1.0
        ray = import_ray()
        node_cpus = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=1)
        return float(max(1, int(node_cpus) // self.workers))


def connect(options: RayOptions) -> bool:
    """Make sure this process is connected to Ray; returns True when this call started the connection (the
    caller then shuts it down). A Ray already initialised in this process (a notebook, a test) is reused."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if options.address == "local":
        cpus = max(int(round(options.workers * (options.cpus_per_worker or 1))), os.cpu_count() or 1)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _temp_dir=_short_temp_dir())
    else:
        try:
            ray.init(address=options.address, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise ConvlensError(f"--ray {options.address}: no Ray cluster reachable there ({exc})") from None
    quiet_ray_data()
    return True


def quiet_ray_data() -> None:
    """Ray Data's own progress bars and execution logs off: the driver draws convlens's bar."""
    import logging

    import ray.data

    for name in ("ray.data", "ray.util"):  # Ray Data announces every execution and the bars turned off
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.verbose_stats_logs = False


def disconnect(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


def _short_temp_dir() -> str:
    # Ray's socket paths must stay under ~107 characters: a short folder of our own under the system temp.
    return tempfile.mkdtemp(prefix="convlens-ray-")

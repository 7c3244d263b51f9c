"""How many perturbed inputs go into one forward pass: a share of the free memory over what one costs."""

from __future__ import annotations

import os

import torch

MAX_AUTO_BATCH = 64


def memory_budget(device: torch.device) -> int:
    """Bytes a batch of activations may take: half the free GPU memory, or an eighth of the free RAM (<= 2 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 * 2**30
    return min(available // 8, 2 * 2**30)


def auto_batch_size(per_sample_bytes: int, device: torch.device, limit: int = MAX_AUTO_BATCH,
                    kept_bytes: int = 0) -> int:
    """Samples per forward pass when one costs ``per_sample_bytes`` (an engine's ``per_sample_bytes``) and
    ``kept_bytes`` are held throughout (an engine's clean maps): 1 to ``limit``."""
    return int(max(1, min(limit, (memory_budget(device) - kept_bytes) // max(1, per_sample_bytes))))

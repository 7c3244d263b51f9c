"""The deletion and insertion games on the step engine (``convlens.engine.stepwise``).

Each image's game (``steps + 1`` inputs, each differing from the one before in the ``step`` pixels of the next
ranks) is cut into segments of ``length`` points. The segments are the engine's sequences: a segment's first
input runs in full (batched over segments), then all segments advance together, a step at a time, each step
recomputing only the positions its pixels can change. Longer segments mean fewer full passes and more rounds of
small steps; the length grows with the number of points, where a round's fixed cost is spread over more
segments.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from convlens.engine.ops import NotTraceable
from convlens.engine.stepwise import StepEngine
from convlens.faithfulness.perturb import probabilities_of
from convlens.perturbation.batching import memory_budget
from convlens.progress import ProgressLike, track

MAX_SEGMENT = 64
# Above this share of a full pass's work per step (a step's pixels reach most positions of the deeper maps, as
# in resnet18 at 64-112 px: 0.8), gathering windows costs more than it saves: the plain batched loop is faster.
MAX_WORK = 0.3


def segment_length(points: int) -> int:
    """Points per segment for ``points`` game points in all: about the square root of half of them."""
    return int(min(MAX_SEGMENT, max(2, round(math.sqrt(points / 2)))))


def stepwise_scores(module: nn.Module, start: torch.Tensor, finish: torch.Tensor, ranks: torch.Tensor,
                    classes: torch.Tensor, step: int, progress: ProgressLike = False,
                    description: str = "steps", max_work: float | None = MAX_WORK) -> torch.Tensor | None:
    """``N x (steps + 1)`` class probabilities, the game's input after ``k`` steps being ``finish`` where
    ``ranks < k * step`` and ``start`` elsewhere; None when the model's graph cannot be used or (``max_work``)
    when the first step recomputes more than that share of a full pass."""
    count, _, height, width = start.shape
    area = height * width
    steps = math.ceil(area / step)
    with torch.inference_mode():
        try:
            engine = StepEngine(module, start[:1])
        except NotTraceable:
            return None
        order = torch.argsort(ranks, dim=1)  # the pixel of each rank
        offsets = torch.arange(step, device=start.device)

        def begin(owner: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
            """Start a sequence per (image, first point); the scores there."""
            replaced = (ranks[owner] < (at * step)[:, None]).view(-1, 1, height, width)
            return probabilities_of(engine.reset(torch.where(replaced, finish[owner], start[owner])), classes[owner])

        def advance(owner: torch.Tensor, done: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
            """Every live sequence one step on, to point ``done``; the scores of all."""
            index = (done - 1)[:, None] * step + offsets  # the ranks this step replaces
            sequence, column = (live[:, None] & (index < area)).nonzero(as_tuple=True)
            pixel = order[owner[sequence], index[sequence, column]]
            y, x = pixel // width, pixel % width
            return probabilities_of(engine.advance(sequence, y, x, finish[owner[sequence], :, y, x]), classes[owner])

        if max_work is not None and steps:  # one sequence, one step: does the engine pay on this model?
            probe = torch.zeros(1, dtype=torch.long, device=start.device)  # the engine starts at image 0, step 0
            advance(probe, probe + 1, torch.ones(1, dtype=torch.bool, device=start.device))
            if engine.last_work > max_work:
                return None
        length = segment_length(count * (steps + 1))
        anchors = torch.arange(0, steps + 1, length, device=start.device)
        owners = torch.arange(count, device=start.device).repeat_interleave(len(anchors))
        firsts = anchors.repeat(count)
        group = max(1, memory_budget(start.device) // max(1, engine.per_sequence_bytes))
        scores = torch.empty(count, steps + 1, device=start.device)
        groups = range(0, len(owners), group)
        for first in track(groups, len(groups), description, progress):
            owner, at = owners[first:first + group], firsts[first:first + group]
            scores[owner, at] = begin(owner, at)
            for offset in range(1, length):
                done = at + offset
                live = done <= steps
                if not live.any():
                    break
                scores[owner[live], done[live]] = advance(owner, done, live)[live]
        return scores.float().cpu()

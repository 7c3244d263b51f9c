"""The perturbation base: methods that explain a prediction by changing the input and watching the score.

A method supplies its masks (a generator) and a reducer, nothing more; ``perturb`` runs them in batches sized
to the memory (see ``loop.py``). Occlusion shares the pieces (its windows run on ``convlens.engine``, which
recomputes only the region a window changes); the faithfulness metrics (deletion / insertion) use ``perturb``
with ``ScoreList``. A worked example, RISE in a dozen lines, is in ``tests/perturbation/test_rise.py`` and
``docs/DEVELOPING.md``.
"""

from convlens.perturbation.baselines import FILLS, fill_image
from convlens.perturbation.batching import MAX_AUTO_BATCH, auto_batch_size, memory_budget
from convlens.perturbation.loop import (
    MaskWeightedSum,
    Perturbation,
    Reducer,
    ScoreList,
    batches,
    evaluate_in_batches,
    perturb,
)

__all__ = [
    "FILLS",
    "MAX_AUTO_BATCH",
    "MaskWeightedSum",
    "Perturbation",
    "Reducer",
    "ScoreList",
    "auto_batch_size",
    "batches",
    "evaluate_in_batches",
    "fill_image",
    "memory_budget",
    "perturb",
]

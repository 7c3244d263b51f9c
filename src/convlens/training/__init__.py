"""Training on an image folder: the baseline CNN or transfer learning, honest about leaky splits.

``train(data_dir, out, TrainConfig(...))`` writes a run directory that is a model spec for every command;
``resume(run_dir)`` continues it; ``cross_validate(data_dir, out, folds, config)`` runs stratified,
duplicate-aware K-fold cross-validation.
"""

from convlens.training.config import TrainConfig, parse_snapshots
from convlens.training.cv import CVResult, cross_validate
from convlens.training.loop import DataWarning, EpochRecord, Normalizer, TrainingEvents, evaluate, train_one_epoch
from convlens.training.run import TrainResult, fit, resume, train

__all__ = [
    "CVResult",
    "DataWarning",
    "EpochRecord",
    "Normalizer",
    "TrainConfig",
    "TrainResult",
    "TrainingEvents",
    "cross_validate",
    "evaluate",
    "fit",
    "parse_snapshots",
    "resume",
    "train",
    "train_one_epoch",
]

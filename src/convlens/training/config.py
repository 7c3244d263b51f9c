"""Training settings: one dataclass, recorded in every checkpoint and read back by ``--resume``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from convlens.errors import ConvlensError
from convlens.models.efficientnet_lite import SPEC as DEFAULT_SPEC

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001}  # Keras's defaults for both


@dataclass
class TrainConfig:
    """How to train. ``arch`` is ``baseline``, ``efficientnet_lite0``, ``torchvision:NAME`` or ``timm:NAME``;
    ``weights`` what ``load_model`` takes with it (a local state_dict file, a torchvision weights name)."""

    arch: str = "baseline"
    weights: str | None = None
    img_size: int | None = None  # None: 32 for the baseline, the model's own input size otherwise
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None  # None: 0.01 for SGD, 0.001 for Adam
    optimizer: str = "sgd"
    momentum: float = 0.9  # SGD only; 0 is Keras's plain SGD
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    val_split: float = 0.2  # used only when the folder has no train/validation split of its own
    augment: bool = False
    freeze_backbone: bool = False
    unfreeze_after: int | None = None  # with freeze_backbone: train everything from this epoch on
    finetune_lr: float | None = None  # after unfreezing; None: lr / 10
    snapshots: tuple[int, ...] = ()  # epochs whose weights are kept in RUN_DIR/snapshots (0: the start)
    dedupe: bool = False
    workers: int = 0  # DataLoader worker processes (0: decode in the training process)
    near_distance: int = 12

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def finetune_learning_rate(self) -> float:
        return self.finetune_lr if self.finetune_lr is not None else self.learning_rate / 10

    def phase(self, epoch: int) -> str:
        """``frozen`` (head only) or ``full`` for the 1-based ``epoch``."""
        if not self.freeze_backbone:
            return "full"
        return "full" if self.unfreeze_after is not None and epoch > self.unfreeze_after else "frozen"

    def validate(self) -> TrainConfig:
        if not (self.arch in ("baseline", DEFAULT_SPEC) or self.arch.startswith(("torchvision:", "timm:"))):
            raise ConvlensError(f"--arch {self.arch!r}: use baseline, {DEFAULT_SPEC}, torchvision:NAME or timm:NAME")
        if self.optimizer not in OPTIMIZERS:
            raise ConvlensError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name, value, low, high in (("epochs", self.epochs, 1, 100_000), ("batch_size", self.batch_size, 1, 4096),
                                       ("img_size", self.img_size, 8, 1024), ("workers", self.workers, 0, 64),
                                       ("near_distance", self.near_distance, 0, 64)):
            if value is not None and not low <= value <= high:
                raise ConvlensError(f"--{name.replace('_', '-')} {value} is not in the range {low}<=x<={high}")
        for name, value in (("lr", self.learning_rate), ("finetune_lr", self.finetune_learning_rate)):
            if not 0 < value <= 10:
                raise ConvlensError(f"--{name.replace('_', '-')} {value} is not in the range 0<x<=10")
        if not 0 <= self.momentum < 1 or not 0 <= self.weight_decay <= 1:
            raise ConvlensError(f"--momentum must be in 0<=x<1 and --weight-decay in 0<=x<=1, got {self.momentum} "
                                f"and {self.weight_decay}")
        if not 0 < self.val_split < 1:
            raise ConvlensError(f"--val-split {self.val_split} is not in the range 0<x<1")
        if self.unfreeze_after is not None and not self.freeze_backbone:
            raise ConvlensError("--unfreeze-after needs --freeze-backbone")
        if self.unfreeze_after is not None and self.unfreeze_after < 0:
            raise ConvlensError(f"--unfreeze-after must be 0 or more, got {self.unfreeze_after}")
        if self.freeze_backbone and self.arch == "baseline":
            raise ConvlensError("--freeze-backbone is for pretrained models; the baseline CNN starts from scratch")
        bad = [e for e in self.snapshots if e < 0]
        if bad:
            raise ConvlensError(f"--snapshots takes epoch numbers from 0 on, got {bad[0]}")
        return self

    def to_dict(self) -> dict:
        record = asdict(self)
        record["snapshots"] = list(self.snapshots)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in record.items() if key in known}
        values["snapshots"] = tuple(values.get("snapshots", ()))
        return cls(**values)


def parse_snapshots(text: str | None) -> tuple[int, ...]:
    """``"1,2,5,10"`` -> ``(1, 2, 5, 10)``."""
    if not text:
        return ()
    try:
        return tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
    except ValueError:
        raise ConvlensError(f"--snapshots takes comma-separated epoch numbers such as 1,2,5,10, got {text!r}") \
            from None

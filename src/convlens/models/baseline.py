"""The classic baseline CNN of the leaf-disease study (a Keras model, rebuilt in PyTorch).

Conv 64 5x5 same + ReLU, max-pool 2, Conv 64 3x3 same + ReLU, max-pool 2, Conv 32 3x3 same + ReLU,
max-pool 2, flatten, dense 512 + ReLU, dense to the classes. Works at any input size (32 and 128 are the
reference sizes); the layer names (``conv1`` ... ``fc2``) are what every command takes as ``--layer``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


class BaselineCNN(nn.Sequential):
    def __init__(self, num_classes: int, img_size: int = 32) -> None:
        if img_size < 8:
            raise ValueError(f"the baseline CNN needs inputs of at least 8 px (three 2x poolings), got {img_size}")
        side = img_size // 2 // 2 // 2
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 64, kernel_size=5, padding=2)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(64, 64, kernel_size=3, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("conv3", nn.Conv2d(64, 32, kernel_size=3, padding=1)),
                    ("relu3", nn.ReLU()),
                    ("pool3", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(32 * side * side, 512)),
                    ("relu4", nn.ReLU()),
                    ("fc2", nn.Linear(512, num_classes)),
                ]
            )
        )
        self.num_classes = num_classes
        self.img_size = img_size

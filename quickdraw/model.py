"""The networks, and how each trains: `--model seed` is the seed experiment's CNN with its recipe (Adam at a
constant learning rate); `vgg-bn` is a VGG-style CNN with batch normalisation, trained on randomly shifted,
rotated, scaled and mirrored drawings with a one-cycle learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from quickdraw.augment import Augmentation


@dataclass(frozen=True)
class Recipe:
    """A network and the training that goes with it. The search's learning rate is Adam's constant rate, or with
    `one_cycle` the peak of the schedule."""

    build: Callable[[int, float], nn.Module]  # (number of classes, dropout) -> network
    augmentation: Augmentation | None = None  # random transforms of each training batch; None: drawings as they are
    one_cycle: bool = False  # torch's OneCycleLR over all the trial's steps instead of a constant rate

    @property
    def mirrors(self) -> bool:
        """Whether the network trains on mirror images too, so that a mirrored view at test time is one it knows."""
        return self.augmentation is not None and self.augmentation.mirror


class SeedCNN(nn.Module):
    """Three 3x3 conv layers (16, 32, 64 filters), each followed by 2x2 max pooling, then dropout
    and a 200-unit dense layer before the classifier. The seed fed it 3-channel PNGs; we feed it one channel."""

    def __init__(self, num_classes: int, dropout: float = 0.5, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, 16),  # 28 -> 14
            _conv_block(16, 32),  # 14 -> 7
            _conv_block(32, 64),  # 7 -> 3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * 3 * 3, 200),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(200, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class VggBN(nn.Module):
    """Three stages of two 3x3 conv + batch norm + ReLU layers (32, 64, 128 filters), each stage ending in
    2x2 max pooling (28 -> 14 -> 7 -> 3), then dropout and the classifier."""

    WIDTHS = (32, 64, 128)

    def __init__(self, num_classes: int, dropout: float = 0.5, in_channels: int = 1):
        super().__init__()
        layers = []
        for width in self.WIDTHS:
            layers += [*_conv_bn(in_channels, width), *_conv_bn(width, width), nn.MaxPool2d(2)]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels * 3 * 3, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


MODELS = {
    "seed": Recipe(SeedCNN),
    "vgg-bn": Recipe(VggBN, augmentation=Augmentation(), one_cycle=True),
}


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No conv bias: the batch norm's shift replaces it.
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]

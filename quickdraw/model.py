"""The networks. `SeedCNN` is the seed experiment's model, on 1-channel 28x28 input."""

from torch import nn


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


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )

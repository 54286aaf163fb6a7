"""A tiny CNN with *bias* convolutions, for fast tests (exercises the conv bias column of ``a``).

``conv1 (3x3, bias) -> ReLU -> MaxPool 2 -> conv2 (3x3, bias) -> ReLU -> MaxPool 2 -> fc``.
"""

from __future__ import annotations

from mindspore import nn

from model_zoo.src.models._layers import conv2d

__all__ = ["SmallCNN", "small_cnn"]


class SmallCNN(nn.Cell):
    """Two biased 3x3 convolutions (padding 1) with ReLU and 2x2 max pooling, then one Dense.

    Args:
        num_classes: number of outputs.
        in_channels: input channels.
        image_size: input height = width; must be divisible by 4 (two 2x2 poolings). The
            classifier sees ``channels[1] * (image_size // 4) ** 2`` features.
        channels: output channels of ``conv1`` and ``conv2``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        channels: tuple[int, int] = (8, 16),
    ):
        super().__init__()
        if image_size < 4 or image_size % 4:
            raise ValueError(f"SmallCNN needs image_size divisible by 4, got {image_size}")
        c1, c2 = channels
        self.conv1 = conv2d(in_channels, c1, 3, padding=1, has_bias=True)
        self.conv2 = conv2d(c1, c2, 3, padding=1, has_bias=True)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(c2 * (image_size // 4) ** 2, num_classes)

    def construct(self, x):
        """``[N, C, H, W]`` images -> ``[N, num_classes]`` logits."""
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(self.flatten(x))


def small_cnn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    channels: tuple[int, int] = (8, 16),
) -> SmallCNN:
    """Registry entry: :class:`SmallCNN`."""
    return SmallCNN(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=channels
    )

"""ImageNet ResNet-50 (He et al., 2016), with torchvision's layout (stride on the 3x3 conv).

Stem: 7x7/2 conv (64) -> BN -> ReLU -> 3x3/2 max pooling (padding 1). Four stages of 3, 4, 6, 3
bottleneck blocks (1x1 -> 3x3 -> 1x1, expansion 4; widths 64, 128, 256, 512). The first block
of each stage has a projection shortcut ``downsample = (1x1 conv, BN)`` (option B); stages 2-4
downsample with stride 2 in the block's 3x3 conv ("ResNet v1.5"). Global average pooling and
``fc = Dense(2048, num_classes)`` close it.

Parameter names follow torchvision's ``resnet50`` (``conv1``, ``bn1``,
``layer{1..4}.{j}.{conv1,bn1,conv2,bn2,conv3,bn3}``, ``layer{i}.0.downsample.{0,1}``, ``fc``),
with MindSpore's BN leaf names.
"""

from __future__ import annotations

from mindspore import nn

from model_zoo.src.models._layers import batch_norm, conv1x1, conv2d, conv3x3

__all__ = ["ResNet", "Bottleneck", "resnet50"]


class Bottleneck(nn.Cell):
    """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + downsample(x))``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = batch_norm(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = batch_norm(out_planes)
        self.relu = nn.ReLU()
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.SequentialCell(
                [conv1x1(in_planes, out_planes, stride), batch_norm(out_planes)]
            )
        else:
            self.downsample = nn.Identity()

    def construct(self, x):
        """``[N, C_in, H, W]`` -> ``[N, C_out, H / stride, W / stride]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNet(nn.Cell):
    """Bottleneck ResNet for ImageNet-sized inputs (any size >= 32 runs; 224 is standard).

    Args:
        layers: number of bottleneck blocks per stage ((3, 4, 6, 3) for ResNet-50).
        num_classes: number of outputs.
    """

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.conv1 = conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = batch_norm(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        self.layer1 = _stage(64, 64, layers[0], stride=1)
        self.layer2 = _stage(256, 128, layers[1], stride=2)
        self.layer3 = _stage(512, 256, layers[2], stride=2)
        self.layer4 = _stage(1024, 512, layers[3], stride=2)
        self.fc = nn.Dense(512 * Bottleneck.expansion, num_classes)

    def construct(self, x):
        """``[N, 3, H, W]`` images -> ``[N, num_classes]`` logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.mean(axis=(2, 3))
        return self.fc(x)


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.SequentialCell:
    layers = [Bottleneck(in_planes, planes, stride)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.SequentialCell(layers)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (25.6 M parameters with 1000 classes)."""
    return ResNet((3, 4, 6, 3), num_classes)

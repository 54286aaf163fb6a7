"""CIFAR ResNet-20/32/56 (He et al., 2016, Sec. 4.2) with option-A shortcuts.

Depth ``6n + 2``: a 3x3 stem conv (16 channels), three stages of ``n`` basic blocks with 16,
32 and 64 channels (the first block of stages 2 and 3 has stride 2), global average pooling and
one Dense layer. Convolutions have no bias (each is followed by batch norm).

Option A (parameter-free shortcut): when a block changes shape, the identity is subsampled
with stride 2 and its channels are zero-padded, ``planes // 4`` on each side (16 -> 32 -> 64),
as in the widely used reference implementation of Y. Idelbayev
(``akamaster/pytorch_resnet_cifar10``).
It is a strided slice and a concatenation with zeros, both of which compile in GRAPH_MODE.
Not ``ops.pad``: in MindSpore 2.10 GRAPH_MODE on CPU the gradient of ``ops.pad`` is wrong from
the second call of a compiled graph on (zeros or stale values; the first call and PyNative are
right), which silently corrupted every training step after the first (found by the parity suite,
see docs/parity.md).

Parameter names (same in the torch twin): ``conv1``, ``bn1``,
``layer{1,2,3}.{j}.{conv1,bn1,conv2,bn2}``, ``fc``.
"""

from __future__ import annotations

from mindspore import nn, ops

from model_zoo.src.models._layers import batch_norm, conv3x3

__all__ = ["CifarResNet", "BasicBlock", "resnet20", "resnet32", "resnet56"]


class ShortcutA(nn.Cell):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` zero-padded by ``pad`` channels on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def construct(self, x):
        x = x[:, :, ::2, ::2]
        zeros = ops.zeros((x.shape[0], self.pad, x.shape[2], x.shape[3]), x.dtype)
        return ops.concat((zeros, x, zeros), axis=1)


class BasicBlock(nn.Cell):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = batch_norm(planes)
        self.relu = nn.ReLU()
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif stride == 2 and planes == 2 * in_planes:
            self.shortcut = ShortcutA(planes // 4)
        else:
            raise ValueError(
                "option-A shortcut expects stride 2 and doubled channels, got "
                f"stride={stride}, {in_planes} -> {planes} channels"
            )

    def construct(self, x):
        """``[N, C_in, H, W]`` -> ``[N, C_out, H / stride, W / stride]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Cell):
    """ResNet-``6n+2`` for 32x32 inputs (any input size works: the pooling is global).

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: number of outputs.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(3, 16)
        self.bn1 = batch_norm(16)
        self.relu = nn.ReLU()
        self.layer1 = _stage(16, 16, n, stride=1)
        self.layer2 = _stage(16, 32, n, stride=2)
        self.layer3 = _stage(32, 64, n, stride=2)
        self.fc = nn.Dense(64, num_classes)

    def construct(self, x):
        """``[N, 3, H, W]`` images -> ``[N, num_classes]`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = x.mean(axis=(2, 3))
        return self.fc(x)


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.SequentialCell:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.SequentialCell(layers)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (n = 3, 0.27 M parameters)."""
    return CifarResNet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (n = 5, 0.46 M parameters)."""
    return CifarResNet(32, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (n = 9, 0.85 M parameters)."""
    return CifarResNet(56, num_classes)

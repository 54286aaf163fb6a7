"""CIFAR VGG16 with batch norm (Simonyan & Zisserman, 2015; BN as in Ioffe & Szegedy, 2015).

Features: the VGG16 configuration ``64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M``
(``M`` = 2x2 max pooling), each number a 3x3 conv (padding 1, **no bias**: the batch norm that
follows makes it redundant) -> BN -> ReLU. On a 32x32 input the features end at 1x1x512.

Classifier (our choice, documented here): global average pooling, then a **single**
``Dense(512, num_classes)``, as in the common CIFAR variants (e.g. kuangliu/pytorch-cifar,
alecwangcq/KFAC-Pytorch). ImageNet VGG's 4096-4096 head is meant for 7x7 maps and would hold
most of the parameters of a 32x32 model. The global pooling is the identity on 32x32 inputs
and keeps the head valid for larger ones.

Parameter names (same in the torch twin): ``features.{i}.weight`` for convs,
``features.{i}.{gamma,beta,moving_mean,moving_variance}`` for BN, ``classifier.{weight,bias}``.
"""

from __future__ import annotations

from mindspore import nn

from model_zoo.src.models._layers import batch_norm, conv3x3

__all__ = ["VGG", "VGG16_CFG", "vgg16_bn"]

VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG(nn.Cell):
    """VGG-BN feature stack + global average pooling + one Dense layer.

    Args:
        cfg: channel widths, ``"M"`` for a 2x2 max pooling.
        num_classes: number of outputs.
    """

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Cell] = []
        channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [conv3x3(channels, int(v)), batch_norm(int(v)), nn.ReLU()]
                channels = int(v)
        self.features = nn.SequentialCell(layers)
        self.classifier = nn.Dense(channels, num_classes)

    def construct(self, x):
        """``[N, 3, H, W]`` images -> ``[N, num_classes]`` logits."""
        x = self.features(x)
        x = x.mean(axis=(2, 3))
        return self.classifier(x)


def vgg16_bn(num_classes: int = 10) -> VGG:
    """CIFAR VGG16-BN (14.7 M parameters with 10 classes)."""
    return VGG(VGG16_CFG, num_classes)

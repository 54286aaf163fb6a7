"""Layer factories shared by the networks, so every net uses the same conventions.

The conventions are those of the PyTorch twins in ``reference_torch/models.py``:

* convolutions use ``pad_mode="pad"`` with explicit padding (MindSpore's default ``"same"``
  pads asymmetrically for stride 2 and does not match torch), ``group=1``, and He-normal
  weights with ``mode="fan_out"`` for ReLU (as torchvision does);
* batch norm uses ``eps=1e-5`` and ``momentum=0.9``: MindSpore's ``momentum`` weights the old
  running statistic, torch's weights the new batch statistic, so MindSpore 0.9 == torch 0.1;
* dense layers keep MindSpore's default init, which is torch's ``nn.Linear`` default
  (``HeUniform(a=sqrt(5))`` weights and ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` bias).
"""

from __future__ import annotations

from mindspore import nn
from mindspore.common.initializer import HeNormal

BN_MOMENTUM = 0.9  # == torch momentum 0.1
BN_EPS = 1e-5


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    has_bias: bool = False,
) -> nn.Conv2d:
    """A torch-compatible ``nn.Conv2d``: explicit zero padding, He-normal (fan_out) weights."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        pad_mode="pad",
        padding=padding,
        has_bias=has_bias,
        group=1,
        weight_init=HeNormal(mode="fan_out", nonlinearity="relu"),
    )


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a batch norm follows)."""
    return conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a batch norm follows)."""
    return conv2d(in_channels, out_channels, 1, stride=stride)


def batch_norm(num_features: int) -> nn.BatchNorm2d:
    """``nn.BatchNorm2d`` with torch's defaults (gamma 1, beta 0, momentum 0.1 in torch terms)."""
    return nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)

"""PyTorch twins of the model-zoo networks (``model_zoo/src/models``), module for module.

Each twin has the same module tree, layer order, padding, pooling and initialization as its
MindSpore network, so its ``state_dict`` keys become MindSpore parameter names by the rule of
``model_zoo.src.models.name_map.torch_to_ms_name`` (a BN's ``weight``/``bias``/
``running_mean``/``running_var`` -> ``gamma``/``beta``/``moving_mean``/``moving_variance``,
everything else unchanged; ``num_batches_tracked`` is dropped).

Twins: ``mlp``, ``small_cnn``, ``resnet20``/``resnet32``/``resnet56`` (one builder) and
``vgg16_bn``. See the MindSpore modules for the architecture notes (option-A shortcuts, the VGG
head); they are not repeated here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TORCH_MODELS",
    "create_torch_model",
    "MLP",
    "SmallCNN",
    "CifarResNet",
    "VGG",
    "VGG16_CFG",
    "mlp",
    "small_cnn",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg16_bn",
]

BN_MOMENTUM = 0.1  # == MindSpore momentum 0.9
BN_EPS = 1e-5


def _conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = False,
) -> nn.Conv2d:
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv  # bias (if any): torch's default U(+-1/sqrt(fan_in)), as MindSpore's


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return _conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


def _batch_norm(num_features: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)


class MLP(nn.Module):
    """Twin of ``model_zoo.src.models.mlp.MLP``: ``Flatten -> [Linear -> ReLU]* -> fc``."""

    def __init__(
        self, in_dim: int = 3 * 32 * 32, hidden: Sequence[int] = (128, 64), num_classes: int = 10
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` inputs (flattened) -> ``[N, num_classes]`` logits."""
        return self.fc(self.hidden(self.flatten(x)))


class SmallCNN(nn.Module):
    """Twin of ``model_zoo.src.models.small_cnn.SmallCNN``."""

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
        self.conv1 = _conv2d(in_channels, c1, 3, padding=1, bias=True)
        self.conv2 = _conv2d(c1, c2, 3, padding=1, bias=True)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c2 * (image_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` images -> ``[N, num_classes]`` logits."""
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(self.flatten(x))


class ShortcutA(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` zero-padded by ``pad`` channels on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> ``[N, C + 2 pad, ceil(H / 2), ceil(W / 2)]``."""
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Twin of ``model_zoo.src.models.resnet_cifar.BasicBlock``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = _batch_norm(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _batch_norm(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif stride == 2 and planes == 2 * in_planes:
            self.shortcut = ShortcutA(planes // 4)
        else:
            raise ValueError(
                "option-A shortcut expects stride 2 and doubled channels, got "
                f"stride={stride}, {in_planes} -> {planes} channels"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C_in, H, W]`` -> ``[N, C_out, H / stride, W / stride]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Twin of ``model_zoo.src.models.resnet_cifar.CifarResNet`` (depth ``6n + 2``)."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = _batch_norm(16)
        self.relu = nn.ReLU()
        self.layer1 = _stage(16, 16, n, stride=1)
        self.layer2 = _stage(16, 32, n, stride=2)
        self.layer3 = _stage(32, 64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` images -> ``[N, num_classes]`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


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


class VGG(nn.Module):
    """Twin of ``model_zoo.src.models.vgg.VGG``: conv-BN-ReLU stack, global pool, one Linear."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [_conv3x3(channels, int(v)), _batch_norm(int(v)), nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` images -> ``[N, num_classes]`` logits."""
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def mlp(num_classes: int = 10, in_dim: int = 3 * 32 * 32, hidden: Sequence[int] = (128, 64)) -> MLP:
    """Twin of the ``mlp`` registry entry."""
    return MLP(in_dim=in_dim, hidden=hidden, num_classes=num_classes)


def small_cnn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    channels: tuple[int, int] = (8, 16),
) -> SmallCNN:
    """Twin of the ``small_cnn`` registry entry."""
    return SmallCNN(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=channels
    )


def resnet20(num_classes: int = 10) -> CifarResNet:
    """Twin of ``resnet20``."""
    return CifarResNet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """Twin of ``resnet32``."""
    return CifarResNet(32, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """Twin of ``resnet56``."""
    return CifarResNet(56, num_classes)


def vgg16_bn(num_classes: int = 10) -> VGG:
    """Twin of ``vgg16_bn``."""
    return VGG(VGG16_CFG, num_classes)


TORCH_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "vgg16_bn": vgg16_bn,
}


def create_torch_model(name: str, num_classes: int = 10, **kwargs: object) -> nn.Module:
    """Build the torch twin of the model-zoo network ``name`` (a key of :data:`TORCH_MODELS`).

    Raises:
        ValueError: ``name`` has no twin; the message lists those that do.
    """
    key = name.lower()
    if key not in TORCH_MODELS:
        raise ValueError(
            f"no torch twin for '{name}'; available: {', '.join(sorted(TORCH_MODELS))}"
        )
    return TORCH_MODELS[key](num_classes=num_classes, **kwargs)

"""The model registry: names to constructors, and :func:`create_model`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mindspore import nn

from model_zoo.src.models.mlp import mlp
from model_zoo.src.models.resnet_cifar import resnet20, resnet32, resnet56
from model_zoo.src.models.resnet_imagenet import resnet50
from model_zoo.src.models.small_cnn import small_cnn
from model_zoo.src.models.vgg import vgg16_bn

__all__ = ["MODELS", "create_model"]

MODELS: dict[str, Callable[..., nn.Cell]] = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "vgg16_bn": vgg16_bn,
    "resnet50": resnet50,
}


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Cell:
    """Build the registered network ``name``.

    Args:
        name: a key of :data:`MODELS` (case-insensitive).
        num_classes: number of outputs.
        **kwargs: passed to the constructor (e.g. ``hidden=(256,)`` for ``mlp``).

    Raises:
        ValueError: ``name`` is not registered; the message lists the registered names.
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}")
    return MODELS[key](num_classes=num_classes, **kwargs)

"""The model-zoo networks (MindSpore Cells) and their registry.

========== ===============================================================
name       network
========== ===============================================================
mlp        fully connected ReLU net (configurable widths)
small_cnn  two biased 3x3 convs + pooling + Dense (fast tests)
resnet20   CIFAR ResNet-20, option-A shortcuts (He et al., 2016)
resnet32   CIFAR ResNet-32
resnet56   CIFAR ResNet-56
vgg16_bn   CIFAR VGG16 with batch norm, 512 -> num_classes head
resnet50   ImageNet bottleneck ResNet-50
========== ===============================================================

Parameter names match the torch twins in ``reference_torch/models.py`` through
:mod:`model_zoo.src.models.name_map`.
"""

from model_zoo.src.models.mlp import MLP, mlp
from model_zoo.src.models.name_map import (
    batchnorm_prefixes,
    load_torch_state,
    map_torch_state,
    torch_to_ms_name,
)
from model_zoo.src.models.registry import MODELS, create_model
from model_zoo.src.models.resnet_cifar import CifarResNet, resnet20, resnet32, resnet56
from model_zoo.src.models.resnet_imagenet import ResNet, resnet50
from model_zoo.src.models.small_cnn import SmallCNN, small_cnn
from model_zoo.src.models.vgg import VGG, vgg16_bn

__all__ = [
    "MODELS",
    "create_model",
    "MLP",
    "SmallCNN",
    "CifarResNet",
    "VGG",
    "ResNet",
    "mlp",
    "small_cnn",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg16_bn",
    "resnet50",
    "torch_to_ms_name",
    "batchnorm_prefixes",
    "map_torch_state",
    "load_torch_state",
]

"""Model zoo: the paper's networks and data pipelines, in the MindSpore model-zoo layout.

``model_zoo.src.models`` holds the networks and their registry (:func:`create_model`),
``model_zoo.src.dataset`` the data pipelines (:func:`create_dataset`). Both are re-exported
here. Set ``ONEDNN_MAX_CPU_ISA=AVX2`` before the first MindSpore import (see
``docs/performance.md``): on AVX-512 CPUs convolutions are otherwise ~30x slower.
"""

from model_zoo.src.dataset import DATASETS, DatasetSpec, create_dataset
from model_zoo.src.models import MODELS, create_model

__all__ = ["MODELS", "create_model", "DATASETS", "DatasetSpec", "create_dataset"]

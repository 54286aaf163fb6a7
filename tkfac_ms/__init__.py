"""tkfac_ms: TKFAC (Trace-restricted KFAC, Gao et al., AAAI 2021) for MindSpore, in GRAPH_MODE.

Three lines turn a network into a TKFAC-trained one::

    opt = tkfac_ms.TKFAC(net, learning_rate=0.1, approximation="tkfac_new")
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, loss_fn), opt)
    mindspore.train.Model(cell).train(epochs, dataset)

Importing this package sets ``ONEDNN_MAX_CPU_ISA=AVX2`` unless it is already set: MindSpore's
CPU convolutions run ~60x slower on AVX-512 code paths (measured with MindSpore 2.10: a 16-channel
3x3 conv, batch 32, 32x32, takes 290 ms at any AVX-512 level and 5 ms at AVX2). oneDNN reads the
variable when the first kernel is created, so it also works when MindSpore was imported first.
It only concerns oneDNN CPU kernels; GPU and Ascend are unaffected. Set the variable yourself to
choose otherwise. See docs/performance.md.

Importing the package does not load MindSpore: the names that need it (``TKFAC``, the wrappers,
the statistics, the callbacks) are imported on first use (PEP 562 ``__getattr__``). The config
module, :mod:`tkfac_ms.config`, is framework-free and shared with ``reference_torch``, so the
torch twin runs without MindSpore being loaded.
"""

import os as _os
from importlib import import_module as _import_module
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

_os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before anything loads MindSpore

from tkfac_ms.config import Approximation, FisherType, LossReduction, TKFACConfig

if TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs
    from tkfac_ms._math import kfac_stats, tkfac_stats
    from tkfac_ms.callbacks import DampingDiagnostics, damping_ratios
    from tkfac_ms.capture import TKFACConv2d, TKFACDense, TKFACLayer, find_wrappers, wrap_network
    from tkfac_ms.checkpoint import check_checkpoint, load_checkpoint
    from tkfac_ms.optimizer import TKFAC
    from tkfac_ms.train_cell import TKFACTrainOneStepCell

try:  # the installed distribution's version (pyproject.toml's); a bare checkout has none
    __version__: str = _metadata.version("tkfac-ms")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

#: The public names that need MindSpore, and the submodule each one is imported from.
_LAZY = {
    "TKFAC": "tkfac_ms.optimizer",
    "TKFACTrainOneStepCell": "tkfac_ms.train_cell",
    "load_checkpoint": "tkfac_ms.checkpoint",
    "check_checkpoint": "tkfac_ms.checkpoint",
    "wrap_network": "tkfac_ms.capture",
    "find_wrappers": "tkfac_ms.capture",
    "TKFACLayer": "tkfac_ms.capture",
    "TKFACDense": "tkfac_ms.capture",
    "TKFACConv2d": "tkfac_ms.capture",
    "tkfac_stats": "tkfac_ms._math",
    "kfac_stats": "tkfac_ms._math",
    "DampingDiagnostics": "tkfac_ms.callbacks",
    "damping_ratios": "tkfac_ms.callbacks",
}

__all__ = [
    "__version__",
    "TKFAC",
    "TKFACTrainOneStepCell",
    "load_checkpoint",
    "check_checkpoint",
    "wrap_network",
    "find_wrappers",
    "tkfac_stats",
    "kfac_stats",
    "Approximation",
    "FisherType",
    "LossReduction",
    "TKFACConfig",
    "TKFACLayer",
    "TKFACDense",
    "TKFACConv2d",
    "DampingDiagnostics",
    "damping_ratios",
]


def __getattr__(name: str) -> object:
    """Import a MindSpore-backed public name on first access (PEP 562), then cache it."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy ones included (PEP 562)."""
    return sorted(set(globals()) | set(__all__))

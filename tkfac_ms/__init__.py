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
"""

import os as _os
from importlib import metadata as _metadata

_os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

from tkfac_ms._math import kfac_stats, tkfac_stats
from tkfac_ms.callbacks import DampingDiagnostics, damping_ratios
from tkfac_ms.capture import TKFACConv2d, TKFACDense, TKFACLayer, find_wrappers, wrap_network
from tkfac_ms.config import Approximation, FisherType, LossReduction, TKFACConfig
from tkfac_ms.optimizer import TKFAC
from tkfac_ms.train_cell import TKFACTrainOneStepCell

try:  # the installed distribution's version (pyproject.toml's); a bare checkout has none
    __version__: str = _metadata.version("tkfac-ms")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "TKFAC",
    "TKFACTrainOneStepCell",
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

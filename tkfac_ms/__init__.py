"""tkfac_ms: TKFAC (Trace-restricted KFAC, Gao et al., AAAI 2021) for MindSpore, in GRAPH_MODE.

Three lines turn a network into a TKFAC-trained one::

    opt = tkfac_ms.TKFAC(net, learning_rate=0.1, approximation="tkfac_new")
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, loss_fn), opt)
    mindspore.train.Model(cell).train(epochs, dataset)
"""

from tkfac_ms._math import kfac_stats, tkfac_stats
from tkfac_ms.capture import TKFACConv2d, TKFACDense, TKFACLayer, find_wrappers, wrap_network
from tkfac_ms.config import Approximation, FisherType, LossReduction, TKFACConfig
from tkfac_ms.optimizer import TKFAC
from tkfac_ms.train_cell import TKFACTrainOneStepCell

__all__ = [
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
]

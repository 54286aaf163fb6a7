"""The reference's hyperparameters: a re-export of the shared, framework-free config module.

The enums, :class:`TKFACConfig` and the validators live in ``tkfac_ms/config.py``, the one
source both twins use (it imports neither torch nor MindSpore, and importing it does not load
MindSpore). ``reference_torch.config.TKFACConfig is tkfac_ms.config.TKFACConfig``: the twins
accept and reject the same values with the same messages.
"""

from tkfac_ms.config import (
    Approximation,
    FisherType,
    LossReduction,
    Schedule,
    TKFACConfig,
    check_decay_filter,
    check_skip,
)

__all__ = [
    "Approximation",
    "FisherType",
    "LossReduction",
    "Schedule",
    "TKFACConfig",
    "check_decay_filter",
    "check_skip",
]

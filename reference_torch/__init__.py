"""reference_torch: the PyTorch reference TKFAC, the oracle the MindSpore port is held to.

It implements ``shared/spec/tkfac-math.md`` (restated in ``docs/math.md``) in three layers:
``_math.py`` (pure formulas), ``capture.py`` (hooks that record ``a`` and ``u``) and
``optimizer.py`` (schedules and state). Usage::

    opt = reference_torch.TKFAC(model, lr=0.1, approximation="tkfac_nor", fisher="empirical")
    opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
"""

from importlib import metadata as _metadata

from reference_torch._math import kfac_stats, tkfac_stats
from reference_torch.approximations import (
    KFAC,
    CurvatureApproximation,
    TKFACNew,
    TKFACNor,
    make_approximation,
)
from reference_torch.capture import LayerCapture, UnsupportedLayerError
from reference_torch.config import Approximation, FisherType, LossReduction, TKFACConfig
from reference_torch.optimizer import TKFAC, LayerState, default_decay_filter

try:  # the installed distribution's version (pyproject.toml's); a bare checkout has none
    __version__: str = _metadata.version("tkfac-ms")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "TKFAC",
    "TKFACConfig",
    "Approximation",
    "FisherType",
    "LossReduction",
    "LayerState",
    "CurvatureApproximation",
    "TKFACNor",
    "TKFACNew",
    "KFAC",
    "make_approximation",
    "LayerCapture",
    "UnsupportedLayerError",
    "default_decay_filter",
    "tkfac_stats",
    "kfac_stats",
]

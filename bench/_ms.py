"""MindSpore helpers shared by the training benchmarks: optimizer factory, state reset, loops.

Compiling a TKFAC train cell takes a minute for ResNet-20 on the 2-core CPU (one graph holds the
ordinary, factor-update and inverse-update steps), so a benchmark compiles each optimizer once
and reuses the cell for every seed or grid point: :class:`Snapshot` records every Parameter of
the cell (weights, BatchNorm statistics, optimizer state, step counter, learning rate) right
after construction, and :func:`reset` puts it back, with fresh weights for the next seed.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before the first MindSpore conv
os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops  # noqa: E402

import tkfac_ms  # noqa: E402

SECOND_ORDER = {"kfac": "kfac", "tkfac_nor": "tkfac_nor", "tkfac_new": "tkfac_new"}


def setup(seed: int = 0) -> None:
    """GRAPH_MODE on the CPU, as every benchmark runs."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(seed)


@dataclass
class OptimizerSpec:
    """One optimizer configuration of a comparison (MindSpore's own baselines or TKFAC)."""

    name: str  # "sgdm", "adam", "kfac", "tkfac_nor", "tkfac_new"
    lr: float
    damping: float = 1e-3  # KFAC, TKFAC_nor
    nu: float = 1e-3  # TKFAC_new
    update_steps: int = 10  # T_FIM = T_INV
    fisher: str = "true"
    momentum: float = 0.9
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.name in ("sgdm", "adam"):
            return f"{self.name} lr={self.lr:g}"
        if self.name == "tkfac_new":
            return f"{self.name} lr={self.lr:g} nu={self.nu:g}"
        return f"{self.name} lr={self.lr:g} damping={self.damping:g}"


def train_cell(
    spec: OptimizerSpec, net: nn.Cell, loss_fn: nn.Cell, lr: float | Sequence[float]
) -> tuple[nn.Cell, nn.Optimizer]:
    """``(train cell, optimizer)`` for ``spec``; ``lr`` a float or a per-step list."""
    with_loss = nn.WithLossCell(net, loss_fn)
    lr_value = list(lr) if isinstance(lr, (list, tuple)) else float(lr)
    if spec.name == "sgdm":
        opt = nn.Momentum(net.trainable_params(), lr_value, spec.momentum)
        return nn.TrainOneStepCell(with_loss, opt), opt
    if spec.name == "adam":
        opt = nn.Adam(net.trainable_params(), lr_value)
        return nn.TrainOneStepCell(with_loss, opt), opt
    if spec.name not in SECOND_ORDER:
        raise ValueError(f"unknown optimizer {spec.name!r}")
    opt = tkfac_ms.TKFAC(
        net,
        lr_value,
        momentum=spec.momentum,
        damping=spec.damping,
        nu=spec.nu,
        approximation=SECOND_ORDER[spec.name],
        factor_update_steps=spec.update_steps,
        inv_update_steps=spec.update_steps,
        fisher=spec.fisher,
        **spec.extra,
    )
    return tkfac_ms.TKFACTrainOneStepCell(with_loss, opt), opt


class _AssignAll(nn.Cell):
    """``ops.assign`` of a tuple of values to a tuple of Parameters, in one compiled graph."""

    def __init__(self, params: list[Parameter]):
        super().__init__()
        self.params = ParameterTuple(params)

    def construct(self, values):
        out = ()
        for i in range(len(self.params)):
            out += (ops.assign(self.params[i], values[i]),)
        return out


class Snapshot:
    """Every Parameter of a cell and its value now, to be put back by :meth:`restore`.

    The values are written back by ``ops.assign`` inside a compiled graph, not by
    ``Parameter.set_data``: after a ``TKFACTrainOneStepCell`` has run once, its compiled graph
    does not see values given by ``set_data`` (measured with MindSpore 2.10 on the CPU: the
    train step went on from the old weights while the evaluation graph saw the new ones; an
    ``nn.TrainOneStepCell`` does see them).
    """

    def __init__(self, cell: nn.Cell):
        params = list(cell.get_parameters())
        self.names = [p.name for p in params]
        self.values = [p.asnumpy().copy() for p in params]
        self._assign = _AssignAll(params)

    def restore(self, overrides: dict[str, np.ndarray] | None = None) -> None:
        """Put every value back; ``overrides`` (by Parameter name) replace some of them."""
        overrides = overrides or {}
        values = tuple(
            Tensor(overrides.get(n, v).astype(v.dtype, copy=False))
            for n, v in zip(self.names, self.values, strict=True)
        )
        self._assign(values)


def seeded_weights(make_net: Callable[[], nn.Cell], seed: int) -> dict[str, np.ndarray]:
    """The initial weights (and BN buffers) a new ``make_net()`` gets under ``seed``, by name.

    Wrapping a layer for TKFAC keeps its parameter names, so they match the trained net's.
    """
    ms.set_seed(seed)
    return {p.name: p.asnumpy() for p in make_net().get_parameters()}


def step_lrs(lr: float, steps: int, decay_at: int | None, factor: float = 0.1) -> list[float]:
    """Per-step learning rates: ``lr``, times ``factor`` from step ``decay_at`` on."""
    return [lr * (factor if decay_at is not None and t >= decay_at else 1.0) for t in range(steps)]


def batches(n: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled index batches of one epoch (the last incomplete batch dropped)."""
    perm = rng.permutation(n)
    return [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_step(cell: nn.Cell, x: Tensor, y: Tensor) -> tuple[float, float]:
    """One training step; ``(loss, seconds)`` (the loss read back, so the step has finished)."""
    t0 = time.perf_counter()
    loss = float(cell(x, y).asnumpy())
    return loss, time.perf_counter() - t0

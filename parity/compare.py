"""Run ``tkfac_ms`` and ``reference_torch`` side by side and measure how far apart they are.

One :class:`Case` (a network, an approximation, a batch size, a schedule) gives a
:class:`CaseResult`: one :class:`Row` per layer (or parameter) and quantity, each the maximum
relative error ``max|x_ms - x_torch| / max|x_torch|`` of a MindSpore quantity against the same
quantity computed by the PyTorch oracle. Both sides load their weights from one ONNX file
(:func:`parity.onnx_weights.make_twins`) and see the same batches and the same sampled labels.

What is compared, in this order (the weights change from step 0 on, so the order matters):

``forward.*``
    eval-mode logits of batch 0: torch vs ONNX Runtime, MindSpore vs torch, MindSpore vs
    ONNX Runtime.
``stats.empirical.*``, ``stats.true.*``
    the statistics of the captured ``a`` and ``u`` on batch 0 (BatchNorm in train mode), with
    ``fisher="empirical"`` and with ``fisher="true"`` (the labels torch sampled, handed to
    MindSpore): TKFAC ``delta``, ``phi``, ``psi`` (spec Sec. 2); KFAC ``A``, ``G`` (Sec. 6).
    MindSpore: ``TKFACTrainOneStepCell.layer_statistics``; torch: ``layer_state`` after step 0.
``step0.*``
    the state after step 0 (a factor and inverse step): ``delta``, the damped factors
    ``a_factor``/``g_factor`` (TKFAC: ``Phi_hat``/``Psi_hat`` or ``Phi~``/``Psi~``, the moving
    average starting at the current value; KFAC: undamped ``A``/``G``), their inverses
    ``a_inv``/``g_inv`` (KFAC: of the pi-damped factors), and ``beta`` (TKFAC_new).
``D.*``
    the update direction ``D`` of every trainable parameter on step 0 (preconditioned for the
    wrapped layers, the gradient for BatchNorm). It is read from the momentum buffers: they
    start at 0, so after step 0 ``v = tau * 0 + D`` holds ``D`` exactly on both sides (the
    parameter difference ``-(w_1 - w_0) / lr`` would lose digits to float32 cancellation).
``loss``, ``traj.*``, ``traj.v.*``
    the training loss, every parameter and BatchNorm running statistic (``traj.*``) and every
    momentum buffer (``traj.v.*``) after each of ``steps`` steps, BatchNorm in train mode, with
    ``factor_update_steps = inv_update_steps = 3``: steps 0, 3, 6, 9 update the factors and
    inverses, the others take the skip path. A row is the maximum over the steps.
``final.*``
    ``delta``, factors and inverses after the last step (moving averages over 4 updates).

Precision: Dense-only nets (``mlp``) run in float64 on both sides, factor state included; conv
nets in float32 (MindSpore's CPU convolution has no float64 kernel).

Two measures keep the float32 comparisons about the port and not about chaos:

* **Batches on which both frameworks take the same branches.** ReLU and max pooling are not
  differentiable at ties. When a ReLU input or the gap between the two largest values of a
  pooling window lies within float32 rounding of 0, the two frameworks can take different
  branches, and one such flip on VGG16's 2x2 stage changes the momentum of a layer by 5.5e-2
  (torch float32 against torch float64 by as much: docs/parity.md). So a float32 batch is used
  only if, on torch's current weights (BatchNorm in train mode), the ReLU masks and the
  max-pool argmaxes of MindSpore float32, torch float32 and torch float64 are identical at
  every call (:class:`BranchProbe`; the float32 rounding error grows from ~2e-7 of a tensor's
  largest value at VGG16's first layer to ~1e-5 at its last, so no fixed margin would do);
  otherwise the next random batch is drawn (at most ``max_draws``; the disagreements left in
  the batches used, 0 in every published run, and the smallest relative kink distance are
  reported).
* **Re-anchoring** (``resync``, on for float32 nets). After each step is compared, MindSpore's
  weights, BatchNorm statistics and momentum buffers are overwritten with torch's, so every
  step starts from the same point and its difference is the port's own one-step error. The
  TKFAC state (``delta``, factors, inverses, ``beta``) and the step counter are *not* copied:
  they evolve independently for all 10 steps and are compared after each update and at the
  end. Free-running float32 trajectories (``resync=False``) drift apart at the rate the
  natural-gradient step amplifies rounding (ResNet-20, TKFAC_nor: 4e-6 at step 1, 0.4 at step
  9); the float64 MLP runs free.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before mindspore: AVX-512 convs are slow
os.environ.setdefault("GLOG_v", "3")
# Before torch and mindspore load OpenMP: idle worker threads sleep instead of spinning. Both
# frameworks run in one process here, and spinning threads of one slow the other ~8x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import mindspore as ms  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

import reference_torch  # noqa: E402
import tkfac_ms  # noqa: E402
from model_zoo.src.models.name_map import batchnorm_prefixes, torch_to_ms_name  # noqa: E402
from parity.onnx_weights import Twins, make_twins, onnxruntime_forward  # noqa: E402

__all__ = [
    "APPROXIMATIONS",
    "FLOAT64_MODELS",
    "GROUPS",
    "MODELS",
    "NU",
    "Case",
    "CaseResult",
    "BranchProbe",
    "Row",
    "branch_disagreements",
    "group_of",
    "kink_margin",
    "load_result",
    "rel_err",
    "run_case",
]

MODELS = ("mlp", "small_cnn", "resnet20", "vgg16_bn")
APPROXIMATIONS = ("tkfac_nor", "tkfac_new", "kfac")
#: Nets without convolutions: compared in float64 (MindSpore's CPU Dense supports it).
FLOAT64_MODELS = frozenset({"mlp"})
#: TKFAC_new's ``nu`` per net: between the smallest and the largest ``delta`` of its layers on
#: these batches (conv deltas: small_cnn 5-16, ResNet-20 1-108, VGG16 1e3-2e4; MLP dense
#: deltas 3-79), so that the floor ``max(nu, .)`` is active for some layers and not for others
#: and Eq. 16's ``beta`` is not 1. With a small ``nu`` (paper-like 1e-3) no delta is floored,
#: ``beta = 1`` exactly, and those code paths would go untested.
NU = {"mlp": 10.0, "small_cnn": 10.0, "resnet20": 10.0, "vgg16_bn": 3000.0}


@dataclass(frozen=True)
class Case:
    """One parity configuration; both optimizers get the same hyperparameters.

    The defaults are the published configuration (``docs/parity.md``). ``damping = 0.1`` and
    ``lr = 2**-8`` keep 10 steps on random data with 4 samples from diverging (with the paper's
    ``damping = 1e-3`` the loss explodes within 5 steps, and then the comparison measures
    overflow). The learning rate is a power of two: ``nn.Optimizer`` stores it in float32, and
    a dyadic value is exact in both frameworks and precisions.
    """

    model: str
    approximation: str
    batch: int = 4
    #: Training steps compared; 0 compares only the forward pass and the batch statistics.
    steps: int = 10
    factor_update_steps: int = 3
    inv_update_steps: int = 3
    lr: float = 2.0**-8
    momentum: float = 0.9
    damping: float = 0.1
    #: TKFAC_new's trace floor; None: :data:`NU` of the model (see there).
    nu: float | None = None
    factor_decay: float = 0.95
    seed: int = 0
    image_size: int = 32
    num_classes: int = 10
    #: Re-anchor MindSpore on torch after every step (module docstring); None: float32 nets.
    resync: bool | None = None
    #: Draw float32 batches until MindSpore float32, torch float32 and torch float64 agree on
    #: every ReLU mask and max-pool argmax (:class:`BranchProbe`); False: first draw.
    branch_check: bool = True
    #: Additionally, the smallest relative distance to a kink (:func:`kink_margin`); 0: off.
    kink_margin: float = 0.0
    #: Batches tried per step before the one with the fewest disagreements is taken anyway.
    max_draws: int = 60
    #: Which Fisher's batch statistics to compare (each one more MindSpore graph to compile).
    statistics: tuple[str, ...] = ("empirical", "true")
    #: Multiplies MindSpore's damping only: a deliberately broken run, for the tests that show
    #: that the comparison can fail. 1.0 in every real run.
    ms_damping_scale: float = 1.0

    @property
    def float64(self) -> bool:
        """Whether both sides compute in float64."""
        return self.model in FLOAT64_MODELS

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``[N, 3, H, W]``."""
        return (self.batch, 3, self.image_size, self.image_size)

    @property
    def model_kwargs(self) -> dict[str, int]:
        """Constructor arguments that follow the image size (the same for both twins)."""
        if self.model == "mlp":
            return {"in_dim": 3 * self.image_size * self.image_size}
        if self.model == "small_cnn":
            return {"image_size": self.image_size}
        return {}

    @property
    def label(self) -> str:
        """``model/approximation``."""
        return f"{self.model}/{self.approximation}"

    def __post_init__(self) -> None:
        """Validate; resolve ``resync``."""
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.approximation not in APPROXIMATIONS:
            raise ValueError(
                f"approximation must be one of {', '.join(APPROXIMATIONS)}, "
                f"got {self.approximation!r}"
            )
        if self.batch < 2:
            raise ValueError(f"batch must be >= 2 (BatchNorm in train mode), got {self.batch}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not set(self.statistics) <= {"empirical", "true"}:
            raise ValueError(
                f"statistics must name 'empirical' and/or 'true', got {self.statistics!r}"
            )
        if self.max_draws < 1:
            raise ValueError(f"max_draws must be >= 1, got {self.max_draws}")
        mantissa, _ = math.frexp(self.lr)
        if self.lr <= 0 or mantissa != 0.5:
            raise ValueError(f"lr must be a power of two (exact in float32), got {self.lr}")
        if self.resync is None:
            object.__setattr__(self, "resync", not self.float64)
        if self.nu is None:
            object.__setattr__(self, "nu", NU[self.model])


@dataclass
class Row:
    """One compared quantity.

    Attributes:
        model: network name.
        approximation: ``tkfac_nor``, ``tkfac_new`` or ``kfac``.
        layer: layer path (or parameter path without its leaf); ``-`` for network-wide rows.
        quantity: e.g. ``stats.true.phi``, ``step0.a_inv``, ``D.weight``, ``traj.v.gamma``.
        err: max relative error ``max|ms - torch| / max|torch|`` (maximum over steps for the
            trajectory rows).
        scale: ``max|torch|``, the reference magnitude (a zero scale would make the row empty).
        tol: tolerance, set by :func:`parity.tolerances.attach`; None until then.
    """

    model: str
    approximation: str
    layer: str
    quantity: str
    err: float
    scale: float
    tol: float | None = None

    @property
    def group(self) -> str:
        """The tolerance group of :attr:`quantity` (see :func:`group_of`)."""
        return group_of(self.quantity)

    @property
    def passed(self) -> bool | None:
        """``err <= tol``; None while there is no tolerance."""
        if self.tol is None:
            return None
        return bool(self.err <= self.tol)

    def as_dict(self) -> dict:
        """JSON-ready dict, with ``group`` and ``passed``."""
        return {**asdict(self), "group": self.group, "passed": self.passed}


@dataclass
class CaseResult:
    """The rows of one case and how they were obtained.

    Attributes:
        case: the configuration.
        rows: one per (layer, quantity).
        min_margin: the smallest kink margin (:func:`kink_margin`) of the float32 batches used
            (None: float64 run). Informative: the float32 forward error of a deep layer is
            larger, which is why batches are chosen by ``flips``.
        draws: how many batches were drawn in all (``steps`` when every first draw was good).
        seconds: wall-clock time of the whole case.
        flips: ReLU-mask and max-pool-argmax disagreements between MindSpore float32, torch
            float32 and torch float64 summed over the batches used (None: not checked).
    """

    case: Case
    rows: list[Row]
    min_margin: float | None = None
    draws: int = 0
    seconds: float = 0.0
    flips: int | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "case": asdict(self.case),
            "min_margin": self.min_margin,
            "draws": self.draws,
            "flips": self.flips,
            "seconds": round(self.seconds, 1),
            "rows": [r.as_dict() for r in self.rows],
        }


def load_result(path: str | Path) -> CaseResult:
    """Read a :class:`CaseResult` back from the JSON that ``python -m parity`` writes."""
    data = json.loads(Path(path).read_text())
    case = dict(data["case"])
    case["statistics"] = tuple(case["statistics"])
    rows = [
        Row(**{k: v for k, v in r.items() if k not in ("group", "passed")}) for r in data["rows"]
    ]
    return CaseResult(
        Case(**case),
        rows,
        data["min_margin"],
        data["draws"],
        data["seconds"],
        data.get("flips"),
    )


#: Tolerance groups, in table order: quantity prefix -> group (first match wins).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("forward.", "forward"),
    ("stats.", "stats"),
    ("step0.beta", "beta"),
    ("step0.a_inv", "inverses"),
    ("step0.g_inv", "inverses"),
    ("step0.", "factors"),
    ("D.", "update"),
    ("traj.v.", "momentum"),
    ("traj.", "trajectory"),
    ("loss", "trajectory"),
    ("final.", "final"),
)
#: The groups in table order.
GROUPS: tuple[str, ...] = (
    "forward",
    "stats",
    "factors",
    "inverses",
    "beta",
    "update",
    "momentum",
    "trajectory",
    "final",
)


def group_of(quantity: str) -> str:
    """The tolerance group of a quantity name (one of :data:`GROUPS`)."""
    for prefix, group in _PREFIXES:
        if quantity.startswith(prefix):
            return group
    raise KeyError(f"no tolerance group for quantity {quantity!r}")


def rel_err(x, ref) -> tuple[float, float]:
    """``(max|x - ref| / max|ref|, max|ref|)`` in float64; the shapes must match.

    A non-finite difference gives ``inf``; a zero reference gives 0 if ``x`` is zero too.
    """
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: MindSpore {x.shape} vs torch {ref.shape}")
    if not ref.size:
        raise ValueError("empty tensors: nothing to compare")
    scale = float(np.abs(ref).max())
    diff = float(np.abs(x - ref).max())
    if not (np.isfinite(diff) and np.isfinite(scale)):
        return math.inf, scale
    if scale == 0.0:
        return (0.0 if diff == 0.0 else math.inf), scale
    return diff / scale, scale


# ----------------------------------------------------------------------------- kinks


def _torch_kink_inputs(model: torch.nn.Module, x: np.ndarray, dtype: torch.dtype) -> list:
    """``(module, input)`` of every ``nn.ReLU`` and ``nn.MaxPool2d`` call, in call order.

    On a copy of ``model`` in ``dtype`` and in its current train/eval mode (a train-mode
    BatchNorm updates only the copy's running statistics).
    """
    probe = copy.deepcopy(model).to(dtype)
    calls: list[tuple[torch.nn.Module, np.ndarray]] = []

    def hook(module, inputs, _output):
        calls.append((module, inputs[0].detach().to(torch.float64).numpy().copy()))

    for module in probe.modules():
        if isinstance(module, torch.nn.ReLU | torch.nn.MaxPool2d):
            module.register_forward_hook(hook)
    with torch.no_grad():
        probe(torch.from_numpy(x).to(dtype))
    return calls


def _windows(v: np.ndarray, module: torch.nn.MaxPool2d) -> np.ndarray:
    """``[N, C, windows, k*k]``: the pooling windows of ``v`` (no padding, no dilation)."""
    k, s = module.kernel_size, module.stride
    k = (k, k) if isinstance(k, int) else tuple(k)
    s = (s, s) if isinstance(s, int) else tuple(s)
    t = torch.from_numpy(v).unfold(2, k[0], s[0]).unfold(3, k[1], s[1])
    return t.reshape(*v.shape[:2], -1, k[0] * k[1]).numpy()


def _call_margin(module: torch.nn.Module, v: np.ndarray) -> float | None:
    """Relative kink distance of one call (see :func:`kink_margin`); None: nothing live."""
    scale = float(np.abs(v).max())
    if scale == 0:
        return None
    if isinstance(module, torch.nn.ReLU):
        return float(np.abs(v).min() / scale)
    win = np.sort(_windows(v, module), axis=-1)
    live = win[..., -1] > 0
    if not live.any():
        return None
    return float((win[..., -1] - win[..., -2])[live].min() / scale)


def kink_margin(model: torch.nn.Module, x: np.ndarray) -> float:
    """How far a batch is from the non-differentiable points of a ReLU / max-pool net.

    In float64, on a copy of ``model`` in its current train/eval mode: the minimum over every
    ``nn.ReLU`` call of ``min|v| / max|v|`` (``v`` its input), and over every ``nn.MaxPool2d``
    call of ``min (top1 - top2) / max|v|`` across its windows whose maximum is positive (a
    window of ReLU zeros has a zero gradient whichever element wins).

    Returns:
        The margin in ``[0, 1]``; 1.0 for a net without ReLU or max pooling.
    """
    margins = [_call_margin(m, v) for m, v in _torch_kink_inputs(model, x, torch.float64)]
    return min((m for m in margins if m is not None), default=1.0)


def _branches(module: torch.nn.Module, v: np.ndarray) -> np.ndarray:
    """The branch each element takes: the ReLU mask, or the argmax of each pooling window."""
    if isinstance(module, torch.nn.ReLU):
        return v > 0
    return _windows(v, module).argmax(axis=-1)


def branch_disagreements(
    modules: list[torch.nn.Module], *opinions: list[np.ndarray], live: list[np.ndarray]
) -> list[int]:
    """Per ReLU / max-pool call, how many elements (windows) differ in any two opinions.

    Args:
        modules: the torch module of each call (``nn.ReLU`` or ``nn.MaxPool2d``).
        opinions: per framework/precision, the input of each call.
        live: per call, the input that decides which pooling windows count (those whose
            maximum is positive: a window of ReLU zeros passes no gradient whichever element
            wins); ignored for ReLU calls.
    """
    out = []
    for i, module in enumerate(modules):
        branches = [_branches(module, op[i]) for op in opinions]
        differ = np.zeros(branches[0].shape, dtype=bool)
        for b in branches[1:]:
            differ |= b != branches[0]
        if isinstance(module, torch.nn.MaxPool2d):
            differ &= _windows(live[i], module).max(axis=-1) > 0
        out.append(int(differ.sum()))
    return out


class BranchProbe:
    """ReLU masks and max-pool argmaxes of MindSpore float32, torch float32, torch float64.

    Holds a model-zoo MindSpore net of its own (never trained, so ``set_data`` works) into
    which torch's current weights and BatchNorm statistics are copied for each batch; its
    ReLU / max-pool inputs are recorded by forward hooks in PyNative mode (the mode is
    switched back to GRAPH_MODE afterwards; PyNative and GRAPH_MODE logits of a train-mode
    net are bitwise equal on CPU).
    """

    def __init__(self, case: Case):
        from model_zoo.src.models import create_model

        self.net = create_model(case.model, case.num_classes, **case.model_kwargs)
        self.net.set_train(True)
        self.params = {p.name: p for p in self.net.get_parameters()}
        self.bn = batchnorm_prefixes(self.net)
        self._calls: list[np.ndarray] = []
        for _, cell in self.net.cells_and_names():
            if isinstance(cell, nn.ReLU | nn.MaxPool2d):
                cell.register_forward_hook(self._hook)

    def _hook(self, _cell, inputs, _output):
        self._calls.append(inputs[0].asnumpy().astype(np.float64))

    def mindspore_inputs(self, model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
        """Inputs of every ReLU / max-pool call of MindSpore's forward on torch's weights."""
        for name, value in _torch_params(model, self.bn).items():
            self.params[name].set_data(Tensor(value))
        self._calls = []
        ms.set_context(mode=ms.PYNATIVE_MODE)
        try:
            self.net(Tensor(x))
        finally:
            ms.set_context(mode=ms.GRAPH_MODE)
        return self._calls

    def check(self, model: torch.nn.Module, x: np.ndarray) -> tuple[list[int], float]:
        """``(disagreements per call, kink_margin)`` of batch ``x`` on torch's weights."""
        t32 = _torch_kink_inputs(model, x, torch.float32)
        t64 = _torch_kink_inputs(model, x, torch.float64)
        ms32 = self.mindspore_inputs(model, x)
        if len(ms32) != len(t64) or any(
            a.shape != b.shape for a, (_, b) in zip(ms32, t64, strict=False)
        ):
            raise RuntimeError(
                f"ReLU / max-pool calls differ: MindSpore {[a.shape for a in ms32]} vs "
                f"torch {[b.shape for _, b in t64]}"
            )
        modules = [m for m, _ in t64]
        v64 = [v for _, v in t64]
        flips = branch_disagreements(modules, v64, [v for _, v in t32], ms32, live=v64)
        margins = [_call_margin(m, v) for m, v in t64]
        return flips, min((m for m in margins if m is not None), default=1.0)


class _Batches:
    """Random batches for the steps.

    Float32 ones are drawn until both frameworks agree on every ReLU / max-pool branch (and,
    if asked, clear the kink margin).
    """

    def __init__(self, case: Case):
        self.case = case
        self.rng = np.random.default_rng(1000 + case.seed)
        self.dtype = np.float64 if case.float64 else np.float32
        self.draws = 0
        self.min_margin: float | None = None
        self.flips: int | None = None
        self.probe = BranchProbe(case) if case.branch_check and not case.float64 else None

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        self.draws += 1
        x = self.rng.standard_normal(self.case.input_shape).astype(self.dtype)
        y = self.rng.integers(0, self.case.num_classes, self.case.batch).astype(np.int32)
        return x, y

    def next(self, model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """The batch for the next step, given torch's current weights."""
        if self.case.float64 or (self.probe is None and self.case.kink_margin <= 0):
            return self._draw()
        best, best_key = None, None
        for _ in range(self.case.max_draws):
            batch = self._draw()
            if self.probe is not None:
                per_call, margin = self.probe.check(model, batch[0])
                flips = sum(per_call)
            else:
                flips, margin = 0, kink_margin(model, batch[0])
            key = (flips, -margin)
            if best_key is None or key < best_key:
                best, best_key = batch, key
            if flips == 0 and margin >= self.case.kink_margin:
                break
        assert best is not None and best_key is not None
        flips, margin = best_key[0], -best_key[1]
        self.min_margin = margin if self.min_margin is None else min(self.min_margin, margin)
        if self.probe is not None:
            self.flips = flips + (self.flips or 0)
        return best


# ----------------------------------------------------------------------------- MindSpore side


class _CrossEntropy(nn.Cell):
    """Mean softmax cross-entropy of integer labels, in the logits' own precision.

    Written out, as ``tkfac_ms.train_cell._log_softmax`` is, because MindSpore's CPU
    ``log_softmax`` computes float64 inputs in float32 precision.
    """

    def construct(self, logits, label):
        z = logits - ops.stop_gradient(logits.max(axis=-1, keepdims=True))
        logp = z - ops.log(ops.exp(z).sum(axis=-1, keepdims=True))
        onehot = ops.one_hot(
            label, logits.shape[-1], Tensor(1.0, ms.float32), Tensor(0.0, ms.float32)
        )
        return -(ops.cast(onehot, logp.dtype) * logp).sum(axis=-1).mean()


def _ms_optimizer(net, case: Case, fisher: str) -> tkfac_ms.TKFAC:
    return tkfac_ms.TKFAC(
        net,
        case.lr,
        momentum=case.momentum,
        weight_decay=0.0,
        damping=case.damping * case.ms_damping_scale,
        nu=case.nu,
        approximation=case.approximation,
        factor_decay=case.factor_decay,
        factor_update_steps=case.factor_update_steps,
        inv_update_steps=case.inv_update_steps,
        fisher=fisher,
        loss_reduction="mean",
        factor_dtype=ms.float64 if case.float64 else ms.float32,
    )


def _ms_cell(net, opt, float64: bool) -> tkfac_ms.TKFACTrainOneStepCell:
    loss_fn = (
        _CrossEntropy()
        if float64
        else nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, loss_fn), opt)
    cell.set_train(True)  # BatchNorm on batch statistics, as torch's model.train()
    return cell


def _ms_params(net) -> dict[str, np.ndarray]:
    """Every parameter and buffer of the net except the TKFAC state, name -> array copy."""
    return {p.name: p.asnumpy().copy() for p in net.get_parameters() if ".tkfac." not in p.name}


def _ms_moments(opt) -> dict[str, np.ndarray]:
    """MindSpore momentum buffers ``v`` by parameter name."""
    return {p.name: m.asnumpy().copy() for p, m in zip(opt.parameters, opt.moments, strict=True)}


def _resync(net, opt, weights: dict[str, np.ndarray], moments: dict[str, np.ndarray]) -> None:
    """Overwrite MindSpore's weights, BatchNorm statistics and momentum buffers with torch's.

    The TKFAC state (factors, inverses, ``delta``, ``beta``) and the step counter stay as they
    are. ``ops.assign``, not ``Parameter.set_data``: once a ``TKFACTrainOneStepCell`` has run,
    its later steps ignore a ``set_data`` (docs/parity.md, "Findings").
    """
    params = {p.name: p for p in net.get_parameters()}
    for name, value in weights.items():
        ops.assign(params[name], Tensor(value))
    for p, m in zip(opt.parameters, opt.moments, strict=True):
        ops.assign(m, Tensor(moments[p.name]))


# ----------------------------------------------------------------------------- torch side


def _torch_optimizer(model, case: Case, fisher: str) -> reference_torch.TKFAC:
    return reference_torch.TKFAC(
        model,
        lr=case.lr,
        momentum=case.momentum,
        weight_decay=0.0,
        damping=case.damping,
        nu=case.nu,
        approximation=case.approximation,
        factor_decay=case.factor_decay,
        factor_update_steps=case.factor_update_steps,
        inv_update_steps=case.inv_update_steps,
        fisher=fisher,
        loss_reduction="mean",
        factor_dtype=torch.float64 if case.float64 else torch.float32,
    )


def _torch_step(model, opt, x, y, generator) -> tuple[float, torch.Tensor | None]:
    """One reference step; returns the loss and the labels it sampled (None if it did not)."""
    opt.zero_grad()
    logits = model(torch.from_numpy(x))
    loss = F.cross_entropy(logits, torch.from_numpy(y).long())
    sampled = opt.sample_fisher_backward(logits, generator=generator)
    loss.backward()
    opt.step()
    return float(loss.item()), sampled


def _torch_params(model, bn_prefixes) -> dict[str, np.ndarray]:
    """Torch ``state_dict`` under MindSpore names (``num_batches_tracked`` dropped)."""
    out = {}
    for key, value in model.state_dict().items():
        name = torch_to_ms_name(key, bn_prefixes)
        if name is not None:
            out[name] = value.detach().numpy().copy()
    return out


def _torch_moments(model, opt, bn_prefixes) -> dict[str, np.ndarray]:
    """Torch momentum buffers ``v`` under MindSpore parameter names."""
    out = {}
    for key, p in model.named_parameters():
        name = torch_to_ms_name(key, bn_prefixes)
        buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
        if name is None or buf is None:
            raise RuntimeError(f"torch parameter '{key}' has no momentum buffer after a step")
        out[name] = buf.detach().numpy().copy()
    return out


def _stat_fields(approximation: str) -> tuple[tuple[str, str, str], ...]:
    """(``layer_statistics`` key, ``LayerState`` field, row label) of the batch statistics."""
    if approximation == "kfac":
        return (("a", "a_batch", "A"), ("g", "g_batch", "G"))
    return (("delta", "delta", "delta"), ("phi", "phi", "phi"), ("psi", "psi", "psi"))


def _torch_stats(opt, names, approximation: str) -> dict[str, dict[str, np.ndarray]]:
    """The batch statistics of the last factor update, keyed like ``layer_statistics``."""
    return {
        name: {
            key: getattr(opt.layer_state(name), fld).detach().numpy().copy()
            for key, fld, _ in _stat_fields(approximation)
        }
        for name in names
    }


_STATE_FIELDS = ("a_factor", "g_factor", "a_inv", "g_inv")


# ----------------------------------------------------------------------------- the run


class _Recorder:
    """Collects rows, keeping the worst error per (layer, quantity)."""

    def __init__(self, case: Case):
        self.case = case
        self.rows: dict[tuple[str, str], Row] = {}

    def add(self, layer: str, quantity: str, x, ref) -> None:
        err, scale = rel_err(x, ref)
        old = self.rows.get((layer, quantity))
        if old is None:
            self.rows[(layer, quantity)] = Row(
                self.case.model, self.case.approximation, layer, quantity, err, scale
            )
        else:
            old.err = max(old.err, err)
            old.scale = max(old.scale, scale)

    def add_params(
        self, prefix: str, ms_values: dict[str, np.ndarray], t_values: dict[str, np.ndarray]
    ) -> None:
        """One row per parameter: layer = its path, quantity = ``prefix + leaf``."""
        for name, value in t_values.items():
            layer, _, leaf = name.rpartition(".")
            self.add(layer or "-", prefix + leaf, ms_values[name], value)

    def add_state(self, prefix: str, case: Case, ms_opt, t_opt) -> None:
        """``delta`` (TKFAC), factors and inverses of every layer."""
        for i, name in enumerate(ms_opt.layer_names):
            st, layer = t_opt.layer_state(name), ms_opt.layers[i]
            if case.approximation != "kfac":
                self.add(name, f"{prefix}delta", layer.delta.asnumpy(), st.delta.numpy())
            for fld in _STATE_FIELDS:
                self.add(
                    name, f"{prefix}{fld}", getattr(layer, fld).asnumpy(), getattr(st, fld).numpy()
                )


def run_case(
    case: Case,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> CaseResult:
    """Run one :class:`Case` in both frameworks (tolerances are not attached here).

    Args:
        case: what to run.
        workdir: where the ONNX file goes (a temporary folder if None).
        log: progress messages (e.g. ``print``); silent if None.

    Raises:
        RuntimeError: the two frameworks disagree on which layers are preconditioned.
    """
    start = time.perf_counter()
    say = (lambda msg: log(f"[{case.label}] {msg}")) if log else (lambda _msg: None)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    rec = _Recorder(case)
    batches = _Batches(case)
    with tempfile.TemporaryDirectory() as tmp:
        twins = make_twins(
            case.model,
            workdir or tmp,
            case.input_shape,
            seed=case.seed,
            float64=case.float64,
            num_classes=case.num_classes,
            model_kwargs=case.model_kwargs,
        )
        twins.torch_model.train()
        first = batches.next(twins.torch_model)
        _compare_forward(twins, first[0], rec)
    say("forward compared")
    _compare_training(case, twins, first, batches, rec, say)
    return CaseResult(
        case,
        list(rec.rows.values()),
        batches.min_margin,
        batches.draws,
        time.perf_counter() - start,
        batches.flips,
    )


def _compare_forward(twins: Twins, x: np.ndarray, rec: _Recorder) -> None:
    """Eval-mode logits of torch, ONNX Runtime and MindSpore, before any training step."""
    twins.torch_model.eval()
    with torch.no_grad():
        y_torch = twins.torch_model(torch.from_numpy(x)).numpy()
    y_ort = onnxruntime_forward(twins.onnx_path, x)
    twins.ms_net.set_train(False)
    y_ms = twins.ms_net(Tensor(x)).asnumpy()
    rec.add("logits", "forward.torch_vs_onnxruntime", y_torch, y_ort)
    rec.add("logits", "forward.ms_vs_torch", y_ms, y_torch)
    rec.add("logits", "forward.ms_vs_onnxruntime", y_ms, y_ort)
    twins.torch_model.train()
    twins.ms_net.set_train(True)


def _compare_training(
    case: Case, twins: Twins, first, batches: _Batches, rec: _Recorder, say: Callable[[str], None]
) -> None:
    tmodel, net = twins.torch_model, twins.ms_net
    empirical_copy = copy.deepcopy(tmodel) if "empirical" in case.statistics else None
    opt = _ms_optimizer(net, case, "true")
    cell = _ms_cell(net, opt, case.float64)
    topt = _torch_optimizer(tmodel, case, "true")
    names = opt.layer_names
    if tuple(topt.layer_names) != tuple(names):
        raise RuntimeError(
            f"preconditioned layers differ: torch {topt.layer_names} vs MindSpore {names}"
        )
    bn = batchnorm_prefixes(net)
    x0, y0 = first

    # -- 1. statistics of batch 0 (MindSpore's layer_statistics changes no state).
    t_stats, ms_stats = {}, {}
    if empirical_copy is not None:
        emp_topt = _torch_optimizer(empirical_copy, case, "empirical")
        _torch_step(empirical_copy, emp_topt, x0, y0, None)
        t_stats["empirical"] = _torch_stats(emp_topt, names, case.approximation)
        del emp_topt, empirical_copy  # VGG16's factor state is ~2 GB per torch optimizer
        emp_opt = _ms_optimizer(net, case, "empirical")  # same wrappers and (unchanged) state
        ms_stats["empirical"] = _ms_cell(net, emp_opt, case.float64).layer_statistics(
            Tensor(x0), Tensor(y0)
        )
    # Step 0 on torch first: it samples the labels that both frameworks then use.
    gen = torch.Generator().manual_seed(case.seed + 7)
    t_loss, sampled = _torch_step(tmodel, topt, x0, y0, gen)
    assert sampled is not None, "step 0 is a factor step"
    if "true" in case.statistics:
        t_stats["true"] = _torch_stats(topt, names, case.approximation)
        ms_stats["true"] = cell.layer_statistics(
            Tensor(x0), Tensor(y0), Tensor(sampled.numpy().astype(np.int32))
        )
    for fisher, stats in ms_stats.items():
        for name in names:
            for key, _, label in _stat_fields(case.approximation):
                rec.add(
                    name,
                    f"stats.{fisher}.{label}",
                    stats[name][key].asnumpy(),
                    t_stats[fisher][name][key],
                )
    del ms_stats, t_stats
    say("statistics compared")
    if case.steps == 0:  # forward and statistics only: the training graph is not compiled
        return

    # -- 2.-4. the training run: step 0 (state, D), then the trajectory.
    x, y = x0, y0
    for k in range(case.steps):
        if k > 0:
            x, y = batches.next(tmodel)
            t_loss, sampled = _torch_step(tmodel, topt, x, y, gen)
        # Non-factor steps ignore the sampled labels; pass the true ones to keep one signature.
        s = y if sampled is None else sampled.numpy().astype(np.int32)
        loss = cell(Tensor(x), Tensor(y), Tensor(s)).asnumpy()
        rec.add("-", "loss", loss, np.asarray(t_loss))
        v_ms, v_t = _ms_moments(opt), _torch_moments(tmodel, topt, bn)
        w_t = _torch_params(tmodel, bn)
        if k == 0:
            rec.add_state("step0.", case, opt, topt)
            if case.approximation == "tkfac_new":
                rec.add("-", "step0.beta", opt.beta.asnumpy(), topt.beta.numpy())
            rec.add_params("D.", v_ms, v_t)  # v_0 = tau * 0 + D = D
        rec.add_params("traj.", _ms_params(net), w_t)
        rec.add_params("traj.v.", v_ms, v_t)
        if case.resync:
            _resync(net, opt, w_t, v_t)
        say(f"step {k} compared")
    rec.add_state("final.", case, opt, topt)

"""TKFAC as a ``torch.optim.Optimizer`` (spec Sec. 3-6; paper Algorithm 1, Eq. 8-18).

Orchestration only: ``capture.py`` records ``a`` and ``u``, ``_math.py`` holds every formula,
``approximations.py`` holds what differs between TKFAC_nor, TKFAC_new and KFAC (one object,
chosen at construction), this module decides when each runs and keeps the state. The MindSpore
twin is ``tkfac_ms/optimizer.py``.

One call of :meth:`TKFAC.step` is one optimizer step ``t`` (counted from 0), spec Sec. 5:

1. ``t % factor_update_steps == 0``: statistics of this batch (Sec. 2 or 6), damping (Sec. 3),
   moving average (Sec. 4) for every preconditioned layer;
2. ``t % inv_update_steps == 0``: both inverses of every layer (Sec. 4);
3. ``D = g_inv @ G_W @ a_inv`` for every preconditioned layer, ``D = grad`` for every other
   parameter; optional KL clipping scales every ``D``;
4. ``D += weight_decay * w`` for the parameters the decay filter selects;
5. ``v = momentum * v + D``, ``w = w - lr_t * v``;
6. ``t += 1``, and the capture hooks are armed if step ``t`` updates the factors.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from reference_torch import _math
from reference_torch.approximations import make_approximation
from reference_torch.capture import LayerCapture, unsupported_reason
from reference_torch.config import (
    Approximation,
    FisherType,
    LossReduction,
    Schedule,
    TKFACConfig,
    check_decay_filter,
    check_skip,
)

__all__ = ["TKFAC", "LayerState", "default_decay_filter"]

#: Normalization layers, whose parameters get no weight decay by default.
_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)

DecayFilter = Callable[[str, nn.Parameter], bool]


def default_decay_filter(model: nn.Module) -> DecayFilter:
    """Weight decay for every parameter except biases (1-d) and normalization layers' ones."""
    norm_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, _NORM_TYPES)
        for p in m.parameters(recurse=False)
    }

    def selects(name: str, param: nn.Parameter) -> bool:
        return id(param) not in norm_ids and param.ndim > 1

    return selects


@dataclass
class LayerState:
    """What the optimizer keeps for one preconditioned layer (read it, don't write it).

    The convention is the same for all approximations: ``a_*`` is the input-side
    ``[d_in, d_in]`` factor and ``g_*`` the output-side ``[d_out, d_out]`` one.

    Attributes:
        delta: last factor update's ``delta`` (0-d; TKFAC only, None for KFAC).
        phi: last factor update's ``Phi`` (TKFAC only, undamped, trace 1).
        psi: last factor update's ``Psi`` (TKFAC only, undamped, trace 1).
        a_batch: last factor update's input factor as it entered the moving average: damped
            ``Phi_hat`` (TKFAC_nor) or ``Phi~`` (TKFAC_new); ``A`` (KFAC, undamped).
        g_batch: the output-side counterpart: ``Psi_hat``, ``Psi~`` or ``G``.
        a_factor: moving-average state of ``a_batch`` (spec Sec. 4).
        g_factor: moving-average state of ``g_batch``.
        a_inv: ``a_factor^-1`` (KFAC: ``A_hat^-1`` of the pi-damped state).
        g_inv: ``g_factor^-1`` (KFAC: ``G_hat^-1``).
    """

    delta: Tensor | None = None
    phi: Tensor | None = None
    psi: Tensor | None = None
    a_batch: Tensor | None = None
    g_batch: Tensor | None = None
    a_factor: Tensor | None = None
    g_factor: Tensor | None = None
    a_inv: Tensor | None = None
    g_inv: Tensor | None = None


@dataclass
class _Layer:
    """One preconditioned layer: the user's module, its hooks and its state."""

    name: str
    module: nn.Module
    capture: LayerCapture
    is_conv: bool
    state: LayerState

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight  # type: ignore[return-value]

    @property
    def bias(self) -> nn.Parameter | None:
        return self.module.bias  # type: ignore[return-value]


class TKFAC(torch.optim.Optimizer):
    """Trace-restricted KFAC (Gao et al., AAAI 2021): TKFAC_nor, TKFAC_new, and KFAC.

    Every ``nn.Linear`` and ``nn.Conv2d`` (groups=1, zero padding) of ``model`` whose
    parameters all require grad is preconditioned; every other trainable parameter (BatchNorm,
    skipped or unsupported layers, ...) gets the plain momentum update with ``D = grad``.

    Empirical Fisher (``fisher="empirical"``)::

        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    True Fisher (``fisher="true"``, the default and the paper's)::

        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.sample_fisher_backward(logits)   # before loss.backward()
        loss.backward()
        opt.step()

    On factor-update steps :meth:`sample_fisher_backward` draws ``y~ ~ softmax(logits)`` and
    back-propagates ``sum_n -log p(y~_n | x_n)`` to record ``u``, without touching ``.grad``;
    on other steps it does nothing.

    Args:
        model: the network. Its layers are found with ``model.named_modules()``; the layer
            names used by ``skip_layers`` and :meth:`layer_state` are those names.
        lr: learning rate ``alpha_t > 0``, a float or ``step -> float``.
        momentum: ``tau`` in ``[0, 1)``. The buffer starts at 0, so ``v = D`` on step 0.
        weight_decay: ``>= 0``, added to ``D`` after preconditioning (spec Sec. 5 step 4).
        damping: ``lambda > 0`` of TKFAC_nor (applied on factor updates, Eq. 14) and KFAC
            (applied on inverse updates, spec Sec. 6); a float or ``step -> float``.
            Unused by TKFAC_new.
        nu: trace floor ``> 0`` of TKFAC_new (Eq. 15-16).
        approximation: ``"tkfac_nor"``, ``"tkfac_new"`` or ``"kfac"`` (or the enum).
        factor_decay: ``epsilon`` in ``[0, 1)`` of the moving average (Eq. 17-18).
        factor_update_steps: ``T_FIM >= 1``.
        inv_update_steps: ``T_INV >= 1``.
        fisher: ``"true"`` or ``"empirical"`` (spec Sec. 1).
        kl_clip: ``kappa > 0`` of KL clipping (spec Sec. 5), or None (off).
        skip: ``fnmatch`` pattern(s) of layer names left to plain momentum; a single string is
            one pattern. Listing an unsupported layer here silences its warning; a pattern that
            matches no layer gets a warning.
        loss_reduction: ``"mean"`` or ``"sum"``: how the training loss reduces over the batch
            (the per-sample scale of ``u`` for the empirical Fisher).
        decay_filter: ``(name, param) -> bool``, the parameters that get weight decay;
            default :func:`default_decay_filter` (no biases, no normalization parameters).
        factor_dtype: dtype of the factor state, ``torch.float32`` or ``torch.float64``;
            default: the weight's dtype (at least float32).

    Raises:
        ValueError: naming the argument, if any argument is invalid.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: Schedule,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        damping: Schedule = 1e-3,
        nu: float = 1e-3,
        approximation: Approximation | str = "tkfac_nor",
        factor_decay: float = 0.95,
        factor_update_steps: int = 100,
        inv_update_steps: int = 100,
        fisher: FisherType | str = "true",
        kl_clip: float | None = None,
        skip: str | Iterable[str] = (),
        loss_reduction: LossReduction | str = "mean",
        decay_filter: DecayFilter | None = None,
        factor_dtype: torch.dtype | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.config = TKFACConfig(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            damping=damping,
            nu=nu,
            approximation=approximation,
            factor_decay=factor_decay,
            factor_update_steps=factor_update_steps,
            inv_update_steps=inv_update_steps,
            fisher=fisher,
            kl_clip=kl_clip,
            loss_reduction=loss_reduction,
        )
        patterns = check_skip(skip)
        check_decay_filter(decay_filter)
        if factor_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(
                f"factor_dtype must be None, torch.float32 or torch.float64, got {factor_dtype!r}"
            )
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no parameter that requires grad")
        super().__init__([p for _, p in named], defaults={})

        self.factor_dtype = factor_dtype
        #: the approximation's object (statistics, damping, beta): chosen here, once
        self.approximation = make_approximation(self.config)
        self._layers = _find_layers(model, patterns)
        selects = decay_filter if decay_filter is not None else default_decay_filter(model)
        self._decayed = {id(p) for n, p in named if selects(n, p)}
        self._t = 0  # the step t of the next call to step()
        self.beta = torch.tensor(1.0)  # beta of the last factor update (TKFAC_new's Eq. 16)
        #: curvature updates (factors and/or inverses of one step) discarded by the guard
        self.rejected_curvature_updates = 0
        self._arm_captures()

    # ------------------------------------------------------------------ public views
    @property
    def tkfac_step(self) -> int:
        """The step ``t`` that the next :meth:`step` performs (0 before the first one)."""
        return self._t

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names (from ``model.named_modules()``) of the preconditioned layers."""
        return tuple(self._layers)

    def layer_state(self, name: str) -> LayerState:
        """The live :class:`LayerState` of a preconditioned layer (do not modify it)."""
        if name not in self._layers:
            raise KeyError(
                f"{name!r} is not a preconditioned layer; those are {list(self._layers)}"
            )
        return self._layers[name].state

    def is_factor_step(self, t: int | None = None) -> bool:
        """Whether step ``t`` (default: the next one) updates the factors."""
        return (self._t if t is None else t) % self.config.factor_update_steps == 0

    def is_inverse_step(self, t: int | None = None) -> bool:
        """Whether step ``t`` (default: the next one) recomputes the inverses."""
        return (self._t if t is None else t) % self.config.inv_update_steps == 0

    # ------------------------------------------------------------------ true Fisher
    def sample_fisher_backward(
        self,
        logits: Tensor,
        sampled_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor | None:
        """Record ``u`` for the true Fisher (spec Sec. 1) from a softmax classifier's logits.

        Call it after the forward pass and before ``loss.backward()``. On a factor-update step
        with ``fisher="true"`` it draws ``y~_n ~ Categorical(softmax(logits_n))`` (or takes
        ``sampled_labels``) and back-propagates ``sum_n -log p(y~_n | x_n)`` with
        ``torch.autograd.grad(..., retain_graph=True)``: ``.grad`` is untouched, and ``u`` is
        recorded with scale 1 (the loss is a sum). The following ``loss.backward()`` does not
        overwrite it. On every other step, and for ``fisher="empirical"``, it does nothing.

        Args:
            logits: ``[N, C]``, the model output of this step's forward pass.
            sampled_labels: ``[N]`` integer labels to use instead of sampling (parity tests).
            generator: random generator for the sampling.

        Returns:
            The labels used ``[N]``, or None when nothing was done.
        """
        if self.config.fisher != FisherType.TRUE or not self.is_factor_step():
            return None
        if logits.ndim != 2:
            raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
        if sampled_labels is None:
            probs = torch.softmax(logits.detach().double(), dim=1)
            sampled_labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        elif (
            sampled_labels.shape != logits.shape[:1]
            or sampled_labels.is_floating_point()
            or sampled_labels.is_complex()
        ):
            raise ValueError(
                f"sampled_labels must be an integer tensor of shape "
                f"[{logits.shape[0]}], got {sampled_labels.dtype} "
                f"{tuple(sampled_labels.shape)}"
            )
        seen = [layer for layer in self._layers.values() if layer.capture.a is not None]
        if not seen:
            raise RuntimeError(
                "sample_fisher_backward() found no recorded forward pass: call it "
                "after model(x) and before loss.backward()"
            )
        nll = F.cross_entropy(logits, sampled_labels.to(logits.device), reduction="sum")
        for layer in seen:
            layer.capture.reduction = LossReduction.SUM  # -log p summed: u already per-sample
            layer.capture.record_backward = True
        try:
            torch.autograd.grad(
                nll, [layer.weight for layer in seen], retain_graph=True, allow_unused=True
            )
        finally:
            for layer in seen:
                layer.capture.record_backward = False
        return sampled_labels

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimizer step ``t`` (spec Sec. 5); see the module docstring for the order.

        A preconditioned layer that has no inverses yet (it was not used on any factor-update
        step so far) takes ``D = grad``; a parameter without ``.grad`` is left unchanged.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t, cfg = self._t, self.config
        self._curvature_update(t)
        lr = cfg.lr_at(t)
        updates = self._directions(lr)
        for p, d in updates.items():
            if id(p) in self._decayed and cfg.weight_decay != 0.0:
                d = d + cfg.weight_decay * p  # step 4
            buf = self.state[p].get("momentum_buffer")
            if buf is None:  # v starts at 0, so v = D on the first step
                buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            buf.mul_(cfg.momentum).add_(d)  # step 5: v = tau v + D
            p.add_(buf, alpha=-lr)  # w = w - alpha_t v
        self._t = t + 1
        self._arm_captures()
        return loss

    def _arm_captures(self) -> None:
        """Arm the hooks iff the next step updates the factors (capture only when asked)."""
        record = self.config.fisher == FisherType.EMPIRICAL
        reduction = LossReduction(self.config.loss_reduction)
        for layer in self._layers.values():
            if self.is_factor_step():
                layer.capture.arm(reduction, record_backward=record)
            else:
                layer.capture.disarm()

    def _dtype_for(self, layer: _Layer) -> torch.dtype:
        if self.factor_dtype is not None:
            return self.factor_dtype
        return torch.promote_types(layer.weight.dtype, torch.float32)

    def _curvature_update(self, t: int) -> bool:
        """Spec Sec. 5 steps 1-2 of step ``t``, all or nothing; returns whether it was kept.

        The new factors (on factor steps) and inverses (on inverse steps) are computed aside and
        kept only if every new factor is finite with a non-negative diagonal and every damped
        factor to invert is positive definite (``torch.linalg.cholesky_ex`` reports it) with a
        finite inverse. Otherwise nothing changes and ``rejected_curvature_updates`` goes up:
        the same guard as ``tkfac_ms.TKFAC.curvature_update`` (where the test is an LU inverse's
        residual, MindSpore having no non-raising Cholesky on every device).
        """
        damping = self.config.damping_at(t)
        factor_step, inverse_step = self.is_factor_step(t), self.is_inverse_step(t)
        if not (factor_step or inverse_step):
            return True
        new, beta = self._new_factors(damping) if factor_step else ({}, self.beta)
        ok = all(
            bool(torch.isfinite(m).all()) and bool((torch.diagonal(m) >= 0).all())
            for st in new.values()
            for m in (st.a_factor, st.g_factor)
            if m is not None
        )
        invs: dict[str, tuple[Tensor, Tensor]] = {}
        if ok and inverse_step:
            for name, layer in self._layers.items():
                st = new.get(name, layer.state)
                if st.a_factor is None or st.g_factor is None:
                    continue
                pair = self._inverses(st.a_factor, st.g_factor, damping)
                if pair is None:
                    ok = False
                    break
                invs[name] = pair
        if not ok:
            self.rejected_curvature_updates += 1
            return False
        for name, st in new.items():
            layer = self._layers[name]
            layer.state = st
        if factor_step and self.approximation.updates_beta:
            self.beta = beta
        for name, (a_inv, g_inv) in invs.items():
            self._layers[name].state.a_inv, self._layers[name].state.g_inv = a_inv, g_inv
        return True

    def _new_factors(self, damping: float) -> tuple[dict[str, LayerState], Tensor]:
        """Spec Sec. 2-4 on this batch: the next state of every captured layer, and ``beta``.

        Nothing is set: :meth:`_curvature_update` keeps both or neither.
        """
        approx, decay = self.approximation, self.config.factor_decay
        batch = self._captured_vectors()
        stats = [approx.layer_statistics(a, u) for _, a, u in batch]  # spec Sec. 2 or 6
        is_conv = [layer.is_conv for layer, _, _ in batch]
        beta = approx.network_beta(stats, is_conv, self.beta)  # Eq. 16, over the whole network
        new: dict[str, LayerState] = {}
        for (layer, _, _), layer_stats in zip(batch, stats, strict=True):
            a_batch, g_batch = approx.damped_factors(layer_stats, damping, beta, layer.is_conv)
            recorded = {name: layer_stats[name] for name in approx.recorded_statistics}
            st = replace(layer.state, a_batch=a_batch, g_batch=g_batch, **recorded)
            first = st.a_factor is None  # spec Sec. 4, Eq. 17-18
            st.a_factor = _math.moving_average(st.a_factor, a_batch, decay, first)
            st.g_factor = _math.moving_average(st.g_factor, g_batch, decay, first)
            new[layer.name] = st
        return new, beta

    def _captured_vectors(self) -> list[tuple[_Layer, Tensor, Tensor]]:
        """``(layer, a, u)`` in the factor dtype for every layer used in this step's forward."""
        batch = []
        for layer in self._layers.values():
            a, u = layer.capture.a, layer.capture.u
            if a is None:
                continue  # the layer was not used in this step's forward pass
            if u is None:
                raise RuntimeError(self._missing_u_message(layer.name))
            dtype = self._dtype_for(layer)
            batch.append((layer, a.to(dtype), u.to(dtype)))
        return batch

    def _missing_u_message(self, name: str) -> str:
        if self.config.fisher == FisherType.TRUE:
            return (
                f"layer {name!r}: no output gradient was recorded on factor-update step "
                f"{self._t}. With fisher='true', call opt.sample_fisher_backward(logits) "
                f"after the forward pass and before loss.backward()"
            )
        return (
            f"layer {name!r}: no output gradient was recorded on factor-update step "
            f"{self._t}; call loss.backward() before opt.step()"
        )

    def _inverses(
        self, a_mat: Tensor, g_mat: Tensor, damping: float
    ) -> tuple[Tensor, Tensor] | None:
        """Spec Sec. 4: both inverses after the approximation's inverse damping, or None."""
        a_mat, g_mat = self.approximation.inverse_damping(a_mat, g_mat, damping)
        a_inv, g_inv = _math.spd_inverse_or_none(a_mat), _math.spd_inverse_or_none(g_mat)
        if a_inv is None or g_inv is None:
            return None
        return a_inv, g_inv

    def _directions(self, lr: float) -> dict[nn.Parameter, Tensor]:
        """``D`` for every parameter with a gradient (spec Sec. 5 step 3 and KL clipping)."""
        updates: dict[nn.Parameter, Tensor] = {}
        vg_sum = torch.zeros((), dtype=torch.float64)
        for layer in self._layers.values():
            st, w, b = layer.state, layer.weight, layer.bias
            if w.grad is None or st.a_inv is None or st.g_inv is None:
                continue  # handled below as a plain parameter
            dtype = st.a_inv.dtype
            grad_w = w.grad.to(dtype)
            grad_b = None if b is None or b.grad is None else b.grad.to(dtype)
            g_mat = _math.grad_matrix(grad_w, grad_b)
            d_mat = _math.precondition(g_mat, st.g_inv, st.a_inv)
            vg_sum = vg_sum + (d_mat * g_mat).sum().double()
            d_w, d_b = _math.split_grad_matrix(d_mat, w.shape, grad_b is not None)
            updates[w] = d_w.to(w.dtype)
            if b is not None and d_b is not None:
                updates[b] = d_b.to(b.dtype)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p not in updates:
                    updates[p] = p.grad  # plain momentum: D = grad
        if self.config.kl_clip is not None:
            scale = _math.kl_clip_scale(vg_sum, lr, self.config.kl_clip)
            updates = {p: d * scale.to(d.dtype) for p, d in updates.items()}
        return updates

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """``torch.optim`` state (momentum buffers) plus ``"tkfac"``.

        ``"tkfac"`` holds the approximation and Fisher type the state belongs to, the step,
        beta and every layer's :class:`LayerState`.
        """
        sd = super().state_dict()
        layers = {
            name: {f.name: _clone(getattr(layer.state, f.name)) for f in fields(LayerState)}
            for name, layer in self._layers.items()
        }
        sd["tkfac"] = {
            "approximation": self.config.approximation.value,
            "fisher": self.config.fisher.value,
            "step": self._t,
            "beta": self.beta.clone(),
            "layers": layers,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next :meth:`step` continues bit-identically.

        Everything is checked before anything is written: the approximation and Fisher type,
        the layer names and every factor's shape.

        Raises:
            ValueError: naming what does not match.
        """
        state_dict = dict(state_dict)
        if "tkfac" not in state_dict:
            raise ValueError("state_dict has no 'tkfac' entry: it was not saved by TKFAC")
        tk = state_dict.pop("tkfac")
        self._check_saved(tk)
        super().load_state_dict(state_dict)
        self._t = int(tk["step"])
        self.beta = tk["beta"].clone()
        for name, saved in tk["layers"].items():
            self._layers[name].state = LayerState(**{k: _clone(v) for k, v in saved.items()})
        self._arm_captures()

    def _check_saved(self, tk: dict[str, Any]) -> None:
        problems = []
        for key in ("approximation", "fisher"):
            ours = getattr(self.config, key).value
            if key not in tk:
                problems.append(f"it records no {key}")
            elif tk[key] != ours:
                problems.append(f"{key} {tk[key]!r} in the state_dict, {ours!r} here")
        if set(tk["layers"]) != set(self._layers):
            problems.append(
                f"its layers {sorted(tk['layers'])} are not this optimizer's {sorted(self._layers)}"
            )
        else:
            for name, saved in tk["layers"].items():
                d_out, d_in = _factor_dims(self._layers[name])
                want = {"a": (d_in, d_in), "g": (d_out, d_out)}
                for field, value in saved.items():
                    side = _FACTOR_SIDE.get(field)
                    if value is None or side is None:
                        continue
                    if tuple(value.shape) != want[side]:
                        problems.append(
                            f"{name}.{field} has shape {tuple(value.shape)}, expected {want[side]}"
                        )
        if problems:
            raise ValueError(
                f"state_dict does not fit this TKFAC optimizer: {'; '.join(problems[:6])}. "
                "Nothing was loaded."
            )


#: Which factor side (input ``a``, output ``g``) each d x d field of :class:`LayerState` is on.
_FACTOR_SIDE = {"phi": "a", "psi": "g"} | {
    f"{side}_{kind}": side for side in "ag" for kind in ("batch", "factor", "inv")
}


def _factor_dims(layer: _Layer) -> tuple[int, int]:
    """``(d_out, d_in)`` of a layer's factors (``d_in`` counts the bias column)."""
    w = layer.weight
    d_in = int(w[0].numel()) + int(layer.bias is not None)
    return int(w.shape[0]), d_in


def _clone(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.detach().clone()


def _is_weight_layer(module: nn.Module) -> bool:
    """A layer TKFAC could be expected to precondition: it owns a trainable >= 2-D weight."""
    if isinstance(module, _NORM_TYPES):
        return False
    return any(p.requires_grad and p.ndim >= 2 for p in module.parameters(recurse=False))


def _find_layers(model: nn.Module, patterns: tuple[str, ...]) -> dict[str, _Layer]:
    """Attach a :class:`LayerCapture` to every Linear/Conv2d that TKFAC preconditions.

    Left to plain momentum: layers matched by ``patterns``; every other layer with a trainable
    >= 2-D weight that is not a supported Linear/Conv2d, and Linear/Conv2d layers with a frozen
    weight or bias: all named in **one** warning (a layer with every parameter frozen is left
    alone silently). A pattern that matches no layer warns; no layer to precondition raises.
    """
    layers: dict[str, _Layer] = {}
    used, left_out = set(), []
    for name, module in model.named_modules():
        supported_kind = isinstance(module, nn.Linear | nn.Conv2d)
        if not name or not (supported_kind or _is_weight_layer(module)):
            continue
        trainable = [p.requires_grad for p in module.parameters(recurse=False)]
        matched = [pat for pat in patterns if fnmatch.fnmatchcase(name, pat)]
        used.update(matched)
        if matched or not any(trainable):
            continue
        reason = unsupported_reason(module) if supported_kind else "not supported"
        if reason is None and not all(trainable):
            frozen = [n for n, p in module.named_parameters(recurse=False) if not p.requires_grad]
            reason = f"frozen {' and '.join(frozen)} (requires_grad=False)"
        if reason is not None:
            left_out.append(f"{name!r} ({type(module).__name__}: {reason})")
            continue
        layers[name] = _Layer(
            name=name,
            module=module,
            capture=LayerCapture(module),
            is_conv=isinstance(module, nn.Conv2d),
            state=LayerState(),
        )
    if left_out:
        warnings.warn(
            f"TKFAC: {len(left_out)} trainable layer(s) are not preconditioned and get the "
            f"plain momentum update: {'; '.join(left_out)}. Supported: nn.Linear, nn.Conv2d "
            "with groups=1 and zero padding; list a layer in skip=... to silence this.",
            stacklevel=3,
        )
    for pattern in patterns:
        if pattern not in used:
            warnings.warn(f"TKFAC: skip pattern {pattern!r} matches no layer", stacklevel=3)
    if not layers:
        raise ValueError(
            "TKFAC: the model has no layer to precondition (supported: nn.Linear, nn.Conv2d "
            "with groups=1 and zero padding, with a trainable weight and bias, not matched by "
            "skip); use a first-order optimizer such as torch.optim.SGD"
        )
    return layers

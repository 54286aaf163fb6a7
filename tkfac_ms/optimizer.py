"""TKFAC as a MindSpore ``nn.Optimizer`` (spec Sec. 3-5; paper Algorithm 1, Eq. 14-18).

Orchestration only: the statistics come from the capture cells (``capture.py``) through
:class:`~tkfac_ms.train_cell.TKFACTrainOneStepCell`, the formulas from ``_math.py``. The twin is
``reference_torch/optimizer.py``.

One optimizer step ``t`` (the counter ``t`` is ``nn.Optimizer``'s ``global_step``, in the graph):

1. ``t % factor_update_steps == 0``: the train cell captures the batch sums and calls
   :meth:`TKFAC.curvature_update` (statistics, damping, moving average);
2. ``t % inv_update_steps == 0``: both inverses of every layer are recomputed (LU, or Cholesky
   with ``inverse="cholesky"``);
   a curvature update (1-2) whose factors or inverses are not usable is discarded whole and
   counted in ``tkfac.rejected_curvature_updates``;
3. ``D = g_inv @ G_W @ a_inv`` for wrapped layers, ``D = grad`` for every other parameter;
4. optional KL clipping, then ``D += weight_decay * w`` for the parameters the filter selects;
5. ``v = momentum * v + D``, ``w = w - lr_t * v``; 6. ``t += 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype

from tkfac_ms import _device, _math
from tkfac_ms.approximations import make_approximation
from tkfac_ms.capture import unwrap, warn_not_preconditioned, wrap_network
from tkfac_ms.config import (
    Approximation,
    FisherType,
    LossReduction,
    TKFACConfig,
    check_decay_filter,
    check_learning_rate,
)

__all__ = ["TKFAC", "default_decay_filter", "INVERSE_ROUTES", "CHECKPOINT_CODES"]

#: ``inverse=`` choices: ``"lu"`` (portable, guarded) and ``"cholesky"`` (CPU/GPU, unguarded).
INVERSE_ROUTES = ("lu", "cholesky")

_NORM_CELLS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)

_apply_update = ops.MultitypeFuncGraph("tkfac_apply_update")


_apply_momentum = ops.ApplyMomentum()


@_apply_update.register("Tensor", "Tensor", "Tensor", "Number", "Tensor", "Tensor", "Tensor")
def _momentum_step(apply, lr, momentum, weight_decay, weight, moment, d):
    """Spec Sec. 5 steps 4-5: ``D += wd w``; ``v = tau v + D``; ``w -= lr v`` (``ApplyMomentum``).

    ``lr`` and ``momentum`` are scalars of the parameter's dtype, set by the caller to 0 and 1
    where ``apply`` is false (a non-finite step); ``D`` is then replaced by 0 (selected, not
    branched on, so NaN/Inf in ``d`` cannot leak in), and ``v`` and ``w`` keep their values
    exactly (``v * 1 + 0``, ``w - 0 * v``). ``ApplyMomentum`` computes the same two lines
    (bit-identical in float32 and float64, checked) as one kernel instead of eight small ops.
    """
    if weight_decay != 0.0:
        d = d + _math.const(weight_decay, weight) * weight
    d = _math.where(apply, d, ops.zeros_like(d))
    return _apply_momentum(weight, moment, lr, d, momentum)


def _every(step, n: int):
    """``step % n == 0`` with tensor operands (the scalar forms are undocumented primitives)."""
    n_t = Tensor(n, step.dtype)
    return ops.equal(ops.floor_mod(step, n_t), ops.zeros_like(n_t))


#: How a checkpoint records the configuration that its TKFAC state belongs to: the int32
#: Parameters ``tkfac.approximation`` and ``tkfac.fisher`` hold these codes.
CHECKPOINT_CODES = {
    "approximation": {a.value: i for i, a in enumerate(Approximation)},
    "fisher": {f.value: i for i, f in enumerate(FisherType)},
}


def default_decay_filter(net: nn.Cell) -> Callable[[str, Parameter], bool]:
    """``(name, p) -> bool``: decay every parameter except biases and normalization layers'."""
    norm_ids = {
        id(p)
        for _, c in net.cells_and_names()
        if isinstance(c, _NORM_CELLS)
        for p in c.get_parameters()
    }
    return lambda name, p: id(p) not in norm_ids and len(p.shape) > 1


class TKFAC(nn.Optimizer):
    """Trace-restricted KFAC (Gao et al., AAAI 2021), with TKFAC_nor, TKFAC_new and KFAC.

    Args:
        net: the network to train. Its supported layers are wrapped in place by
            :func:`~tkfac_ms.wrap_network` (if not wrapped yet); all its trainable parameters are
            optimized (wrapped layers preconditioned, the others by plain momentum).
        learning_rate: what ``nn.Optimizer`` accepts: float, per-step list/Tensor, or a
            ``LearningRateSchedule``.
        momentum: ``tau`` in ``[0, 1)``.
        weight_decay: ``>= 0``, added after preconditioning to the parameters selected by
            ``decay_filter`` (default :func:`default_decay_filter`).
        damping: ``lambda > 0`` (TKFAC_nor, KFAC), a float or a per-step list.
        nu: trace floor of TKFAC_new, ``> 0``.
        approximation: ``"tkfac_nor"``, ``"tkfac_new"`` or ``"kfac"`` (or the enum).
        factor_decay: ``epsilon`` in ``[0, 1)`` of the moving average.
        factor_update_steps: ``T_FIM >= 1``.
        inv_update_steps: ``T_INV >= 1``.
        fisher: ``"true"`` (sampled labels, one extra backward on factor steps) or ``"empirical"``.
        kl_clip: optional ``kappa > 0`` of KL clipping (spec Sec. 5); None disables it.
        loss_reduction: ``"mean"`` or ``"sum"``: how the training loss reduces over the batch
            (sets the per-sample scale of ``u`` for the empirical Fisher).
        skip: ``fnmatch`` pattern(s) of layer paths to leave unwrapped (used when wrapping
            here); a single string is one pattern.
        decay_filter: ``(name, param) -> bool``, which parameters get weight decay (as in the
            reference).
        factor_dtype: dtype of the factor state (default float32; float64 on Dense-only nets).
        inverse: ``"lu"`` (default: ``MatrixInverse``, kernels on Ascend, GPU and CPU, guarded
            in the graph) or ``"cholesky"`` (CPU and GPU only, faster on the CPU, but a factor
            that is not positive definite makes its kernel raise and abort training).
    """

    def __init__(
        self,
        net: nn.Cell,
        learning_rate,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        damping: float | Sequence[float] = 1e-3,
        nu: float = 1e-3,
        approximation: Approximation | str = "tkfac_nor",
        factor_decay: float = 0.95,
        factor_update_steps: int = 100,
        inv_update_steps: int = 100,
        fisher: FisherType | str = "true",
        kl_clip: float | None = None,
        loss_reduction: LossReduction | str = "mean",
        skip: str | Iterable[str] = (),
        decay_filter: Callable[[str, Parameter], bool] | None = None,
        factor_dtype: mstype.Type = mstype.float32,
        inverse: str = "lu",
    ):
        if not isinstance(net, nn.Cell):
            raise TypeError(f"net must be a mindspore.nn.Cell, got {type(net).__name__}")
        if factor_dtype not in (mstype.float32, mstype.float64):
            raise ValueError(f"factor_dtype must be float32 or float64, got {factor_dtype}")
        if inverse not in INVERSE_ROUTES:
            raise ValueError(f"inverse must be one of {INVERSE_ROUTES}, got {inverse!r}")
        portable = _device.takes_portable_route()
        if inverse == "cholesky" and (portable and _device.device_target() != "GPU"):
            raise ValueError(
                "inverse='cholesky' needs ops.cholesky, which has no Ascend kernel; it is not "
                f"allowed on the portable route ({_device.PORTABLE_ENV}=1 or device "
                f"{_device.device_target()}): use inverse='lu'"
            )
        cfg = TKFACConfig(
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
        check_learning_rate(learning_rate)
        check_decay_filter(decay_filter)
        layers, frozen = [], []
        for w in wrap_network(net, skip):
            params = w.layer.get_parameters()
            reason = [p.name.rsplit(".", 1)[-1] for p in params if not p.requires_grad]
            if not reason:
                layers.append(w)
                continue
            unwrap(net, w)  # wrapped earlier, frozen since: the user's layer goes back in place
            if len(reason) < 1 + int(w.has_bias):
                frozen.append((w.path, f"frozen {' and '.join(reason)} (requires_grad=False)"))
        warn_not_preconditioned(frozen)
        if not layers:
            raise ValueError(
                "TKFAC: the network has no layer to precondition (supported: nn.Dense without "
                "activation, nn.Conv2d with group=1 and NCHW data, with a trainable weight and "
                "bias, not matched by skip); use a first-order optimizer such as nn.Momentum"
            )
        approximation = make_approximation(cfg)
        for w in layers:
            # the fused C++ statistics kernel only on the CPU's own route (_device.py)
            w.configure(approximation.sums, factor_dtype, cpu_kernel=not portable)
        # Parameter order: each layer's weight (and bias), then every other trainable parameter.
        layer_params: list[Parameter] = []
        for w in layers:
            layer_params += [w.weight] + ([w.bias] if w.has_bias else [])
        taken = {id(p) for p in layer_params}
        others = [p for p in net.trainable_params() if id(p) not in taken]
        super().__init__(learning_rate, layer_params + others, weight_decay=0.0)

        self.config = cfg
        self.portable = portable
        self.inverse_route = inverse
        self.layers = layers  # plain list: not a sub-cell, parameters keep their names
        self.layer_names = tuple(w.path for w in layers)
        self.num_layers = len(layers)
        self.num_layer_params = len(layer_params)
        self.approximation = approximation
        self.is_conv = tuple(w.kind == "conv" for w in layers)
        self.has_bias = tuple(w.has_bias for w in layers)
        self.weight_shapes = tuple(tuple(w.weight.shape) for w in layers)
        idx, w_idx, b_idx = 0, [], []
        for w in layers:
            w_idx.append(idx)
            b_idx.append(idx + 1 if w.has_bias else -1)
            idx += 2 if w.has_bias else 1
        self.w_idx, self.b_idx = tuple(w_idx), tuple(b_idx)

        self.factor_dtype = factor_dtype
        np_dtype = np.float64 if factor_dtype == mstype.float64 else np.float32
        self.momentum_value = cfg.momentum
        self.factor_decay = cfg.factor_decay
        self.nu = cfg.nu
        self.kl_clip = cfg.kl_clip
        self.factor_update_steps = cfg.factor_update_steps
        self.inv_update_steps = cfg.inv_update_steps
        damp = cfg.damping if isinstance(cfg.damping, tuple) else (cfg.damping,)
        self.damping_values = Tensor(np.asarray(damp, dtype=np_dtype))
        self.last_damping_index = len(damp) - 1
        selects = decay_filter if decay_filter is not None else default_decay_filter(net)
        self.decay_values = tuple(
            cfg.weight_decay if (cfg.weight_decay and selects(p.name, p)) else 0.0
            for p in self._parameters
        )

        self.moments = self._parameters.clone(prefix="moments", init="zeros")
        dtypes = [p.dtype for p in self._parameters]
        self.update_dtypes = tuple(dict.fromkeys(dtypes))
        self.dtype_index = tuple(self.update_dtypes.index(dt) for dt in dtypes)
        self.beta = Parameter(Tensor(1.0, factor_dtype), name="tkfac.beta", requires_grad=False)
        # accepted factor updates (0: the next one initialises the moving average, spec Sec. 4)
        # and curvature updates discarded by the guard (see curvature_update)
        self.factor_updates = Parameter(
            Tensor(0, mstype.int32), name="tkfac.factor_updates", requires_grad=False
        )
        self.rejected_curvature_updates = Parameter(
            Tensor(0, mstype.int32), name="tkfac.rejected_curvature_updates", requires_grad=False
        )
        # what the state belongs to, recorded in every checkpoint (see check_checkpoint)
        codes = self.checkpoint_codes()
        self.approximation_code = Parameter(
            Tensor(codes["approximation"], mstype.int32),
            name="tkfac.approximation",
            requires_grad=False,
        )
        self.fisher_code = Parameter(
            Tensor(codes["fisher"], mstype.int32), name="tkfac.fisher", requires_grad=False
        )
        self.delta_state = ParameterTuple([w.delta for w in layers])
        self.a_factor = ParameterTuple([w.a_factor for w in layers])
        self.g_factor = ParameterTuple([w.g_factor for w in layers])
        self.a_inv = ParameterTuple([w.a_inv for w in layers])
        self.g_inv = ParameterTuple([w.g_inv for w in layers])
        probes: list[Parameter] = []
        for w in layers:
            probes += [w.delta, w.a_factor, w.g_factor]
        self.probes = ParameterTuple(probes)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_codes(self) -> dict[str, int]:
        """The int32 codes of this optimizer's approximation and Fisher type."""
        return {
            "approximation": CHECKPOINT_CODES["approximation"][self.config.approximation.value],
            "fisher": CHECKPOINT_CODES["fisher"][self.config.fisher.value],
        }

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every TKFAC state Parameter (per layer: delta, factors, inverses)."""
        out = {}
        for w in self.layers:
            for p in (w.delta, w.a_factor, w.g_factor, w.a_inv, w.g_inv):
                out[p.name] = tuple(p.shape)
        return out

    def check_checkpoint(self, params, source: str = "checkpoint") -> None:
        """Raise ``ValueError`` unless ``params`` hold TKFAC state that fits this optimizer.

        ``params`` is the ``{name: Parameter}`` of ``mindspore.load_checkpoint``. Checked, before
        anything is written: the recorded approximation and Fisher type (``tkfac.approximation``,
        ``tkfac.fisher``) equal this optimizer's, and every preconditioned layer's state is
        there with this optimizer's shapes (so the layer names and factor shapes match). Call it
        before ``mindspore.load_param_into_net``; :func:`tkfac_ms.load_checkpoint` does.
        """
        problems = []
        names = {key: {v: k for k, v in table.items()} for key, table in CHECKPOINT_CODES.items()}
        for key, code in self.checkpoint_codes().items():
            pname = f"tkfac.{key}"
            if pname not in params:
                problems.append(f"it records no {key} ({pname} missing: not a TKFAC checkpoint)")
                continue
            got = int(np.asarray(params[pname].asnumpy()).reshape(-1)[0])
            if got != code:
                problems.append(
                    f"{key} {names[key].get(got, got)!r} in the checkpoint, "
                    f"{names[key][code]!r} here"
                )
        missing, wrong = [], []
        for name, shape in self.state_shapes().items():
            if name not in params:
                missing.append(name)
            elif tuple(params[name].shape) != shape:
                wrong.append(f"{name} {tuple(params[name].shape)} != {shape}")
        ours = set(self.state_shapes())
        extra = sorted(
            n for n in params if ".tkfac." in n and n not in ours and not n.startswith("moments.")
        )
        if missing:
            problems.append(f"{len(missing)} layer state(s) missing: {', '.join(missing[:4])}")
        if wrong:
            problems.append(f"{len(wrong)} factor shape(s) differ: {'; '.join(wrong[:4])}")
        if extra:
            problems.append(f"state of layers not preconditioned here: {', '.join(extra[:4])}")
        if problems:
            raise ValueError(
                f"{source} does not fit this TKFAC optimizer: {'; '.join(problems)}. "
                "Nothing was loaded."
            )

    # ------------------------------------------------------------------ schedules
    @property
    def tkfac_step(self) -> Parameter:
        """The step counter ``t`` of spec Sec. 5: ``nn.Optimizer``'s own ``global_step``.

        It is the number of applied steps (a skipped non-finite step does not count), and it
        also indexes per-step learning-rate and damping lists.
        """
        return self.global_step

    def _step(self):
        return self.global_step.reshape(())

    def is_factor_step(self):
        """True on factor-update steps (``t % factor_update_steps == 0``)."""
        return _every(self._step(), self.factor_update_steps)

    def is_inverse_step(self):
        """True on inverse-update steps (``t % inv_update_steps == 0``)."""
        return _every(self._step(), self.inv_update_steps)

    def current_damping(self):
        """``lambda`` at the current step (the last value once a per-step list runs out)."""
        i = ops.minimum(self._step(), self.last_damping_index)
        return ops.gather(self.damping_values, i, 0)

    # ------------------------------------------------------------------ factors
    def layer_sums(self, stats):
        """The captured probe gradients, flat in probe order, as one ``(sr, a, g)`` per layer."""
        return tuple(tuple(stats[3 * i : 3 * i + 3]) for i in range(self.num_layers))

    def new_factors(self, layer_sums, count, u_scale2):
        """Spec Sec. 2-4 on one batch: the next moving-average state of every layer.

        Computes, writes nothing (see :meth:`curvature_update`).

        Args:
            layer_sums: per layer ``(sr_sum, a_sum, g_sum)`` (:meth:`layer_sums`): the sums of
                ``self.approximation.sums``, as the capture cells emit them (already summed
                over workers).
            count: ``N``, the number of samples behind the sums.
            u_scale2: ``c^2``, the square of the factor that turns the captured output gradients
                into per-sample ones (``N / loss_scale`` for a mean loss, ``1`` for sampled labels).

        Returns:
            ``(a_factors, g_factors, deltas, beta)``: tuples over layers, and this update's
            ``beta`` (TKFAC_new; the current one otherwise).
        """
        first = ops.equal(self.factor_updates, Tensor(0, mstype.int32))
        decay = self.factor_decay
        count = ops.cast(count, self.factor_dtype)
        c2 = ops.cast(u_scale2, self.factor_dtype)
        damping = self.current_damping()
        approx = self.approximation
        beta = approx.network_beta(layer_sums, self.is_conv, count, c2, self.beta)
        a_new, g_new, deltas = (), (), ()
        for i in range(self.num_layers):
            # damped factor = scale * sum + shift * I (spec Sec. 2-3), averaged without forming
            # it: a compiled CPU graph keeps every d x d intermediate (docs/performance.md)
            sums = layer_sums[i]
            scale_a, shift_a, scale_g, shift_g, delta = approx.factor_terms(
                sums,
                count,
                c2,
                damping,
                beta,
                self.is_conv[i],
                self.a_factor[i].shape[0],
                self.g_factor[i].shape[0],
                self.delta_state[i],
            )
            ema = _math.update_moving_average
            a_new += (ema(self.a_factor[i], sums[1], scale_a, shift_a, decay, first),)
            g_new += (ema(self.g_factor[i], sums[2], scale_g, shift_g, decay, first),)
            deltas += (delta,)
        return a_new, g_new, deltas, beta

    def new_inverses(self, a_factors, g_factors):
        """Spec Sec. 4 (KFAC: with the Sec. 6 damping): the inverses of the given states.

        Returns:
            ``(a_invs, g_invs, ok)``: tuples over layers, and whether every inverse passed
            :func:`~tkfac_ms._math.inverse_is_valid` (always true for ``inverse="cholesky"``,
            whose kernel raises instead).
        """
        damping = self.current_damping()
        a_invs, g_invs = (), ()
        ok = ops.ones((), mstype.bool_)
        for i in range(self.num_layers):
            a, g = self.approximation.inverse_damping(a_factors[i], g_factors[i], damping)
            if self.inverse_route == "cholesky":
                a_invs += (_math.spd_inverse(a),)
                g_invs += (_math.spd_inverse(g),)
            else:
                ia, ig = _math.sym_inverse(a), _math.sym_inverse(g)
                ok = ops.logical_and(ok, _math.inverse_is_valid(a, ia))
                ok = ops.logical_and(ok, _math.inverse_is_valid(g, ig))
                a_invs += (ia,)
                g_invs += (ig,)
        return a_invs, g_invs, ok

    def curvature_update(self, stats, count, u_scale2):
        """A factor-update step's curvature work, all or nothing (spec Sec. 5 steps 1-2).

        New factors (:meth:`new_factors`) and, on inverse steps, their inverses
        (:meth:`new_inverses`) are written only if every new factor is finite with a
        non-negative diagonal and every inverse is valid. Otherwise nothing is written (factors,
        inverses, ``delta``, ``beta`` keep their values: the last good curvature) and
        ``tkfac.rejected_curvature_updates`` goes up by one; the parameter step itself goes on
        with the kept inverses. Causes: an outlier batch whose factors are numerically singular
        in the factor dtype, a float32 overflow, a NaN that passed the gradient check.

        Returns:
            Whether the update was accepted (a scalar bool).
        """
        a_new, g_new, deltas, beta = self.new_factors(self.layer_sums(stats), count, u_scale2)
        ok = ops.ones((), mstype.bool_)
        for m in a_new + g_new:
            ok = ops.logical_and(ok, ops.isfinite(m).all())
            ok = ops.logical_and(ok, (ops.diagonal(m) >= 0).all())
        if self.is_inverse_step():
            a_invs, g_invs, inv_ok = self.new_inverses(a_new, g_new)
            ok = ops.logical_and(ok, inv_ok)
            if ok:
                self._assign_all(self.a_inv, a_invs)
                self._assign_all(self.g_inv, g_invs)
        if ok:
            self._assign_all(self.a_factor, a_new)
            self._assign_all(self.g_factor, g_new)
            self._assign_all(self.delta_state, deltas)
            if self.approximation.updates_beta:
                ops.assign(self.beta, beta)
        ops.assign_add(self.factor_updates, ops.cast(ok, mstype.int32))
        ops.assign_add(self.rejected_curvature_updates, ops.cast(ops.logical_not(ok), mstype.int32))
        return ok

    def inverse_update(self):
        """An inverse step without a factor update: Sec. 4, all or nothing (as above)."""
        a_invs, g_invs, ok = self.new_inverses(self.a_factor, self.g_factor)
        if ok:
            self._assign_all(self.a_inv, a_invs)
            self._assign_all(self.g_inv, g_invs)
        ops.assign_add(self.rejected_curvature_updates, ops.cast(ops.logical_not(ok), mstype.int32))
        return ok

    @staticmethod
    def _assign_all(params, values):
        """``params[i] = values[i]`` for every ``i``."""
        done = ()
        for p, v in zip(params, values):
            done += (ops.assign(p, ops.cast(v, p.dtype)),)
        return done

    # ------------------------------------------------------------------ step
    def precondition(self, gradients):
        """Spec Sec. 5 step 3: ``D`` for every parameter, in the optimizer's parameter order."""
        out = ()
        for i in range(self.num_layers):
            gw = gradients[self.w_idx[i]]
            gb = gradients[self.b_idx[i]] if self.has_bias[i] else None
            mat = _math.grad_matrix(
                ops.cast(gw, self.factor_dtype),
                None if gb is None else ops.cast(gb, self.factor_dtype),
            )
            d = _math.precondition(mat, self.g_inv[i], self.a_inv[i])
            dw, db = _math.split_grad_matrix(d, self.weight_shapes[i], self.has_bias[i])
            out += (ops.cast(dw, gw.dtype),)
            if self.has_bias[i]:
                out += (ops.cast(db, gb.dtype),)
        return out + gradients[self.num_layer_params :]

    def kl_scale(self, updates, gradients, lr):
        """KL clipping factor ``min(1, sqrt(kappa / (lr^2 sum_layers <D, G_W>)))`` (Sec. 5)."""
        vg = ops.zeros((), self.factor_dtype)
        for i in range(self.num_layer_params):
            vg = vg + ops.cast((updates[i] * gradients[i]).sum(), self.factor_dtype)
        lr_f = ops.cast(lr, self.factor_dtype)
        denom = lr_f * lr_f * vg
        safe = ops.select(denom > 0, denom, ops.ones_like(denom))
        return ops.select(
            denom > 0,
            ops.minimum(ops.sqrt(_math.const(self.kl_clip, safe) / safe), ops.ones_like(safe)),
            ops.ones_like(safe),
        )

    def construct(self, gradients):
        """Not a step: TKFAC needs the statistics that only its train cell captures.

        ``nn.TrainOneStepCell(net, TKFAC)`` or ``Model(net, loss, optimizer=TKFAC)`` would call
        this with gradients alone, and training would go on without any curvature: it raises.
        """
        raise RuntimeError(
            "TKFAC must be driven by tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, loss), "
            "optimizer), which captures the layer statistics; nn.TrainOneStepCell and "
            "Model(..., optimizer=TKFAC) give it gradients only. Use "
            "Model(TKFACTrainOneStepCell(...)) instead."
        )

    def apply_step(self, gradients, apply):
        """Spec Sec. 5 steps 3-6 (inverses already updated) if the scalar bool ``apply`` is true.

        The train cell calls this with ``apply = not overflow``; a false ``apply`` leaves the
        parameters, momenta and step counter as they were. It is branch-free on purpose (the
        skip is a selection, the inverse update is the caller's): in MindSpore 2.10 (CPU,
        GRAPH_MODE), a second tensor-conditioned ``if`` next to the train cell's ``if`` that
        computes the gradients makes the compiled graph bind the parameters to private copies,
        so that a host-side ``Parameter.set_data`` / ``load_checkpoint`` into a cell that has
        already run is silently ignored (docs/design.md, tests/test_ms_training.py).
        """
        lr = self.get_lr()
        updates = self.precondition(gradients)
        if self.kl_clip is not None:
            nu = self.kl_scale(updates, gradients, lr)
            updates = tuple(u * ops.cast(nu, u.dtype) for u in updates)
        # lr and momentum per parameter dtype (0 and 1 on a skipped step), then per parameter
        lr_by, tau_by = (), ()
        for dtype in self.update_dtypes:
            lr_by += (ops.select(apply, ops.cast(lr, dtype), Tensor(0.0, dtype)),)
            tau_by += (ops.select(apply, Tensor(self.momentum_value, dtype), Tensor(1.0, dtype)),)
        success = self.hyper_map(
            ops.partial(_apply_update, apply),
            tuple(lr_by[k] for k in self.dtype_index),
            tuple(tau_by[k] for k in self.dtype_index),
            self.decay_values,
            self._parameters,
            self.moments,
            updates,
        )
        step = self.global_step_increase_tensor * ops.cast(apply, mstype.int32)
        ops.assign_add(self.global_step, step)
        return success

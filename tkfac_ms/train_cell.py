"""The TKFAC training step: forward, backward(s), factor capture and the optimizer, in one graph.

``TKFACTrainOneStepCell(net_with_loss, optimizer)(data, label) -> loss`` works like
``nn.TrainOneStepCell`` (and ``nn.TrainOneStepWithLossScaleCell`` when given ``scale_sense``),
so ``mindspore.train.Model(cell).train(...)`` runs TKFAC.

Per step (spec Sec. 5), all decided inside the compiled graph from the step counter ``t``
(``global_step``):

* ordinary steps: one backward with respect to the weights only. The capture cells' statistics
  are not asked for, so no im2col, covariance or inversion is computed;
* factor-update steps, ``fisher="empirical"``: the same backward also asks for the probe slots,
  which hold the batch sums built from the true-label gradients;
* factor-update steps, ``fisher="true"``: a second backward of ``sum_n -log p(y~_n | x_n)`` with
  ``y~_n ~ Categorical(softmax(logits_n))`` (or the ``sampled_label`` given), with respect to the
  probes only. Its forward pass would update BatchNorm running statistics a second time; they are
  restored, so BatchNorm sees each batch once, as in the reference.

A step whose gradients or statistics are not finite changes no parameter, no factor and no
BatchNorm running statistic (they are restored), does not advance the step counter, and adds one
to ``tkfac.nonfinite_steps``.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.communication.management import GlobalComm, get_group_size
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_parallel_mode

from tkfac_ms import _math
from tkfac_ms.config import FisherType, LossReduction
from tkfac_ms.optimizer import TKFAC

__all__ = ["TKFACTrainOneStepCell", "sample_labels"]

_grad_scale = ops.MultitypeFuncGraph("tkfac_grad_scale")


@_grad_scale.register("Tensor", "Tensor")
def _unscale(scale, grad):
    return grad * ops.cast(ops.reciprocal(scale), grad.dtype)


def _all_finite(tensors):
    """True iff every element of every tensor is finite: one sum per tensor, then one check.

    NaN and +-Inf propagate through a sum (``Inf - Inf`` is NaN). A float32 sum can overflow
    only when the values reach ~1e34, and then reports the step as non-finite (skipped, never a
    missed NaN); half-precision tensors are summed in float32. ``amp.all_finite`` does the same
    with about four small kernels per tensor on the CPU; this is one.
    """
    sums = ()
    for t in tensors:
        if t.dtype == mstype.float16 or t.dtype == mstype.bfloat16:
            t = ops.cast(t, mstype.float32)
        sums += (ops.cast(t.sum(), mstype.float32),)
    return ops.isfinite(ops.stack(sums)).all()


def _log_softmax(x):
    """``log softmax`` over the last axis, in ``x``'s own precision.

    Written out because ``ops.log_softmax`` on CPU computes float64 inputs in float32 precision
    (measured: 3e-6 absolute error on unit-scale logits, MindSpore 2.10).
    """
    z = x - ops.stop_gradient(x.max(axis=-1, keepdims=True))
    return z - ops.log(ops.exp(z).sum(axis=-1, keepdims=True))


def sample_labels(logp):
    """One label per row drawn from ``softmax``: ``y~_n ~ Categorical(exp(logp_n))`` (spec Sec. 1).

    Gumbel-max, ``argmax(log p + G)`` with ``G ~ Gumbel(0, 1)``, built from portable
    ``StandardNormal`` draws only (``ops.uniform`` has no Ascend kernel, and
    ``RandomCategorical`` returns the argmax on the CPU): with ``z1, z2 ~ N(0, 1)``,
    ``E = (z1^2 + z2^2) / 2 ~ Exp(1)`` (a chi-square with two degrees of freedom, halved), and
    ``G = -log E ~ Gumbel(0, 1)``. ``E`` is floored at ``1e-30`` (probability ~1e-30 per draw).
    """
    logp32 = ops.cast(logp, mstype.float32)
    z = ops.standard_normal((2,) + logp32.shape)
    expo = ops.maximum((z[0] * z[0] + z[1] * z[1]) * 0.5, Tensor(1e-30, mstype.float32))
    return ops.stop_gradient(ops.argmax(logp32 - ops.log(expo), dim=-1))


class _SampledNLL(nn.Cell):
    """``sum_n -log softmax(logits_n)[y~_n]`` with ``y~`` sampled from the model (or given)."""

    def __init__(self, backbone: nn.Cell):
        super().__init__(auto_prefix=False)
        self.backbone = backbone

    def construct(self, data, sampled_label):
        logits = self.backbone(data)
        if logits.dtype == mstype.float16 or logits.dtype == mstype.bfloat16:
            logits = ops.cast(logits, mstype.float32)
        logp = _log_softmax(logits)
        if sampled_label is None:
            sampled_label = sample_labels(logp)
        onehot = ops.one_hot(
            ops.cast(sampled_label, mstype.int32),
            logp.shape[-1],
            Tensor(1.0, mstype.float32),
            Tensor(0.0, mstype.float32),
        )
        return -(ops.cast(onehot, logp.dtype) * logp).sum()


def _copy_into(targets, sources, after=None, where=None):
    """Assign each source Parameter's value to its target, once ``after`` has been computed.

    With a scalar bool ``where``, only where it holds (selected, not branched on).
    """
    done = ()
    for t, src in zip(targets, sources):
        value = src if after is None else ops.depend(src, after)
        if where is not None:
            value = _math.where(where, value, t)
        done += (ops.assign(t, value),)
    return done


def _read_each(params):
    """One element of every Parameter, read at the top level of the step's graph.

    MindSpore 2.10 (GRAPH_MODE, CPU) gives a Parameter that the compiled graph first touches
    inside a tensor-conditioned branch a private copy: after a host-side ``set_data`` (as done by
    ``load_checkpoint`` into a cell that has already run) the branch keeps reading and writing
    the old buffer, and the new value is silently ignored. Reading such a Parameter before any
    branch (a real read: ``ops.depend`` on the Parameter itself is not enough) avoids it; the
    cost is one one-element slice per Parameter, and some compile time, so only the TKFAC state
    is read (weights, momenta, BatchNorm buffers and counters are touched at the top level
    anyway). Tests:
    ``test_loading_a_checkpoint_into_a_cell_that_has_trained_rewinds_it`` and
    ``test_set_data_after_a_training_step_takes_effect`` (tests/test_parity.py).
    """
    return tuple(p.reshape(-1)[0] for p in params)


def _check_same_network(network: nn.Cell, optimizer: TKFAC) -> None:
    """Raise unless ``optimizer`` was built on (the backbone of) ``network``."""
    held = {id(p) for p in network.get_parameters()}
    foreign = [p.name for p in optimizer.parameters if id(p) not in held]
    foreign += [w.path for w in optimizer.layers if id(w.a_factor) not in held]
    if foreign:
        shown = ", ".join(foreign[:4]) + (" ..." if len(foreign) > 4 else "")
        raise ValueError(
            f"the optimizer was built on another network: {len(foreign)} of its parameters or "
            f"layers are not in `network` ({shown}). Build TKFAC(net, ...) and the train cell "
            "on the same net: TKFACTrainOneStepCell(nn.WithLossCell(net, loss), TKFAC(net, ...))"
        )


class _BatchStatistics(nn.Cell):
    """The probe gradients of one batch, leaving every parameter and buffer as it was."""

    def __init__(
        self,
        network: nn.Cell,
        sampled_nll: nn.Cell | None,
        probes: ParameterTuple,
        buffers: ParameterTuple,
        backup: ParameterTuple,
    ):
        super().__init__(auto_prefix=False)
        self.network = network
        self.sampled_nll = sampled_nll
        self.empirical = sampled_nll is None
        self.probes = probes
        self.buffers = buffers
        self.backup = backup
        self.grad_probes = ops.GradOperation(get_by_list=True)

    def construct(self, data, label, sampled_label=None):
        """One training step (spec Sec. 5); returns the loss."""
        # BatchNorm running statistics are put back after this extra forward pass. The copies go
        # through backup Parameters (an ops.identity of a Parameter is no snapshot in a compiled
        # graph), and the restore waits on the statistics, so it runs after the forward pass.
        data = ops.depend(data, _copy_into(self.backup, self.buffers))
        stats = self._probe_grads(data, label, sampled_label)
        return ops.depend(stats, _copy_into(self.buffers, self.backup, after=stats))

    def _probe_grads(self, data, label, sampled_label):
        if self.empirical:
            return self.grad_probes(self.network, self.probes)(data, label)
        return self.grad_probes(self.sampled_nll, self.probes)(data, sampled_label)


class TKFACTrainOneStepCell(nn.Cell):
    """One TKFAC training step in GRAPH_MODE: ``cell(data, label[, sampled_label]) -> loss``.

    Args:
        network: the network with its loss, called as ``network(data, label) -> scalar loss``
            (e.g. ``nn.WithLossCell``).
        optimizer: a :class:`~tkfac_ms.TKFAC` built on the network's backbone.
        scale_sense: optional loss scaling, as in ``nn.TrainOneStepWithLossScaleCell``: a Tensor
            (fixed scale) or an update cell such as
            ``DynamicLossScaleManager(...).get_update_cell()``. The captured output gradients are
            unscaled before they enter the factors.
        backbone: the logits network, needed for ``fisher="true"``; defaults to
            ``network.backbone_network`` (``nn.WithLossCell``). The sampled-label loss is
            softmax cross-entropy, so the backbone must output class logits.
    """

    def __init__(
        self, network: nn.Cell, optimizer: TKFAC, scale_sense=None, backbone: nn.Cell | None = None
    ):
        super().__init__(auto_prefix=False)
        if not isinstance(optimizer, TKFAC):
            raise TypeError(f"optimizer must be a tkfac_ms.TKFAC, got {type(optimizer).__name__}")
        if ms.get_context("mode") != ms.GRAPH_MODE:
            raise RuntimeError(
                "TKFACTrainOneStepCell needs GRAPH_MODE: in PYNATIVE_MODE (MindSpore's default) "
                "the capture cells deliver no layer statistics and TKFAC would train on "
                "placeholder factors. Call "
                "mindspore.set_context(mode=mindspore.GRAPH_MODE) before building the cell."
            )
        _check_same_network(network, optimizer)
        self.network = network
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.probes = optimizer.probes
        self.num_weights = len(self.weights)
        self.weights_and_probes = ParameterTuple(tuple(self.weights) + tuple(self.probes))
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        cfg = optimizer.config
        self.empirical = cfg.fisher == FisherType.EMPIRICAL
        self.mean_loss = cfg.loss_reduction == LossReduction.MEAN
        if not self.empirical:
            if backbone is None:
                backbone = getattr(network, "backbone_network", None)
            if backbone is None:
                raise ValueError(
                    "fisher='true' needs the logits network: pass backbone=..., or "
                    "use nn.WithLossCell, or set fisher='empirical'"
                )
            self.sampled_nll = _SampledNLL(backbone)
        # Non-trainable network parameters other than the TKFAC state: BatchNorm running
        # statistics and the like, which an extra forward pass must not update.
        tkfac_state = [
            p for w in optimizer.layers for p in (w.delta, w.a_factor, w.g_factor, w.a_inv, w.g_inv)
        ]
        state_ids = {id(p) for p in tkfac_state}
        self.buffers = ParameterTuple(
            [p for p in network.get_parameters() if not p.requires_grad and id(p) not in state_ids]
        )
        # Scratch copies of those buffers: one to undo a skipped step, one to undo the extra pass.
        self.step_backup = self.buffers.clone(prefix="tkfac_backup.step", init="same")
        stats_backup = self.buffers.clone(prefix="tkfac_backup.stats", init="same")
        for p in (*self.step_backup, *stats_backup):
            p.requires_grad = False
        self.batch_statistics = _BatchStatistics(
            network,
            None if self.empirical else self.sampled_nll,
            self.probes,
            self.buffers,
            stats_backup,
        )
        self.loss_scaling_manager = None
        if isinstance(scale_sense, nn.Cell):
            self.loss_scaling_manager = scale_sense
            self.scale_sense = Parameter(
                Tensor(scale_sense.get_loss_scale(), mstype.float32), name="scale_sense"
            )
        elif isinstance(scale_sense, Tensor):
            if scale_sense.shape not in ((), (1,)):
                raise ValueError(
                    f"scale_sense must be a scalar Tensor, got shape {scale_sense.shape}"
                )
            self.scale_sense = Parameter(
                ops.cast(scale_sense, mstype.float32).reshape(()), name="scale_sense"
            )
        elif scale_sense is None:
            self.scale_sense = Parameter(Tensor(1.0, mstype.float32), name="scale_sense")
        else:
            raise TypeError(
                "scale_sense must be None, a Tensor or a loss-scale update Cell, "
                f"got {type(scale_sense).__name__}"
            )
        # without loss scaling the scale is 1 and the gradients skip the division (59 kernels
        # for ResNet-20 on every step)
        self.loss_scaled = scale_sense is not None
        self.nonfinite_steps = Parameter(
            Tensor(0, mstype.int32), name="tkfac.nonfinite_steps", requires_grad=False
        )
        # Parameters that the step touches only inside its capture/inverse branch (everything
        # else is read or written at the top level of the graph); see _read_each.
        self.branch_state = ParameterTuple(
            tkfac_state
            + [optimizer.beta, optimizer.factor_updates, optimizer.rejected_curvature_updates]
        )
        parallel = _get_parallel_mode() in (
            ParallelMode.DATA_PARALLEL,
            ParallelMode.HYBRID_PARALLEL,
        )
        self.distributed = parallel and get_group_size() > 1
        self.grad_reducer = ops.identity
        if self.distributed:
            mean = True
            self.grad_reducer = nn.DistributedGradReducer(self.weights, mean, get_group_size())
            self.allreduce = ops.AllReduce(ops.ReduceOp.SUM, GlobalComm.WORLD_COMM_GROUP)

    def layer_statistics(self, data, label, sampled_label=None) -> dict[str, dict[str, Tensor]]:
        """The statistics of one batch for every preconditioned layer; changes no state.

        For parity tests and diagnostics: the same capture as a factor-update step (true or
        empirical Fisher as configured; ``sampled_label`` as in ``construct``), without the
        damping, the moving average or any parameter update, and with BatchNorm statistics
        restored. Runs on this worker only (no all-reduce).

        Returns:
            ``{layer path: {"delta", "phi", "psi"}}`` (TKFAC, spec Sec. 2) or
            ``{layer path: {"a", "g"}}`` (KFAC's ``A`` and ``G``, spec Sec. 6).
        """
        stats = self.batch_statistics(data, label, sampled_label)
        opt = self.optimizer
        n = float(data.shape[0])
        c = (n if self.mean_loss else 1.0) if self.empirical else 1.0
        out: dict[str, dict[str, Tensor]] = {}
        for path, (sr, a_sum, g_sum) in zip(opt.layer_names, opt.layer_sums(stats)):
            c2, count = Tensor(c * c, a_sum.dtype), Tensor(n, a_sum.dtype)
            out[path] = opt.approximation.layer_statistics(sr, a_sum, g_sum, count, c2)
        return out

    @staticmethod
    def _sens(loss, scale):
        return ops.fill(loss.dtype, loss.shape, 1.0) * ops.cast(scale, loss.dtype)

    def _reduce_stats(self, stats, count):
        """Data parallelism: all-reduce the statistics' *sums* and ``N`` (spec Sec. 2)."""
        if self.distributed:
            stats = tuple(self.allreduce(s) for s in stats)
            count = self.allreduce(count)
        return stats, count

    def _weight_grads(self, data, label, scale):
        """Loss and unscaled, reduced weight gradients (the forward shares the backward's)."""
        loss = self.network(data, label)
        grads = self.grad(self.network, self.weights)(data, label, self._sens(loss, scale))
        return loss, self.grad_reducer(self._unscale(grads, scale))

    def _unscale(self, grads, scale):
        """``grads / scale``; without loss scaling (``scale`` is 1) the gradients as they are."""
        if self.loss_scaled:
            return self.hyper_map(ops.partial(_grad_scale, scale), grads)
        return grads

    def _capture_step(self, data, label, sampled_label, scale, count):
        """A factor-update step: gradients, statistics and (if all finite) the factor update."""
        if self.empirical:
            loss = self.network(data, label)
            both = self.grad(self.network, self.weights_and_probes)(
                data, label, self._sens(loss, scale)
            )
            grads = self.grad_reducer(self._unscale(both[: self.num_weights], scale))
            stats = both[self.num_weights :]
            # u = c * dout, with c = N / S for a mean loss and 1 / S for a sum loss.
            c = count / scale if self.mean_loss else 1.0 / scale
        else:
            # True Fisher: the sampled-label pass runs first and puts BatchNorm's running
            # statistics back; the training pass waits for it, so BatchNorm sees one update.
            stats = self.batch_statistics(data, label, sampled_label)
            loss, grads = self._weight_grads(ops.depend(data, stats), label, scale)
            c = ops.ones((), mstype.float32)
        stats, total = self._reduce_stats(stats, count)
        finite = _all_finite(grads + stats)
        if finite:
            # factors and (on inverse steps) inverses, all or nothing: TKFAC.curvature_update
            self.optimizer.curvature_update(stats, total, c * c)
        return loss, grads, finite

    def construct(self, data, label, sampled_label=None):
        """One training step (spec Sec. 5); returns the loss."""
        data = ops.depend(data, _read_each(self.branch_state))
        data = ops.depend(data, _copy_into(self.step_backup, self.buffers))
        scale = self.scale_sense
        count = ops.cast(ops.scalar_to_tensor(data.shape[0]), mstype.float32)
        capture = self.optimizer.is_factor_step()
        # The forward runs inside each branch, so that the compiler shares it with the backward
        # (a forward outside the branch would be computed twice).
        # Spec Sec. 5 steps 1-2 (factors, then inverses) are nested in this one branch: see
        # TKFAC.apply_step for why no second ``if`` may follow it.
        if capture:
            loss, grads, finite = self._capture_step(data, label, sampled_label, scale, count)
        else:
            loss, grads = self._weight_grads(data, label, scale)
            finite = _all_finite(grads)
            if ops.logical_and(finite, self.optimizer.is_inverse_step()):
                self.optimizer.inverse_update()
        overflow = ops.logical_not(finite)
        if self.loss_scaling_manager is not None:
            overflow = self.loss_scaling_manager(self.scale_sense, overflow)
        # A skipped step is counted, its buffer updates undone and the optimizer step masked,
        # all without a branch (see TKFAC.apply_step).
        ops.assign_add(self.nonfinite_steps, ops.cast(overflow, mstype.int32))
        _copy_into(self.buffers, self.step_backup, where=overflow)
        self.optimizer.apply_step(grads, ops.logical_not(overflow))
        return loss

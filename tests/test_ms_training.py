"""tkfac_ms in use: Model.train, checkpoint resume, non-finite steps, loss scaling, bad input."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from mindspore import dataset as mds
from mindspore.train import Model

import tkfac_ms
from tkfac_ms.train_cell import _all_finite

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

B, CLASSES = 8, 4


class TinyCNN(nn.Cell):
    """conv(bias) -> BN -> ReLU -> conv(stride 2) -> ReLU -> pool -> Dense."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, pad_mode="pad", padding=1, has_bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, pad_mode="pad", padding=1, group=groups)
        self.fc = nn.Dense(8, CLASSES)

    def construct(self, x):
        x = ops.relu(self.bn1(self.conv1(x)))
        x = ops.relu(self.conv2(x))
        return self.fc(x.mean(axis=(2, 3)))


def batch(step: int, nan: bool = False):
    rng = np.random.default_rng(step)
    x = rng.standard_normal((B, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, CLASSES, B).astype(np.int32)
    if nan:
        x[0, 0, 0, 0] = np.nan
    return Tensor(x), Tensor(y)


def build(seed: int = 0, scale_sense=None, **kwargs):
    ms.set_seed(seed)
    net = TinyCNN()
    opts = {
        "approximation": "tkfac_new",
        "fisher": "empirical",
        "factor_update_steps": 2,
        "inv_update_steps": 2,
        **kwargs,
    }
    opt = tkfac_ms.TKFAC(net, 0.05, **opts)
    cell = tkfac_ms.TKFACTrainOneStepCell(
        nn.WithLossCell(net, nn.CrossEntropyLoss()), opt, scale_sense=scale_sense
    )
    cell.set_train()  # BatchNorm on batch statistics, updating its running statistics
    return net, opt, cell


def snapshot(cell) -> dict[str, np.ndarray]:
    """Every parameter, buffer and optimizer state (not the scratch BatchNorm backup)."""
    return {
        p.name: p.asnumpy().copy()
        for p in cell.get_parameters()
        if not p.name.startswith("tkfac_backup.")
    }


@pytest.mark.slow
def test_checkpoint_resume_gives_identical_trajectory(tmp_path):
    _, _, cell = build()
    for step in range(3):
        cell(*batch(step))
    ckpt = str(tmp_path / "tkfac.ckpt")
    ms.save_checkpoint(cell, ckpt)
    losses_a = [float(cell(*batch(step)).asnumpy()) for step in range(3, 7)]
    final_a = snapshot(cell)

    _, opt_b, cell_b = build(seed=123)  # different initial weights
    ms.load_checkpoint(ckpt, cell_b)
    assert int(opt_b.tkfac_step.asnumpy()[0]) == 3
    losses_b = [float(cell_b(*batch(step)).asnumpy()) for step in range(3, 7)]
    final_b = snapshot(cell_b)
    assert losses_a == losses_b
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        np.testing.assert_array_equal(final_a[name], final_b[name], err_msg=name)
    assert any(".tkfac.a_inv" in n for n in final_a) and "global_step" in final_a


@pytest.mark.slow
@pytest.mark.parametrize("approximation", ["tkfac_new", "kfac"])
def test_loading_a_checkpoint_into_a_cell_that_has_trained_rewinds_it(tmp_path, approximation):
    """``load_checkpoint`` into the same, already-compiled cell: every Parameter (weights,
    BatchNorm statistics, momentum, factors, inverses, step) must take the loaded value."""
    _, opt, cell = build(approximation=approximation)
    for step in range(3):
        cell(*batch(step))
    ckpt = str(tmp_path / "rewind.ckpt")
    ms.save_checkpoint(cell, ckpt)
    saved = snapshot(cell)
    losses_a = [float(cell(*batch(step)).asnumpy()) for step in range(3, 7)]
    final_a = snapshot(cell)

    ms.load_checkpoint(ckpt, cell)
    loaded = snapshot(cell)
    for name in saved:
        np.testing.assert_array_equal(loaded[name], saved[name], err_msg=name)
    assert int(opt.tkfac_step.asnumpy()[0]) == 3
    losses_b = [float(cell(*batch(step)).asnumpy()) for step in range(3, 7)]
    final_b = snapshot(cell)
    assert losses_a == losses_b
    for name in final_a:
        np.testing.assert_array_equal(final_b[name], final_a[name], err_msg=name)


@pytest.mark.slow
def test_nonfinite_step_changes_nothing_and_is_counted():
    _, opt, cell = build()
    cell(*batch(0))
    before = snapshot(cell)
    cell(*batch(1, nan=True))  # step 1: no factor update; step counter must not move
    after = snapshot(cell)
    changed = [
        n
        for n in before
        if n != "tkfac.nonfinite_steps" and not np.array_equal(before[n], after[n], equal_nan=True)
    ]
    assert changed == []
    assert int(cell.nonfinite_steps.asnumpy()) == 1
    # A non-finite batch on a factor-update step: factors untouched too.
    cell(*batch(1))
    assert int(opt.tkfac_step.asnumpy()[0]) == 2
    before = snapshot(cell)
    cell(*batch(2, nan=True))
    after = snapshot(cell)
    changed = [
        n
        for n in before
        if n != "tkfac.nonfinite_steps" and not np.array_equal(before[n], after[n], equal_nan=True)
    ]
    assert changed == []
    assert int(cell.nonfinite_steps.asnumpy()) == 2
    cell(*batch(2))  # and training goes on
    assert int(opt.tkfac_step.asnumpy()[0]) == 3
    assert all(np.isfinite(v).all() for v in snapshot(cell).values())


@pytest.mark.slow
def test_model_train_reduces_loss():
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((3 * 8 * 8, CLASSES))
    y = (x.reshape(64, -1) @ w).argmax(axis=1).astype(np.int32)
    data = mds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(16)
    net = TinyCNN()
    loss_net = nn.WithLossCell(net, nn.CrossEntropyLoss())
    opt = tkfac_ms.TKFAC(
        net, 0.02, approximation="tkfac_new", factor_update_steps=4, inv_update_steps=4
    )  # true Fisher: the sampled-label pass runs too
    cell = tkfac_ms.TKFACTrainOneStepCell(loss_net, opt)
    eval_loss = nn.WithLossCell(net, nn.CrossEntropyLoss())

    def full_loss():
        net.set_train(False)
        val = float(eval_loss(Tensor(x), Tensor(y)).asnumpy())
        net.set_train(True)
        return val

    start = full_loss()
    Model(cell).train(6, data, dataset_sink_mode=False)
    end = full_loss()
    assert int(opt.tkfac_step.asnumpy()[0]) == 24
    assert end < 0.8 * start, (start, end)


@pytest.mark.slow
def test_fixed_loss_scale_gives_the_same_factors():
    _, opt_a, cell_a = build()
    _, opt_b, cell_b = build(scale_sense=Tensor(1024.0))
    for step in range(3):
        cell_a(*batch(step))
        cell_b(*batch(step))
    for la, lb in zip(opt_a.layers, opt_b.layers, strict=True):
        for fld in ("a_factor", "g_factor", "delta"):
            a, b = getattr(la, fld).asnumpy(), getattr(lb, fld).asnumpy()
            assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max(), (la.path, fld)
    assert float(cell_b.scale_sense.asnumpy()) == 1024.0


@pytest.mark.slow
def test_dynamic_loss_scale_overflow_skips_and_keeps_factors():
    manager = ms.amp.DynamicLossScaleManager(
        init_loss_scale=2.0**120, scale_factor=2.0**100, scale_window=1000
    )
    _, opt, cell = build(scale_sense=manager.get_update_cell())
    before = snapshot(cell)
    cell(*batch(0))  # loss * 2^120 overflows float32 gradients
    after = snapshot(cell)
    for name in before:
        if ".tkfac." in name or name.startswith(("conv", "fc", "bn1.gamma", "moments")):
            np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    assert int(opt.tkfac_step.asnumpy()[0]) == 0
    assert float(cell.scale_sense.asnumpy()) == 2.0**20  # reduced by the update cell
    cell(*batch(0))
    assert int(opt.tkfac_step.asnumpy()[0]) == 1
    assert np.abs(opt.layers[0].a_factor.asnumpy()).max() > 0


def test_unsupported_grouped_conv_is_left_unwrapped_with_warning():
    net = TinyCNN(groups=2)
    with pytest.warns(UserWarning, match="conv2.*grouped convolution"):
        opt = tkfac_ms.TKFAC(net, 0.1)
    assert opt.layer_names == ("conv1", "fc")
    assert isinstance(net.conv2, nn.Conv2d) and not isinstance(net.conv2, tkfac_ms.TKFACLayer)
    assert any(p is net.conv2.weight for p in opt.parameters)  # plain momentum


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"damping": -1.0}, r"damping must be > 0, got -1\.0"),
        ({"damping": 0.0}, r"damping must be > 0, got 0\.0"),
        ({"factor_update_steps": 0}, r"factor_update_steps must be an integer >= 1, got 0"),
        ({"inv_update_steps": 2.5}, r"inv_update_steps must be an integer >= 1"),
        (
            {"approximation": "shampoo"},
            r"approximation must be one of 'kfac', 'tkfac_nor', "
            r"'tkfac_new', got 'shampoo'",
        ),
        ({"fisher": "exact"}, r"fisher must be one of"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1\.0"),
        ({"factor_decay": -0.1}, r"factor_decay must be in \[0, 1\), got -0\.1"),
        ({"nu": 0.0}, r"nu must be > 0, got 0\.0"),
        ({"kl_clip": -1.0}, r"kl_clip must be > 0, got -1\.0"),
        ({"weight_decay": -1e-4}, r"weight_decay must be >= 0, got -0\.0001"),
        ({"loss_reduction": "none"}, r"loss_reduction must be one of 'mean', 'sum'"),
        ({"factor_dtype": ms.float16}, r"factor_dtype must be float32 or float64"),
        ({"damping": []}, r"damping must be a float > 0 or a non-empty per-step list"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tkfac_ms.TKFAC(TinyCNN(), 0.1, **kwargs)


def test_train_cell_rejects_other_optimizers_and_missing_backbone():
    net = TinyCNN()
    with pytest.raises(TypeError, match="optimizer must be a tkfac_ms.TKFAC"):
        tkfac_ms.TKFACTrainOneStepCell(
            nn.WithLossCell(net, nn.CrossEntropyLoss()),
            nn.Momentum(net.trainable_params(), 0.1, 0.9),
        )
    opt = tkfac_ms.TKFAC(net, 0.1, fisher="true")

    class Plain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.net = net

        def construct(self, x, y):
            return self.net(x).sum()

    with pytest.raises(ValueError, match="fisher='true' needs the logits network"):
        tkfac_ms.TKFACTrainOneStepCell(Plain(), opt)


@pytest.mark.slow
def test_amp_o2_keeps_factors_in_float32():
    ms.set_seed(0)
    ref = TinyCNN()
    ms.set_seed(0)
    net = ms.amp.auto_mixed_precision(TinyCNN(), "O2")
    kwargs = {"fisher": "empirical", "factor_update_steps": 1, "inv_update_steps": 1}
    ref_opt, opt = tkfac_ms.TKFAC(ref, 0.05, **kwargs), tkfac_ms.TKFAC(net, 0.05, **kwargs)
    ref_cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(ref, nn.CrossEntropyLoss()), ref_opt)
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    ref_cell.set_train()
    cell.set_train()
    x, y = batch(0)
    got, want = cell.layer_statistics(x, y), ref_cell.layer_statistics(x, y)
    assert len(got) == len(want) == 3
    for (path, st), (ref_path, ref_st) in zip(got.items(), want.items(), strict=True):
        assert path.endswith(ref_path)
        for key in ("delta", "phi", "psi"):
            g, w = st[key].asnumpy(), ref_st[key].asnumpy()
            assert st[key].dtype == ms.float32
            # float16 activations: agreement to half precision, not better
            assert np.abs(g - w).max() <= 2e-2 * np.abs(w).max(), (path, key)
    cell(x, y)
    for layer in opt.layers:
        for fld in ("a_factor", "g_factor", "a_inv", "g_inv"):
            value = getattr(layer, fld)
            assert value.dtype == ms.float32 and np.isfinite(value.asnumpy()).all()


@pytest.mark.slow
def test_true_fisher_pass_leaves_batchnorm_updated_once():
    net_a, _, cell_a = build(fisher="true")
    net_b, _, cell_b = build(fisher="empirical")
    ms.load_param_into_net(
        net_b,
        {p.name: ms.Parameter(p.asnumpy().copy(), name=p.name) for p in net_a.get_parameters()},
    )
    x, y = batch(0)
    mean0 = net_a.bn1.moving_mean.asnumpy().copy()
    cell_a(x, y)  # step 0: training pass + sampled-label pass
    cell_b(x, y)  # step 0: training pass only
    assert not np.array_equal(net_a.bn1.moving_mean.asnumpy(), mean0)
    np.testing.assert_allclose(
        net_a.bn1.moving_mean.asnumpy(), net_b.bn1.moving_mean.asnumpy(), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        net_a.bn1.moving_variance.asnumpy(),
        net_b.bn1.moving_variance.asnumpy(),
        rtol=1e-6,
        atol=1e-7,
    )


class _AllFinite(nn.Cell):
    def construct(self, *tensors):
        return _all_finite(tensors)


@pytest.mark.parametrize(
    "values, want",
    [
        ([np.ones((3, 4), np.float32), np.zeros(5, np.float32)], True),
        ([np.ones((3, 4), np.float32), np.array([1.0, np.nan], np.float32)], False),
        ([np.array([np.inf, -np.inf], np.float32)], False),  # their sum is NaN
        ([np.array([np.inf], np.float32), np.array([-np.inf], np.float32)], False),
        ([np.array([1.0, -np.inf], np.float64)], False),
        # half precision is summed in float32: 4096 * 60000 overflows float16, not the check
        ([np.full(4096, 60000.0, np.float16)], True),
        ([np.array([1.0, np.nan], np.float16)], False),
    ],
)
def test_all_finite_check(values, want):
    """The train cell's non-finite check (one sum per tensor) against np.isfinite."""
    assert all(np.isfinite(v).all() for v in values) == want
    assert bool(_AllFinite()(*[Tensor(v) for v in values]).asnumpy()) == want

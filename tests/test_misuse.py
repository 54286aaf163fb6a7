"""Issue 15 item 1-2: common mistakes get a clear error or warning, in both twins.

Each test reproduces a mistake that was silently accepted (or died with an unrelated error)
before: PYNATIVE mode, a frozen bias, a TKFAC built on another network, TKFAC driven by
``nn.TrainOneStepCell``, ``skip="fc1"``, unsupported layers, a network with nothing to
precondition, a ``skip`` pattern that matches nothing, and a checkpoint of another
approximation, Fisher type or network.
"""

from __future__ import annotations

import re
import warnings

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, mint, nn
from testing_utils import torch_single_thread  # noqa: F401  (autouse fixture)

import reference_torch
import tkfac_ms

ms.set_context(mode=ms.GRAPH_MODE)


def ms_mlp(bias: bool = True) -> nn.Cell:
    return nn.SequentialCell(
        [nn.Dense(4, 8, has_bias=bias), nn.ReLU(), nn.Dense(8, 3, has_bias=bias)]
    )


def ms_cell(net: nn.Cell, opt: tkfac_ms.TKFAC) -> tkfac_ms.TKFACTrainOneStepCell:
    return tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)


def batch(n: int = 6, d: int = 4, c: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return Tensor(x), Tensor((np.arange(n) % c).astype(np.int32))


def torch_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def messages(record) -> list[str]:
    return [str(w.message) for w in record if "TKFAC" in str(w.message)]


# ---------------------------------------------------------------- mode and driver
def test_pynative_mode_raises_naming_graph_mode():
    net = ms_mlp()
    opt = tkfac_ms.TKFAC(net, 0.1)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        with pytest.raises(RuntimeError, match=r"needs GRAPH_MODE.*mindspore\.GRAPH_MODE"):
            ms_cell(net, opt)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.parametrize("idiom", ["TrainOneStepCell", "Model"])
def test_tkfac_driven_by_a_plain_train_cell_raises_naming_the_tkfac_cell(idiom):
    net = ms_mlp()
    opt = tkfac_ms.TKFAC(net, 0.1)
    x, y = batch()
    with pytest.raises(RuntimeError, match="TKFACTrainOneStepCell"):
        if idiom == "TrainOneStepCell":
            nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)(x, y)
        else:
            data = ms.dataset.NumpySlicesDataset(
                {"x": x.asnumpy(), "y": y.asnumpy()}, shuffle=False
            ).batch(6)
            ms.train.Model(net, nn.CrossEntropyLoss(), optimizer=opt).train(1, data)


def test_optimizer_built_on_another_network_raises():
    net, other = ms_mlp(), ms_mlp()
    opt = tkfac_ms.TKFAC(other, 0.1)
    with pytest.raises(ValueError, match="built on another network"):
        ms_cell(net, opt)


# ---------------------------------------------------------------- frozen parameters
def test_ms_frozen_bias_leaves_the_layer_unwrapped_with_a_warning_and_untrained():
    net = ms_mlp()
    first = net[0]
    first.bias.requires_grad = False
    bias0 = first.bias.asnumpy().copy()
    with pytest.warns(UserWarning, match=r"'0' \(Dense: frozen bias \(requires_grad=False\)\)"):
        opt = tkfac_ms.TKFAC(net, 0.5, factor_update_steps=1, inv_update_steps=1)
    assert opt.layer_names == ("2",)
    assert isinstance(net[0], nn.Dense) and not isinstance(net[0], tkfac_ms.TKFACLayer)
    assert all(p.name != first.bias.name for p in opt.parameters)
    cell = ms_cell(net, opt)
    for _ in range(2):
        cell(*batch())
    np.testing.assert_array_equal(first.bias.asnumpy(), bias0)


def test_ms_weight_frozen_after_wrapping_is_unwrapped_again():
    net = ms_mlp()
    tkfac_ms.wrap_network(net)
    net[2].weight.requires_grad = False
    with pytest.warns(UserWarning, match=r"'2' \(frozen weight"):
        opt = tkfac_ms.TKFAC(net, 0.1)
    assert opt.layer_names == ("0",)
    assert not isinstance(net[2], tkfac_ms.TKFACLayer)
    assert net[2].weight.name == "2.weight"


def test_torch_frozen_bias_leaves_the_layer_to_momentum_with_a_warning():
    model = torch_mlp()
    model[0].bias.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"'0' \(Linear: frozen bias \(requires_grad=False\)\)"):
        opt = reference_torch.TKFAC(model, lr=0.1)
    assert opt.layer_names == ("2",)


# ---------------------------------------------------------------- skip
def test_a_string_skip_is_one_pattern_in_both_twins():
    ms_opt = tkfac_ms.TKFAC(ms_mlp(), 0.1, skip="2")
    torch_opt = reference_torch.TKFAC(torch_mlp(), lr=0.1, skip="2")
    assert ms_opt.layer_names == torch_opt.layer_names == ("0",)


@pytest.mark.parametrize("twin", ["ms", "torch"])
def test_a_skip_pattern_that_matches_nothing_warns(twin):
    with pytest.warns(UserWarning, match=r"skip pattern 'fc\*' matches no layer"):
        if twin == "ms":
            tkfac_ms.TKFAC(ms_mlp(), 0.1, skip=["fc*"])
        else:
            reference_torch.TKFAC(torch_mlp(), lr=0.1, skip=["fc*"])


# ---------------------------------------------------------------- unsupported layers
class _MSZoo(nn.Cell):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 2, 3, pad_mode="pad", padding=1)
        self.c3 = nn.Conv3d(2, 2, 1)
        self.up = nn.Conv2dTranspose(2, 2, 2, stride=2)
        self.lin = mint.nn.Linear(4, 4)
        self.grouped = nn.Conv2d(2, 2, 3, group=2)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Dense(4, 3)

    def construct(self, x):
        return self.fc(self.lin(x))


def test_ms_every_unsupported_trainable_layer_is_named_in_one_warning():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt = tkfac_ms.TKFAC(_MSZoo(), 0.1, skip="grouped")
    found = messages(record)
    assert len(found) == 1, found
    for name, kind in [("c1", "Conv1d"), ("c3", "Conv3d"), ("up", "Conv2dTranspose")]:
        assert f"'{name}' ({kind}: not supported)" in found[0]
    assert "'lin' (Linear: not supported)" in found[0]  # mint.nn.Linear (also nn.Linear)
    assert "grouped" not in found[0] and "'bn'" not in found[0]  # skipped; not a weight layer
    assert opt.layer_names == ("fc",)


def test_torch_every_unsupported_trainable_layer_is_named_in_one_warning():
    model = torch.nn.ModuleDict(
        {
            "c1": torch.nn.Conv1d(2, 2, 3),
            "up": torch.nn.ConvTranspose2d(2, 2, 2),
            "emb": torch.nn.Embedding(5, 4),
            "bn": torch.nn.BatchNorm2d(2),
            "fc": torch.nn.Linear(4, 3),
        }
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt = reference_torch.TKFAC(model, lr=0.1)
    found = messages(record)
    assert len(found) == 1, found
    for name, kind in [("c1", "Conv1d"), ("up", "ConvTranspose2d"), ("emb", "Embedding")]:
        assert f"'{name}' ({kind}: not supported)" in found[0]
    assert "'bn'" not in found[0]
    assert opt.layer_names == ("fc",)


def test_a_network_with_no_supported_layer_raises_in_both_twins():
    ms_net = nn.SequentialCell([nn.Conv1d(2, 2, 3), nn.Flatten()])
    with pytest.raises(ValueError, match="no layer to precondition"):
        with pytest.warns(UserWarning, match="Conv1d"):
            tkfac_ms.TKFAC(ms_net, 0.1)
    with pytest.raises(ValueError, match="no layer to precondition"):
        with pytest.warns(UserWarning, match="Conv1d"):
            reference_torch.TKFAC(torch.nn.Sequential(torch.nn.Conv1d(2, 2, 3)), lr=0.1)


# ---------------------------------------------------------------- decay filter
def test_decay_filter_takes_name_and_parameter_in_both_twins():
    ms_seen, torch_seen = [], []
    tkfac_ms.TKFAC(
        ms_mlp(), 0.1, weight_decay=1e-4, decay_filter=lambda n, p: ms_seen.append(n) or True
    )
    reference_torch.TKFAC(
        torch_mlp(), lr=0.1, weight_decay=1e-4, decay_filter=lambda n, p: torch_seen.append(n)
    )
    assert sorted(ms_seen) == sorted(torch_seen) == ["0.bias", "0.weight", "2.bias", "2.weight"]


# ---------------------------------------------------------------- checkpoints
def _trained_ms(tmp_path, **kwargs):
    net = ms_mlp()
    opt = tkfac_ms.TKFAC(net, 0.1, factor_update_steps=1, inv_update_steps=1, **kwargs)
    cell = ms_cell(net, opt)
    cell(*batch())
    path = str(tmp_path / "run.ckpt")
    ms.save_checkpoint(cell, path)
    return path


def _snapshot(cell: nn.Cell) -> dict[str, np.ndarray]:
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


@pytest.mark.parametrize(
    "saved, here, match",
    [
        (
            {"approximation": "tkfac_nor"},
            {"approximation": "kfac"},
            "approximation 'tkfac_nor' in the checkpoint, 'kfac' here",
        ),
        ({"fisher": "true"}, {"fisher": "empirical"}, "fisher 'true' in the checkpoint"),
    ],
)
def test_ms_checkpoint_of_another_configuration_is_refused_before_any_write(
    tmp_path, saved, here, match
):
    path = _trained_ms(tmp_path, **saved)
    net = ms_mlp()
    cell = ms_cell(net, tkfac_ms.TKFAC(net, 0.1, **here))
    before = _snapshot(cell)
    with pytest.raises(ValueError, match=re.escape(match) + ".*Nothing was loaded"):
        tkfac_ms.load_checkpoint(path, cell)
    after = _snapshot(cell)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_ms_checkpoint_of_another_network_names_the_factor_shapes(tmp_path):
    path = _trained_ms(tmp_path)
    net = nn.SequentialCell([nn.Dense(4, 9), nn.ReLU(), nn.Dense(9, 3)])
    cell = ms_cell(net, tkfac_ms.TKFAC(net, 0.1))
    before = _snapshot(cell)
    with pytest.raises(ValueError, match=r"0\.tkfac\.g_factor \(8, 8\) != \(9, 9\)"):
        tkfac_ms.load_checkpoint(path, cell)
    assert all(np.array_equal(v, _snapshot(cell)[k]) for k, v in before.items())


def test_ms_checkpoint_round_trip_loads(tmp_path):
    path = _trained_ms(tmp_path, approximation="tkfac_new")
    net = ms_mlp()
    opt = tkfac_ms.TKFAC(net, 0.1, approximation="tkfac_new")
    cell = ms_cell(net, opt)
    tkfac_ms.load_checkpoint(path, cell)
    assert int(opt.factor_updates.asnumpy()) == 1
    assert float(np.abs(opt.a_factor[0].asnumpy()).sum()) > 0


def test_torch_state_dict_of_another_approximation_is_refused_before_any_write():
    x, y = torch.randn(6, 4), torch.arange(6) % 3
    model = torch_mlp()
    opt = reference_torch.TKFAC(model, lr=0.1, fisher="empirical", factor_update_steps=1)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    saved = opt.state_dict()
    other = reference_torch.TKFAC(torch_mlp(), lr=0.1, fisher="empirical", approximation="kfac")
    before = other.state_dict()
    with pytest.raises(ValueError, match="approximation 'tkfac_nor' in the state_dict, 'kfac'"):
        other.load_state_dict(saved)
    assert other.tkfac_step == before["tkfac"]["step"] == 0
    assert other.state_dict()["state"] == before["state"] == {}


def test_torch_state_dict_of_another_network_names_the_factor_shape():
    x, y = torch.randn(6, 4), torch.arange(6) % 3
    model = torch_mlp()
    opt = reference_torch.TKFAC(model, lr=0.1, fisher="empirical", factor_update_steps=1)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    wide = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.ReLU(), torch.nn.Linear(9, 3))
    other = reference_torch.TKFAC(wide, lr=0.1, fisher="empirical")
    with pytest.raises(ValueError, match=r"0\.g_factor has shape \(8, 8\), expected \(9, 9\)"):
        other.load_state_dict(opt.state_dict())
    assert other.state_dict()["state"] == {}


# ---------------------------------------------------------------- the twins validate alike
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, r"(learning_rate|lr) must be > 0, got 0"),
        ({"damping": "0.1"}, r"damping must be a number > 0, got '0\.1'"),
        ({"fisher": True}, r"fisher must be one of 'true', 'empirical', got True"),
    ],
)
def test_the_twins_reject_the_same_arguments(kwargs, match):
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr", 0.1)
    with pytest.raises(ValueError, match=match):
        tkfac_ms.TKFAC(ms_mlp(), lr, **kwargs)
    with pytest.raises(ValueError, match=match):
        reference_torch.TKFAC(torch_mlp(), lr=lr, **kwargs)


# ---------------------------------------------------------------- labels (documented, README)
def test_out_of_range_labels_behave_as_the_readme_documents():
    """Nothing checks labels on the device; the README states what MindSpore does instead."""
    logits = Tensor(np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 0.0]], np.float32))
    ce = nn.CrossEntropyLoss(reduction="none")
    minus_one = ce(logits, Tensor(np.array([-1, 0], np.int32))).asnumpy()
    last = ce(logits, Tensor(np.array([2, 0], np.int32))).asnumpy()
    np.testing.assert_array_equal(minus_one, last)  # -1 is taken as the last class
    with pytest.raises((ValueError, RuntimeError), match="index"):
        ce(logits, Tensor(np.array([3, 0], np.int32))).asnumpy()
    net = ms_mlp()
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, loss), tkfac_ms.TKFAC(net, 0.1))
    x, _ = batch()
    with pytest.raises(RuntimeError, match="label"):
        cell(x, Tensor(np.array([0, 1, 2, -1, 0, 1], np.int32)))

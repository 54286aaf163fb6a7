"""Model-zoo networks: forward shapes of every registered net, the torch name map, twin parity.

The twin-parity oracle is the independent torch implementation in ``reference_torch/models.py``:
weights are copied torch -> MindSpore through ``name_map`` and both run on the same input.
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before MindSpore loads (see conftest)

import warnings
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn

from model_zoo.src.models import (
    MODELS,
    batchnorm_prefixes,
    create_model,
    load_torch_state,
    map_torch_state,
    torch_to_ms_name,
)
from model_zoo.src.models.resnet_cifar import CifarResNet, ShortcutA
from reference_torch.models import TORCH_MODELS, create_torch_model
from tkfac_ms import wrap_network


@pytest.fixture(autouse=True, scope="module")
def _graph_mode():
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)


def _rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


# --- forward shapes of every registered network -------------------------------------------------


@dataclass(frozen=True)
class ForwardCase:
    name: str
    input_shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)


FORWARD_CASES = [
    ForwardCase("mlp", (2, 3, 32, 32), {"hidden": (32, 16)}),
    ForwardCase("small_cnn", (2, 3, 32, 32)),
    ForwardCase("resnet20", (2, 3, 32, 32)),
    ForwardCase("resnet32", (2, 3, 32, 32)),
    ForwardCase("resnet56", (2, 3, 32, 32)),
    ForwardCase("vgg16_bn", (2, 3, 32, 32)),
    ForwardCase("resnet50", (1, 3, 64, 64)),  # small input: the graph compile is what costs
]


def test_forward_cases_cover_registry():
    assert sorted(c.name for c in FORWARD_CASES) == sorted(MODELS)


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_forward_shape(case: ForwardCase, train: bool):
    net = create_model(case.name, num_classes=7, **case.kwargs)
    net.set_train(train)
    x = np.random.default_rng(0).standard_normal(case.input_shape).astype(np.float32)
    y = net(ms.Tensor(x)).asnumpy()
    assert y.shape == (case.input_shape[0], 7)
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    assert np.abs(y).max() > 0


PARAM_COUNTS = {  # num_classes=10; He et al. 2016 Table 6 / torchvision for resnet50 (1000)
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet56": 853_018,
    "vgg16_bn": 14_724_042,
    "resnet50": 23_528_522,
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts(name: str):
    net = create_model(name)
    assert sum(p.size for p in net.trainable_params()) == PARAM_COUNTS[name]


def test_resnet50_1000_classes_is_torchvision_size():
    assert sum(p.size for p in create_model("resnet50", 1000).trainable_params()) == 25_557_032


def test_create_model_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*resnet20.*vgg16_bn"):
        create_model("resnet18")


def test_create_model_passes_kwargs_and_validates():
    net = create_model("mlp", num_classes=3, in_dim=12, hidden=(5,))
    assert [tuple(p.shape) for p in net.trainable_params()] == [(5, 12), (5,), (3, 5), (3,)]
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="divisible by 4"):
        create_model("small_cnn", image_size=30)


def test_mlp_float64():
    net = create_model("mlp", in_dim=6, hidden=(4,), dtype=ms.float64)
    y = net(ms.Tensor(np.ones((2, 6)), ms.float64))
    assert y.dtype == ms.float64 and all(p.dtype == ms.float64 for p in net.get_parameters())


def test_option_a_shortcut_matches_numpy():
    x = np.random.default_rng(1).standard_normal((2, 16, 8, 8)).astype(np.float32)
    y = ShortcutA(8)(ms.Tensor(x)).asnumpy()
    expected = np.zeros((2, 32, 4, 4), np.float32)
    expected[:, 8:24] = x[:, :, ::2, ::2]
    np.testing.assert_array_equal(y, expected)


def test_nets_are_tkfac_compatible():
    """Every conv/dense wraps (pad_mode "pad", group 1, no fused activation), names unchanged.

    (Not vgg16_bn: its 4608-wide conv factors take ~1 GB, and its layers are the same kinds.)
    """
    for name, kwargs in [("resnet20", {}), ("small_cnn", {}), ("mlp", {"hidden": (8,)})]:
        net = create_model(name, **kwargs)
        names = [p.name for p in net.get_parameters()]
        n_layers = sum(isinstance(c, (nn.Conv2d, nn.Dense)) for _, c in net.cells_and_names())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wrappers = wrap_network(net)
        assert len(wrappers) == n_layers
        weights = [p.name for p in net.get_parameters() if ".tkfac." not in p.name]
        assert weights == names


# --- name map -----------------------------------------------------------------------------------


def test_torch_to_ms_name_rule():
    bn = {"bn1", "features.1"}
    assert torch_to_ms_name("conv1.weight", bn) == "conv1.weight"
    assert torch_to_ms_name("fc.bias", bn) == "fc.bias"
    assert torch_to_ms_name("bn1.weight", bn) == "bn1.gamma"
    assert torch_to_ms_name("bn1.bias", bn) == "bn1.beta"
    assert torch_to_ms_name("features.1.running_mean", bn) == "features.1.moving_mean"
    assert torch_to_ms_name("features.1.running_var", bn) == "features.1.moving_variance"
    assert torch_to_ms_name("bn1.num_batches_tracked", bn) is None
    assert torch_to_ms_name("features.10.weight", bn) == "features.10.weight"  # not a BN path
    with pytest.raises(ValueError, match="leaf 'scale'"):
        torch_to_ms_name("bn1.scale", bn)


def test_batchnorm_prefixes_from_ms_net():
    prefixes = batchnorm_prefixes(create_model("vgg16_bn"))
    assert "features.1" in prefixes and "features.0" not in prefixes and len(prefixes) == 13


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_every_torch_key_maps(name: str):
    """The whole state_dict of each twin maps; num_batches_tracked is the only key dropped."""
    tnet, mnet = create_torch_model(name), create_model(name)
    state = tnet.state_dict()
    mapped = map_torch_state(state, mnet)
    dropped = {k for k in state if torch_to_ms_name(k, batchnorm_prefixes(mnet)) is None}
    assert all(k.endswith(".num_batches_tracked") for k in dropped)
    assert len(mapped) == len(state) - len(dropped) == len(list(mnet.get_parameters()))


def test_map_fails_loudly():
    tnet, mnet = create_torch_model("resnet20"), create_model("resnet20")
    state = {k: v.numpy() for k, v in tnet.state_dict().items()}
    before = mnet.conv1.weight.asnumpy().copy()

    missing = dict(state)
    del missing["layer2.0.bn1.running_var"]
    with pytest.raises(ValueError, match="missing: .*'layer2.0.bn1.moving_variance'"):
        load_torch_state(mnet, missing)

    extra = dict(state, **{"layer9.conv.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unmapped: torch 'layer9.conv.weight'"):
        load_torch_state(mnet, extra)

    wrong = dict(state, **{"fc.weight": np.zeros((10, 65), np.float32)})
    with pytest.raises(ValueError, match=r"shape mismatch: torch 'fc.weight' \(10, 65\)"):
        load_torch_state(mnet, wrong)

    # a failed map writes nothing
    np.testing.assert_array_equal(mnet.conv1.weight.asnumpy(), before)


def test_map_skips_tkfac_state_only():
    tnet, mnet = create_torch_model("small_cnn"), create_model("small_cnn")
    wrap_network(mnet)
    assert len(load_torch_state(mnet, tnet.state_dict())) == 6
    with pytest.raises(ValueError, match="missing: .*conv1.tkfac.a_factor"):
        load_torch_state(mnet, tnet.state_dict(), skip=())


# --- twin parity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwinCase:
    name: str
    input_shape: tuple[int, ...]
    seed: int = 0


TWIN_CASES = [
    TwinCase("mlp", (4, 3, 32, 32)),
    TwinCase("small_cnn", (4, 3, 32, 32)),
    TwinCase("resnet20", (4, 3, 32, 32)),
    TwinCase("vgg16_bn", (4, 3, 32, 32)),
]

# Max relative error max|y_ms - y_torch| / max|y_torch| of the eval-mode logits, float32.
# Measured over seeds 0-2 (this CPU, oneDNN AVX2 vs torch CPU): mlp 5.0e-7, small_cnn 6.8e-7,
# resnet20 5.4e-7, vgg16_bn 1.4e-6. Each tolerance is <= 10x its measurement: the differences
# are float32 summation order (3072-long dot products in mlp, 4608-long conv reductions in
# vgg16_bn), not a structural mismatch, which shows up as > 1e-2 (see the unloaded check).
TWIN_RTOL = {
    "mlp": 5e-6,
    "small_cnn": 5e-6,
    "resnet20": 5e-6,
    "vgg16_bn": 1e-5,
}


def _twin_pair(case: TwinCase) -> tuple[torch.nn.Module, nn.Cell]:
    """A torch twin with non-trivial BN statistics, and a fresh MindSpore net."""
    torch.manual_seed(case.seed)
    tnet = create_torch_model(case.name)
    gen = torch.Generator().manual_seed(case.seed + 1)
    with torch.no_grad():
        for m in tnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # else a mean/var or gamma/beta swap hides
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return tnet.eval(), create_model(case.name)


@pytest.mark.parametrize("case", TWIN_CASES, ids=lambda c: c.name)
def test_twin_forward_parity(case: TwinCase):
    tnet, mnet = _twin_pair(case)
    mnet.set_train(False)
    x = np.random.default_rng(case.seed).standard_normal(case.input_shape).astype(np.float32)
    with torch.no_grad():
        expected = tnet(torch.from_numpy(x)).numpy()
    unloaded = _rel_err(mnet(ms.Tensor(x)).asnumpy(), expected)
    assert unloaded > 1e-2, "independently initialized nets agree: the comparison is vacuous"

    load_torch_state(mnet, tnet.state_dict())
    err = _rel_err(mnet(ms.Tensor(x)).asnumpy(), expected)
    assert err <= TWIN_RTOL[case.name], (
        f"{case.name}: eval logits differ, max rel err {err:.3e} > {TWIN_RTOL[case.name]:.0e}"
    )


def test_twin_train_mode_bn_statistics():
    """One training-mode forward: logits and BN running statistics agree (momentum 0.9 == 0.1)."""
    tnet, mnet = _twin_pair(TwinCase("resnet20", (8, 3, 32, 32)))
    load_torch_state(mnet, tnet.state_dict())
    tnet.train()
    mnet.set_train(True)
    x = np.random.default_rng(3).standard_normal((8, 3, 32, 32)).astype(np.float32)
    y_t = tnet(torch.from_numpy(x)).detach().numpy()
    y_m = mnet(ms.Tensor(x)).asnumpy()
    assert _rel_err(y_m, y_t) <= TWIN_RTOL["resnet20"]  # measured 5.3e-7
    ms_params = {p.name: p.asnumpy() for p in mnet.get_parameters()}
    bn = batchnorm_prefixes(mnet)
    for key, value in tnet.state_dict().items():
        name = torch_to_ms_name(key, bn)
        if name is not None and (key.endswith("running_mean") or key.endswith("running_var")):
            np.testing.assert_allclose(
                ms_params[name], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{key} -> {name}"
            )

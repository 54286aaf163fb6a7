"""Issue 2, test 7: bad arguments raise errors that name the argument and its allowed range."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from testing_utils import torch_single_thread  # noqa: F401  (autouse fixture)
from torch import nn
from torch.nn import functional as F

import reference_torch
from reference_torch import Approximation, FisherType, TKFACConfig, UnsupportedLayerError
from reference_torch.capture import LayerCapture


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


@dataclass(frozen=True)
class BadArg:
    """Keyword arguments for ``TKFAC(mlp(), **kwargs)`` and the message they must raise."""

    name: str
    kwargs: dict[str, Any]
    match: str
    extra: dict[str, Any] = field(default_factory=dict)


BAD_ARGS = [
    BadArg("negative_damping", {"damping": -1.0}, r"damping must be > 0, got -1\.0"),
    BadArg("zero_damping", {"damping": 0.0}, r"damping must be > 0, got 0\.0"),
    BadArg(
        "zero_factor_steps",
        {"factor_update_steps": 0},
        r"factor_update_steps must be an integer >= 1, got 0",
    ),
    BadArg(
        "float_inv_steps",
        {"inv_update_steps": 2.0},
        r"inv_update_steps must be an integer >= 1, got 2\.0",
    ),
    BadArg(
        "unknown_approximation",
        {"approximation": "ekfac"},
        r"approximation must be one of 'kfac', 'tkfac_nor', 'tkfac_new', got 'ekfac'",
    ),
    BadArg(
        "unknown_fisher",
        {"fisher": "exact"},
        r"fisher must be one of 'true', 'empirical', got 'exact'",
    ),
    BadArg(
        "unknown_reduction",
        {"loss_reduction": "none"},
        r"loss_reduction must be one of 'mean', 'sum', got 'none'",
    ),
    BadArg("negative_lr", {"lr": -0.1}, r"lr must be > 0, got -0\.1"),
    BadArg("string_lr", {"lr": "0.1"}, r"lr must be a number > 0, got '0\.1'"),
    BadArg("momentum_one", {"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1\.0"),
    BadArg(
        "negative_weight_decay", {"weight_decay": -1e-4}, r"weight_decay must be >= 0, got -0\.0001"
    ),
    BadArg("zero_nu", {"nu": 0.0}, r"nu must be > 0, got 0\.0"),
    BadArg(
        "factor_decay_one", {"factor_decay": 1.0}, r"factor_decay must be in \[0, 1\), got 1\.0"
    ),
    BadArg(
        "nan_factor_decay",
        {"factor_decay": float("nan")},
        r"factor_decay must be in \[0, 1\), got nan",
    ),
    BadArg("zero_kl_clip", {"kl_clip": 0.0}, r"kl_clip must be > 0, got 0\.0"),
    BadArg("skip_ints", {"skip": [0]}, r"skip must contain strings, got 0"),
    BadArg(
        "decay_filter_not_callable",
        {"decay_filter": 3},
        r"decay_filter must be a callable \(name, param\) -> bool or None, got 3",
    ),
    BadArg(
        "half_factor_dtype",
        {"factor_dtype": torch.float16},
        r"factor_dtype must be None, torch\.float32 or torch\.float64, got torch\.float16",
    ),
]


@pytest.mark.parametrize("bad", BAD_ARGS, ids=lambda b: b.name)
def test_bad_argument_raises_naming_it(bad: BadArg) -> None:
    kwargs = {"lr": 0.1, **bad.kwargs}
    with pytest.raises(ValueError, match=bad.match):
        reference_torch.TKFAC(mlp(), **kwargs)


def test_model_must_be_a_module() -> None:
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got list"):
        reference_torch.TKFAC([nn.Linear(2, 2)], lr=0.1)  # type: ignore[arg-type]


def test_schedule_values_are_checked_when_used() -> None:
    model = mlp()
    opt = reference_torch.TKFAC(model, lr=lambda t: 0.1 - 0.2 * t, fisher="empirical")
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1])).backward()
        if opt.tkfac_step == 0:
            opt.step()
        else:
            with pytest.raises(ValueError, match=r"lr\(1\) must be > 0, got -0\.1"):
                opt.step()


def test_config_accepts_enums_and_names() -> None:
    by_name = TKFACConfig(lr=0.1, approximation="TKFAC_NEW", fisher="empirical")
    by_enum = TKFACConfig(
        lr=0.1, approximation=Approximation.TKFAC_NEW, fisher=FisherType.EMPIRICAL
    )
    assert by_name == by_enum
    assert by_name.approximation is Approximation.TKFAC_NEW
    with pytest.raises(AttributeError):
        by_name.lr = 0.2  # type: ignore[misc]  # frozen


def test_grouped_conv_is_rejected_by_capture_and_left_to_momentum() -> None:
    grouped = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(UnsupportedLayerError, match=r"grouped convolution \(groups=2\)"):
        LayerCapture(grouped)
    model = nn.Sequential(grouped, nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(
        UserWarning,
        match=r"'0' \(Conv2d: grouped convolution \(groups=2\)",
    ):
        opt = reference_torch.TKFAC(model, lr=0.1)
    assert opt.layer_names == ("2",)


def test_listing_an_unsupported_layer_in_skip_silences_the_warning() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = reference_torch.TKFAC(model, lr=0.1, skip=("0",))
    assert opt.layer_names == ("2",)


def test_non_zero_padding_mode_is_unsupported() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"padding_mode='reflect' is not supported"):
        LayerCapture(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


def test_unmatched_skip_pattern_warns() -> None:
    with pytest.warns(UserWarning, match=r"skip pattern 'fc\*' matches no layer"):
        reference_torch.TKFAC(mlp(), lr=0.1, skip=("fc*",))


def test_unknown_layer_state_name() -> None:
    opt = reference_torch.TKFAC(mlp(), lr=0.1)
    with pytest.raises(
        KeyError, match=r"'1' is not a preconditioned layer; those are \['0', '2'\]"
    ):
        opt.layer_state("1")

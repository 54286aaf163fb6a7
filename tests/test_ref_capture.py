"""The capture hooks: ``a`` and ``u`` in the layout of spec Sec. 1, checked against the layer.

Oracles: the layer's own output (``a`` times the weight matrix must rebuild it, which pins the
im2col column order and every padding/stride/dilation variant) and autograd's weight gradient
(``sum_{n,t} u a^T`` must rebuild it, with the per-sample scale of the loss reduction).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from testing_utils import (
    assert_allclose,
    torch_single_thread,  # noqa: F401  (autouse fixture)
)
from torch import nn

from reference_torch import LayerCapture, LossReduction

DTYPE = torch.float64


@dataclass(frozen=True)
class ConvCase:
    name: str
    kernel: int | tuple[int, int] = 3
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] | str = 0
    dilation: int | tuple[int, int] = 1
    bias: bool = True


CONV_CASES = [
    ConvCase("plain"),
    ConvCase("s2_p1_d2", stride=2, padding=1, dilation=2),
    ConvCase("nobias_rect", kernel=(2, 3), stride=(2, 1), padding=(1, 2), bias=False),
    ConvCase("same_even_kernel", kernel=4, padding="same", dilation=(1, 2)),
    ConvCase("valid", kernel=2, padding="valid"),
]


def _captured(
    module: nn.Module, x: torch.Tensor, reduction: LossReduction, target: torch.Tensor
) -> tuple[LayerCapture, torch.Tensor]:
    cap = LayerCapture(module)
    cap.arm(reduction, record_backward=True)
    out = module(x)
    loss = ((out - target) ** 2).sum(dim=tuple(range(1, out.ndim)))  # per-sample losses
    (loss.mean() if reduction == LossReduction.MEAN else loss.sum()).backward()
    return cap, out.detach()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("reduction", list(LossReduction), ids=lambda r: r.value)
def test_conv_patches_rebuild_output_and_gradient(case: ConvCase, reduction: LossReduction) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(
        3,
        4,
        case.kernel,
        stride=case.stride,
        padding=case.padding,
        dilation=case.dilation,
        bias=case.bias,
    ).to(DTYPE)
    x = torch.randn(5, 3, 8, 7, dtype=DTYPE)
    target = torch.randn_like(conv(x))
    cap, out = _captured(conv, x, reduction, target)
    assert cap.a is not None and cap.u is not None
    w_mat = conv.weight.detach().reshape(4, -1)
    if case.bias:
        w_mat = torch.cat([w_mat, conv.bias.detach()[:, None]], dim=1)  # type: ignore[union-attr]
    n, c_out, h_out, w_out = out.shape
    assert cap.a.shape == (n, h_out * w_out, w_mat.shape[1])
    assert cap.u.shape == (n, h_out * w_out, c_out)
    rebuilt = torch.einsum("nti,oi->not", cap.a, w_mat).reshape(out.shape)
    assert_allclose(rebuilt, out, name="a @ W^T vs conv output")
    grad_mat = conv.weight.grad.reshape(4, -1)  # type: ignore[union-attr]
    if case.bias:
        grad_mat = torch.cat([grad_mat, conv.bias.grad[:, None]], dim=1)  # type: ignore[union-attr]
    scale = n if reduction == LossReduction.MEAN else 1  # u is per-sample: mean loss x N
    assert_allclose(
        torch.einsum("nto,nti->oi", cap.u, cap.a) / scale, grad_mat, name="sum u a^T vs weight grad"
    )


def test_linear_with_extra_dims_uses_them_as_locations() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(4, 3).to(DTYPE)
    x = torch.randn(2, 5, 4, dtype=DTYPE)
    cap, out = _captured(lin, x, LossReduction.SUM, torch.zeros(2, 5, 3, dtype=DTYPE))
    assert cap.a is not None and cap.u is not None
    assert cap.a.shape == (2, 5, 5) and cap.u.shape == (2, 5, 3)
    assert_allclose(cap.a[..., -1], torch.ones(2, 5), name="bias column")
    w_mat = torch.cat([lin.weight, lin.bias[:, None]], dim=1).detach()
    assert_allclose(cap.a @ w_mat.T, out, name="a @ W^T vs linear output")


def test_nothing_is_recorded_unless_armed_or_under_no_grad() -> None:
    lin = nn.Linear(2, 2)
    cap = LayerCapture(lin)
    lin(torch.randn(3, 2)).sum().backward()
    assert cap.a is None and cap.u is None
    cap.arm(LossReduction.MEAN, record_backward=True)
    with torch.no_grad():
        lin(torch.randn(3, 2))
    assert cap.a is None
    cap.remove()
    lin(torch.randn(3, 2)).sum().backward()
    assert cap.a is None and cap.u is None


def test_in_place_activation_after_the_layer_is_fine() -> None:
    """The output-tensor hook sees the gradient w.r.t. the layer output before ReLU_(...)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 1)).to(DTYPE)
    cap = LayerCapture(model[0])
    cap.arm(LossReduction.SUM, record_backward=True)
    x = torch.randn(6, 3, dtype=DTYPE)
    model(x).sum().backward()
    assert cap.u is not None
    u = cap.u
    cap.remove()
    h = model[0](x).detach().requires_grad_()
    model[2](torch.relu(h)).sum().backward()
    assert_allclose(u[:, 0, :], h.grad, name="u vs d loss / d output")  # type: ignore[arg-type]


def test_u_is_recorded_once_per_forward() -> None:
    """A second backward through the same forward (retain_graph) does not replace ``u``."""
    lin = nn.Linear(3, 2).to(DTYPE)
    cap = LayerCapture(lin)
    cap.arm(LossReduction.SUM, record_backward=True)
    out = lin(torch.randn(4, 3, dtype=DTYPE))
    out.sum().backward(retain_graph=True)
    (5.0 * out).sum().backward()
    assert cap.u is not None
    assert_allclose(cap.u, torch.ones(4, 1, 2, dtype=DTYPE), name="u of the first backward")

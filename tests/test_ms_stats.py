"""tkfac_ms statistics: the MindSpore math against the reference, and the spec identities
checked on what the graph-mode capture cells really produce.

The oracle for the identities is independent of both implementations: the exact block
``F = (1/N) sum_{n,t} vec(u a^T) vec(u a^T)^T`` is built in NumPy from per-location vectors that
are themselves checked against torch.func per-sample gradients (``vmap(grad(...))``); ``a`` is an
explicit-loop im2col, not ``ops.unfold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, nn, ops
from testing_utils import rel_err
from torch.func import functional_call, grad, vmap

import reference_torch
import tkfac_ms

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


# --------------------------------------------------------------------- pure math vs reference
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("shape", [(7, 1, 5, 3), (4, 9, 6, 2)])
def test_tkfac_stats_equal_reference(dtype, tol, shape):
    n, t, d_in, d_out = shape
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, t, d_in)).astype(dtype)
    u = rng.standard_normal((n, t, d_out)).astype(dtype)
    got = tkfac_ms.tkfac_stats(Tensor(a), Tensor(u))
    ref = reference_torch.tkfac_stats(torch.from_numpy(a), torch.from_numpy(u))
    for name, g, r in zip(("delta", "phi", "psi"), got, ref, strict=True):
        assert rel_err(g.asnumpy(), r.numpy()) < tol, name
    assert abs(np.trace(got[1].asnumpy()) - 1) < 10 * tol
    assert abs(np.trace(got[2].asnumpy()) - 1) < 10 * tol
    got_k = tkfac_ms.kfac_stats(Tensor(a), Tensor(u))
    ref_k = reference_torch.kfac_stats(torch.from_numpy(a), torch.from_numpy(u))
    for name, g, r in zip(("A", "G"), got_k, ref_k, strict=True):
        assert rel_err(g.asnumpy(), r.numpy()) < tol, name


def test_dead_layer_guard_gives_scaled_identities():
    a = Tensor(np.zeros((3, 2, 4)))
    u = Tensor(np.ones((3, 2, 5)))
    delta, phi, psi = tkfac_ms.tkfac_stats(a, u)
    assert float(delta.asnumpy()) == 0.0
    np.testing.assert_array_equal(phi.asnumpy(), np.eye(4) / 4)
    np.testing.assert_array_equal(psi.asnumpy(), np.eye(5) / 5)


# ------------------------------------------- the optimizer's fused factor update vs the spec
def _ref_chain(sums, c2, n, approximation, param, beta, first, state, decay):
    """The spec's chain written out with reference_torch: sums -> Phi, Psi -> damping -> EMA."""
    ref = reference_torch._math
    sr, phi_sum, psi_sum = (torch.from_numpy(x) * c2 for x in sums)
    delta, phi, psi = ref.tkfac_from_sums(sr, phi_sum, psi_sum, n)
    if approximation == "tkfac_nor":
        cur = ref.tkfac_nor_damping(delta, phi, psi, param)
    else:
        b = None if beta is None else torch.tensor(beta, dtype=torch.float64)
        cur = ref.tkfac_new_damping(delta, phi, psi, param, beta=b)
    return [
        ref.moving_average(None if first else torch.from_numpy(st), c, decay, first).numpy()
        for st, c in zip(state, cur, strict=True)
    ]


@pytest.mark.parametrize(
    "approximation,param,beta",
    [
        ("tkfac_nor", 1e-3, None),
        ("tkfac_new", 1e-3, None),
        ("tkfac_new", 5e-2, 3.0),
    ],
)
@pytest.mark.parametrize("dead", [False, True])
@pytest.mark.parametrize("first", [True, False])
def test_fused_factor_update_equals_the_spec_chain(approximation, param, beta, dead, first):
    """``tkfac_factor_coefficients`` + ``update_moving_average`` (what the optimizer runs, to
    save d x d buffers) against statistics -> damping -> moving average done step by step."""
    rng = np.random.default_rng(3)
    n, t, d_in, d_out, c2, decay = 6, 5, 7, 4, 2.5, 0.95
    a = rng.standard_normal((n, t, d_in)) * (0.0 if dead else 1.0)
    u = rng.standard_normal((n, t, d_out))
    sums = [x.numpy() for x in reference_torch._math.tkfac_sums(torch.tensor(a), torch.tensor(u))]
    state = []
    for d in (d_in, d_out):
        m = rng.standard_normal((d, d))
        state.append(m @ m.T / d + np.eye(d))
    expected = _ref_chain(sums, c2, n, approximation, param, beta, first, state, decay)

    m = tkfac_ms._math
    sr = Tensor(sums[0]) * c2
    count = Tensor(float(n), ms.float64)
    delta = sr / count
    if approximation == "tkfac_nor":
        sd, damp_in = ops.sqrt(delta), Tensor(param**0.5, ms.float64)
        damp_out = damp_in
    else:
        dt = m.tkfac_new_delta(delta, param, None if beta is None else Tensor(beta, ms.float64))
        sd, damp_in, damp_out = ops.sqrt(dt), dt / d_in, dt / d_out
    scale, *shifts = m.tkfac_factor_coefficients(
        sr, count, sd, Tensor(c2, ms.float64), damp_in, damp_out, d_in, d_out
    )
    got = []
    for shift, stat, st in zip(shifts, sums[1:], state, strict=True):
        out = m.update_moving_average(
            Tensor(st), Tensor(stat), scale, shift, decay, Tensor(first, ms.bool_)
        )
        got.append(out.asnumpy())
    for g, e in zip(got, expected, strict=True):
        assert rel_err(g, e) < 1e-13


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-4)])
def test_spd_inverse_and_kfac_damping_against_numpy(dtype, tol):
    """``spd_inverse`` (Cholesky of the symmetrised, jittered matrix) and the diagonal damping
    of ``kfac_pi_damping`` against numpy's inverse and reference_torch's damping."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((40, 30)).astype(dtype)
    big_a = a.T @ a / 40 + 0.1 * np.eye(30, dtype=dtype)
    g = rng.standard_normal((40, 6)).astype(dtype)
    big_g = g.T @ g / 40
    skew = big_a.copy()
    skew[3, 5] *= 1 + 4 * np.finfo(dtype).eps  # rounding-level asymmetry, as a matmul leaves
    inv = tkfac_ms._math.spd_inverse(Tensor(skew)).asnumpy()
    assert inv.dtype == dtype
    assert rel_err(inv, np.linalg.inv(big_a.astype(np.float64))) < tol
    assert rel_err(inv, inv.T) < tol
    a_hat, g_hat = tkfac_ms._math.kfac_pi_damping(Tensor(big_a), Tensor(big_g), 1e-2)
    ra, rg = reference_torch._math.kfac_pi_damping(torch.tensor(big_a), torch.tensor(big_g), 1e-2)
    assert rel_err(a_hat.asnumpy(), ra.numpy()) < tol
    assert rel_err(g_hat.asnumpy(), rg.numpy()) < tol


# --------------------------------------------------------------------- identities via capture
@dataclass(frozen=True)
class Case:
    """One layer under test: a first layer, then ReLU, flatten and a Dense head."""

    name: str
    conv: bool
    bias: bool
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    tol: float = 1e-11


CASES = [
    Case("dense_bias", conv=False, bias=True),
    Case("dense_nobias", conv=False, bias=False),
    Case("conv_s2_p1_d2_bias", conv=True, bias=True, stride=2, padding=1, dilation=2, tol=2e-5),
    Case("conv_s1_p1_nobias", conv=True, bias=False, padding=1, tol=2e-5),
]
N, C_IN, HW, C_OUT, CLASSES, D_DENSE = 6, 2, 7, 3, 4, 5


class _MsNet(nn.Cell):
    def __init__(self, case: Case, dtype):
        super().__init__()
        if case.conv:
            self.first = nn.Conv2d(
                C_IN,
                C_OUT,
                3,
                stride=case.stride,
                pad_mode="pad",
                padding=case.padding,
                dilation=case.dilation,
                has_bias=case.bias,
            )
        else:
            self.first = nn.Dense(D_DENSE, C_OUT, has_bias=case.bias, dtype=dtype)
        self.head = None

    def construct(self, x):
        h = ops.relu(self.first(x))
        return self.head(h.reshape(h.shape[0], -1))


class _Loss(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x, y):
        logits = self.net(x)
        z = logits - logits.max(axis=-1, keepdims=True)
        logp = z - ops.log(ops.exp(z).sum(axis=-1, keepdims=True))
        onehot = ops.one_hot(y, CLASSES, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
        return -(ops.cast(onehot, logp.dtype) * logp).sum(axis=-1).mean()


def _im2col(x: np.ndarray, k: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """Explicit-loop im2col: ``[N, C, H, W] -> [N, T, C*k*k]`` in ``(c, i, j)`` order."""
    return _im2col_general(x, (k, k), (stride, stride), (dil, dil), (pad, pad, pad, pad))


def _oracle(case: Case, x: np.ndarray, y: np.ndarray, first_w, first_b, head_w, head_b):
    """Per-location ``a`` and ``u`` (checked against torch.func) and the exact block ``F``."""
    if case.conv:
        first = torch.nn.Conv2d(
            C_IN,
            C_OUT,
            3,
            stride=case.stride,
            padding=case.padding,
            dilation=case.dilation,
            bias=case.bias,
        )
    else:
        first = torch.nn.Linear(D_DENSE, C_OUT, bias=case.bias)
    first = first.double()
    feat = int(np.prod(first(torch.zeros((1, *x.shape[1:]), dtype=torch.float64)).shape[1:]))
    head = torch.nn.Linear(feat, CLASSES).double()
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(first_w))
        if case.bias:
            first.bias.copy_(torch.from_numpy(first_b))
        head.weight.copy_(torch.from_numpy(head_w))
        head.bias.copy_(torch.from_numpy(head_b))
    xt, yt = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y.astype(np.int64))

    # u: the gradient of sample n's own loss w.r.t. the layer output (losses are per sample).
    out = first(xt)
    out.retain_grad()
    logits = head(torch.relu(out).flatten(1))
    torch.nn.functional.cross_entropy(logits, yt, reduction="sum").backward()
    g = out.grad.detach().numpy()
    if case.conv:
        u = g.reshape(N, C_OUT, -1).transpose(0, 2, 1)
        a = _im2col(x.astype(np.float64), 3, case.stride, case.padding, case.dilation)
    else:
        u = g.reshape(N, 1, C_OUT)
        a = x.astype(np.float64).reshape(N, 1, -1)
    if case.bias:
        a = np.concatenate([a, np.ones(a.shape[:2] + (1,))], axis=2)

    # Independent check of the per-location vectors: sum_t u a^T = per-sample gradient.
    params = dict(first.named_parameters())

    def sample_loss(p, xi, yi):
        o = functional_call(first, p, (xi[None],))
        lg = head(torch.relu(o).flatten(1))
        return torch.nn.functional.cross_entropy(lg, yi[None], reduction="sum")

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, xt, yt)
    gw = per_sample["weight"].reshape(N, C_OUT, -1).detach().numpy()
    if case.bias:
        gw = np.concatenate([gw, per_sample["bias"].detach().numpy()[:, :, None]], axis=2)
    np.testing.assert_allclose(np.einsum("nto,nti->noi", u, a), gw, rtol=1e-10, atol=1e-12)

    d_in, d_out = a.shape[2], u.shape[2]
    v = np.einsum("nto,nti->ntoi", u, a).reshape(-1, d_out * d_in)  # vec(u a^T), row-major
    big_f = v.T @ v / N
    return a, u, big_f


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("approximation", ["tkfac_nor", "kfac"])
def test_capture_identities_against_exact_block(case: Case, approximation: str):
    rng = np.random.default_rng(7)
    dtype = ms.float32 if case.conv else ms.float64
    np_dtype = np.float32 if case.conv else np.float64
    x = rng.standard_normal((N, C_IN, HW, HW) if case.conv else (N, D_DENSE)).astype(np_dtype)
    y = rng.integers(0, CLASSES, N).astype(np.int32)

    net = _MsNet(case, dtype)
    feat = int(np.prod(net.first(Tensor(x[:1])).shape[1:]))
    net.head = nn.Dense(feat, CLASSES, dtype=dtype)
    first_w = net.first.weight.asnumpy().astype(np.float64)
    first_b = net.first.bias.asnumpy().astype(np.float64) if case.bias else None
    head_w = net.head.weight.asnumpy().astype(np.float64)
    head_b = net.head.bias.asnumpy().astype(np.float64)
    opt = tkfac_ms.TKFAC(
        net, 0.1, approximation=approximation, fisher="empirical", factor_dtype=dtype
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(_Loss(net), opt)
    # A first call on other data: the checked call is not the compiled graph's first (MindSpore
    # has had ops whose results go stale from the second call on).
    cell.layer_statistics(Tensor(2 * x + 1), Tensor((y + 1) % CLASSES))
    stats = cell.layer_statistics(Tensor(x), Tensor(y))["first"]

    a, u, big_f = _oracle(case, x, y, first_w, first_b, head_w, head_b)
    d_in, d_out, t_locs = a.shape[2], u.shape[2], a.shape[1]
    if approximation == "kfac":  # spec Sec. 6, from the oracle's validated vectors
        a_ref = np.einsum("nti,ntj->ij", a, a) / N
        g_ref = np.einsum("nto,ntp->op", u, u) / (N * t_locs)
        assert rel_err(stats["a"].asnumpy(), a_ref) < case.tol, "A"
        assert rel_err(stats["g"].asnumpy(), g_ref) < case.tol, "G"
        return
    f4 = big_f.reshape(d_out, d_in, d_out, d_in)
    delta = float(stats["delta"].asnumpy())
    phi, psi = stats["phi"].asnumpy(), stats["psi"].asnumpy()
    assert rel_err(delta, np.trace(big_f)) < case.tol, "delta = tr F"
    assert rel_err(delta * phi, np.einsum("oioj->ij", f4)) < case.tol, "delta Phi = Tr_out F"
    assert rel_err(delta * psi, np.einsum("oipi->op", f4)) < case.tol, "delta Psi = Tr_in F"
    assert abs(np.trace(phi) - 1) < case.tol and abs(np.trace(psi) - 1) < case.tol


# --------------------------------------------------------------------- im2col of the capture
def _im2col_general(x, kernel, stride, dilation, pads):
    """Explicit-loop im2col with ``(top, bottom, left, right)`` padding, ``(c, i, j)`` order."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, ho * wo, c * kh * kw), x.dtype)
    for oy in range(ho):
        for ox in range(wo):
            col = [
                xp[:, ci, oy * sh + i * dh, ox * sw + j * dw]
                for ci in range(c)
                for i in range(kh)
                for j in range(kw)
            ]
            out[:, oy * wo + ox, :] = np.stack(col, axis=1)
    return out


class _Patches(nn.Cell):
    def __init__(self, capture):
        super().__init__()
        self.capture = capture

    def construct(self, x):
        return self.capture.patches(x)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "pad_mode": "pad", "padding": 1},
        {"kernel_size": (3, 5), "stride": 2, "pad_mode": "pad", "padding": (1, 0, 2, 1)},
        {"kernel_size": 3, "stride": 2, "pad_mode": "same"},
        {"kernel_size": (2, 3), "dilation": 2, "pad_mode": "valid", "has_bias": True},
        {"kernel_size": 1, "stride": 2, "pad_mode": "valid"},
    ],
    ids=["k3_p1", "k3x5_s2_asym", "k3_s2_same", "k2x3_d2_valid_bias", "k1_s2"],
)
def test_capture_patches_equal_explicit_im2col(kwargs):
    """The capture's im2col (a one-hot grouped convolution in float32) against explicit loops."""
    layer = nn.Conv2d(3, 4, **kwargs)
    (wrapper,) = tkfac_ms.wrap_network(nn.SequentialCell([layer]))
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 8)).astype(np.float32)
    got = _Patches(wrapper.capture)(Tensor(x)).asnumpy()
    cap = wrapper.capture
    pads = cap.pads
    if kwargs["pad_mode"] == "same":  # MindSpore: out = ceil(in / stride), odd extra at the end
        pads = ()
        for size, k, s in zip(x.shape[2:], cap.kernel_size, cap.stride, strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += (total // 2, total - total // 2)
    want = _im2col_general(x, cap.kernel_size, cap.stride, cap.dilation, pads)
    if kwargs.get("has_bias"):
        want = np.concatenate([want, np.ones(want.shape[:2] + (1,), np.float32)], axis=2)
    assert got.shape == want.shape == (2, int(np.prod(layer(Tensor(x)).shape[2:])), got.shape[2])
    np.testing.assert_array_equal(got, want)
    # And the patches reproduce the layer's own output: y[n, :, t] = W a[n, t] (+ b).
    w = layer.weight.asnumpy().reshape(4, -1)
    if kwargs.get("has_bias"):
        w = np.concatenate([w, layer.bias.asnumpy()[:, None]], axis=1)
    y = layer(Tensor(x)).asnumpy().reshape(2, 4, -1).transpose(0, 2, 1)
    np.testing.assert_allclose(got @ w.T, y, rtol=1e-5, atol=1e-5)


class _Sums(nn.Cell):
    def __init__(self, capture):
        super().__init__()
        self.capture = capture

    def construct(self, x, dout):
        return self.capture.sums(x, dout)


@pytest.mark.parametrize("approximation", ["tkfac", "kfac"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "pad_mode": "pad", "padding": 1},
        {"kernel_size": (3, 5), "stride": 2, "pad_mode": "pad", "padding": (1, 0, 2, 1)},
        {"kernel_size": 3, "stride": 2, "pad_mode": "same", "has_bias": True},
        {"kernel_size": (2, 3), "dilation": 2, "pad_mode": "valid", "has_bias": True},
        {"kernel_size": 1, "stride": 2, "pad_mode": "valid"},
        {"kernel_size": (2, 4), "pad_mode": "same", "has_bias": True},
    ],
    ids=["k3_p1", "k3x5_s2_asym", "k3_s2_same_bias", "k2x3_d2_valid_bias", "k1_s2", "k2x4_same"],
)
@pytest.mark.parametrize("route", ["ms_ops", "cpu_kernel"])
def test_float32_conv_sums_equal_the_spec_on_explicit_patches(kwargs, approximation, route):
    """Both float32 convolution routes of the capture against the spec's sums in float64 on
    explicit-loop patches: MindSpore ops (its own layout, ``s`` by a convolution,
    ``B = sqrt(r) a``) and the fused C++ kernel for ``phi_sum`` (``csrc/conv_phi.cc``, the
    CPU route; ``k2x4_same`` has unequal "same" pads, 0 before and 1 after)."""
    layer = nn.Conv2d(3, 4, **kwargs)
    (wrapper,) = tkfac_ms.wrap_network(nn.SequentialCell([layer]))
    cap = wrapper.capture
    cap.sums_kind = "kfac" if approximation == "kfac" else "tkfac"
    assert cap.set_cpu_kernel(route == "cpu_kernel", min_locations=0) == (route == "cpu_kernel")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 9, 8)).astype(np.float32)
    out_shape = layer(Tensor(x)).shape
    dout = rng.standard_normal(out_shape).astype(np.float32)
    got = [t.asnumpy() for t in _Sums(cap)(Tensor(x), Tensor(dout))]
    a = _Patches(cap)(Tensor(x)).asnumpy().astype(np.float64)  # checked against loops above
    u = dout.astype(np.float64).reshape(5, 4, -1).transpose(0, 2, 1)
    a2, u2 = a.reshape(-1, a.shape[2]), u.reshape(-1, 4)
    if cap.sums_kind == "kfac":
        want = [0.0, a2.T @ a2, u2.T @ u2 / u.shape[1]]
    else:
        s, r = (a2 * a2).sum(1), (u2 * u2).sum(1)
        want = [(s * r).sum(), (a2 * r[:, None]).T @ a2, (u2 * s[:, None]).T @ u2]
    assert [g.shape for g in got] == [np.shape(w) for w in want]
    assert all(g.dtype == np.float32 for g in got)
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w).max() <= 2e-6 * max(np.abs(w).max(), 1.0)


def test_same_padding_conv_is_wrapped_and_float64_patches_agree():
    """pad_mode="same" (MindSpore's default) is preconditioned; the float64 route (ops.unfold,
    used where the statistics are float64) gives the same patches as the float32 one."""
    layer = nn.Conv2d(3, 4, (3, 2), stride=2, pad_mode="same")
    (wrapper,) = tkfac_ms.wrap_network(nn.SequentialCell([layer]))
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 7)).astype(np.float32)
    f32 = _Patches(wrapper.capture)(Tensor(x)).asnumpy()
    wrapper.capture.compute_dtype = ms.float64
    f64 = _Patches(wrapper.capture)(Tensor(x)).asnumpy()
    assert f64.dtype == np.float64
    np.testing.assert_array_equal(f32.astype(np.float64), f64)

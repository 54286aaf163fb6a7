"""The fused CPU kernel for a convolution's ``phi_sum`` (``tkfac_ms/csrc/conv_phi.cc``).

Its numbers are checked against explicit-loop patches in
``test_ms_stats.py::test_float32_conv_sums_equal_the_spec_on_explicit_patches`` (route
``cpu_kernel``). Here: when it is used, how it falls back, and that a whole training run with
it follows the MindSpore-op route.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

import tkfac_ms
from tkfac_ms import _cpu_kernels

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


@pytest.fixture
def fresh_library():
    """Forget the cached library path before and after the test (env changes take effect)."""
    _cpu_kernels.conv_phi_library.cache_clear()
    yield
    _cpu_kernels.conv_phi_library.cache_clear()


class _Net(nn.Cell):
    """3x3 stride-1 conv (the kernel's main case), a strided conv with bias, a Dense head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, pad_mode="pad", padding=1, has_bias=False)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, stride=2, pad_mode="same", has_bias=True)
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(5 * 4 * 4, 4)

    def construct(self, x):
        return self.fc(self.flatten(self.relu(self.conv2(self.relu(self.conv1(x))))))


def _net(seed: int = 3) -> nn.Cell:
    net = _Net()
    rng = np.random.default_rng(seed)
    for p in net.trainable_params():
        p.set_data(Tensor((0.3 * rng.standard_normal(p.shape)).astype(np.float32)))
    return net


def test_optimizer_uses_the_kernel_for_float32_convolutions_on_cpu():
    net = _net()
    opt = tkfac_ms.TKFAC(net, 0.01)
    kinds = {w.path: (w.kind, w.capture.cpu_phi is not None) for w in opt.layers}
    assert kinds == {"conv1": ("conv", True), "conv2": ("conv", True), "fc": ("dense", False)}
    # float64 factors keep the MindSpore-op path (the kernel is float32)
    net64 = _net()
    opt64 = tkfac_ms.TKFAC(net64, 0.01, factor_dtype=ms.float64)
    assert all(w.capture.cpu_phi is None for w in opt64.layers)


def test_disabled_by_environment(fresh_library, monkeypatch):
    monkeypatch.setenv("TKFAC_MS_CPU_KERNELS", "0")
    assert _cpu_kernels.conv_phi_library() is None
    opt = tkfac_ms.TKFAC(_net(), 0.01)
    assert all(w.capture.cpu_phi is None for w in opt.layers)


def test_missing_compiler_falls_back_with_a_warning(fresh_library, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TKFAC_MS_CACHE", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="MindSpore-op path"):
        assert _cpu_kernels.conv_phi_library() is None


def test_library_is_built_once_per_cache_folder(fresh_library, monkeypatch, tmp_path):
    monkeypatch.setenv("TKFAC_MS_CACHE", str(tmp_path))
    path = _cpu_kernels.conv_phi_library()
    assert path is not None and path.startswith(str(tmp_path))
    mtime = (tmp_path / path.rsplit("/", 1)[1]).stat().st_mtime_ns
    _cpu_kernels.conv_phi_library.cache_clear()
    assert _cpu_kernels.conv_phi_library() == path  # found, not rebuilt
    assert (tmp_path / path.rsplit("/", 1)[1]).stat().st_mtime_ns == mtime
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]  # no temporary file left behind


@pytest.mark.slow
@pytest.mark.parametrize("approximation", ["tkfac_nor", "kfac"])
def test_training_with_the_kernel_follows_the_ms_ops_route(approximation):
    """Four steps (factor and inverse updates every step) with the kernel and without it: the
    factor states and weights agree to float32 rounding (the two routes sum in different
    orders), and the kernel route really ran (its captures hold the Custom op)."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((6, 3, 8, 8)).astype(np.float32))
    y = Tensor(rng.integers(0, 4, 6).astype(np.int32))
    results = {}
    for route in ("cpu_kernel", "ms_ops"):
        net = _net()
        opt = tkfac_ms.TKFAC(
            net,
            0.05,
            approximation=approximation,
            fisher="empirical",
            damping=1e-2,
            factor_update_steps=1,
            inv_update_steps=1,
        )
        for w in opt.layers:
            w.capture.set_cpu_kernel(route == "cpu_kernel", min_locations=0)
        assert any(w.capture.cpu_phi is not None for w in opt.layers) == (route == "cpu_kernel")
        cell = tkfac_ms.TKFACTrainOneStepCell(
            nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")),
            opt,
        )
        for _ in range(4):
            cell(x, y)
        results[route] = {
            **{f"{w.path}.a": w.a_factor.asnumpy() for w in opt.layers},
            **{f"{w.path}.g": w.g_factor.asnumpy() for w in opt.layers},
            **{p.name: p.asnumpy() for p in net.trainable_params()},
        }
    for name, want in results["ms_ops"].items():
        got = results["cpu_kernel"][name]
        err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
        assert err < 1e-4, (name, err)


def _phi_sum_float64(x, r, kernel, stride, pad):
    """``sum_{n,t} r a a^T`` in float64 from a NumPy im2col (zero padding, (c, i, j) order)."""
    n, c, h, w = x.shape
    _, ho, wo = r.shape
    xp = np.zeros((n, c, h + 2 * pad + stride * ho, w + 2 * pad + stride * wo))
    xp[:, :, pad : pad + h, pad : pad + w] = x
    cols = [
        xp[:, ch, i : i + stride * ho : stride, j : j + stride * wo : stride][:, :ho, :wo]
        for ch in range(c)
        for i in range(kernel)
        for j in range(kernel)
    ]
    a = np.stack(cols, -1).reshape(n * ho * wo, -1)
    return (a * r.reshape(-1, 1)).T @ a


@pytest.mark.parametrize(
    "shape, kernel, stride, what",
    [
        ((3, 5, 6, 7), 3, 1, "one chunk: sums stored straight into the output"),
        ((2, 4, 32, 32), 3, 1, "two chunks, shared by the threads"),
        ((64, 3, 32, 16), 3, 1, "many chunks, split between the threads"),
        ((4, 130, 4, 4), 1, 1, "d = 130: ragged 4x4 tiles and 64-row output blocks"),
        ((8, 6, 33, 31), 3, 2, "stride 2, odd sizes, three chunks shared by the threads"),
    ],
)
def test_kernel_work_splits_against_float64(shape, kernel, stride, what):
    """Each way the kernel divides its work (by chunk count and size) against NumPy float64."""
    layer = nn.Conv2d(shape[1], 4, kernel, stride=stride, pad_mode="pad", padding=kernel // 2)
    (wrapper,) = tkfac_ms.wrap_network(nn.SequentialCell([layer]))
    cap = wrapper.capture
    assert cap.set_cpu_kernel(True, min_locations=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(layer(Tensor(x)).shape).astype(np.float32)

    @ms.jit
    def sums(x, g):
        return cap.sums(x, g)

    phi = sums(Tensor(x), Tensor(g))[1].asnumpy()
    r = (g.astype(np.float64) ** 2).sum(1)
    want = _phi_sum_float64(x.astype(np.float64), r, kernel, stride, kernel // 2)
    assert phi.shape == want.shape
    assert np.abs(phi - want).max() <= 2e-6 * np.abs(want).max(), what
    np.testing.assert_array_equal(phi, phi.T)


def test_small_batches_take_the_op_path():
    """Below ``min_locations`` output locations the op path runs (bit-identical to it), from
    there on the kernel (different rounding)."""
    layer = nn.Conv2d(3, 4, 3, pad_mode="pad", padding=1)
    (wrapper,) = tkfac_ms.wrap_network(nn.SequentialCell([layer]))
    cap = wrapper.capture
    rng = np.random.default_rng(2)
    x = Tensor(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))  # 256 locations
    g = Tensor(rng.standard_normal((4, 4, 8, 8)).astype(np.float32))

    def phi(enable, min_locations):
        cap.set_cpu_kernel(enable, min_locations=min_locations)

        @ms.jit
        def sums(x, g):
            return cap.sums(x, g)

        return sums(x, g)[1].asnumpy()

    ops_route = phi(False, 0)
    np.testing.assert_array_equal(phi(True, 257), ops_route)
    kernel = phi(True, 256)
    assert not np.array_equal(kernel, ops_route)
    assert np.abs(kernel - ops_route).max() <= 1e-6 * np.abs(ops_route).max()

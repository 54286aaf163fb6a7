"""Issue 14 item 6 (MindSpore twin): one object per approximation, layers configured once."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

import tkfac_ms
from tkfac_ms.approximations import KFAC, TKFACNew, TKFACNor, make_approximation
from tkfac_ms.config import TKFACConfig

ms.set_context(mode=ms.GRAPH_MODE)


def mlp() -> nn.Cell:
    return nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 3)])


@pytest.mark.parametrize(
    "name, cls, sums",
    [("tkfac_nor", TKFACNor, "tkfac"), ("tkfac_new", TKFACNew, "tkfac"), ("kfac", KFAC, "kfac")],
)
def test_the_optimizer_holds_one_approximation_object_and_the_layers_emit_its_sums(name, cls, sums):
    net = mlp()
    opt = tkfac_ms.TKFAC(net, 0.1, approximation=name)
    assert type(opt.approximation) is cls
    assert type(make_approximation(TKFACConfig(approximation=name.upper()))) is cls
    assert {w.capture.sums_kind for w in opt.layers} == {sums}


def test_a_second_optimizer_with_another_configuration_cannot_reconfigure_the_layers():
    net = mlp()
    tkfac_ms.TKFAC(net, 0.1, approximation="tkfac_nor")
    with pytest.raises(ValueError, match="already configured for another TKFAC optimizer"):
        tkfac_ms.TKFAC(net, 0.1, approximation="kfac")
    assert {w.capture.sums_kind for w in tkfac_ms.find_wrappers(net)} == {"tkfac"}
    tkfac_ms.TKFAC(net, 0.2, approximation="tkfac_new")  # the same sums: nothing changes


def test_kfac_inverse_damping_is_the_pi_formula():
    rng = np.random.default_rng(0)
    xa, xg = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    a, g = xa.T @ xa, xg.T @ xg
    lam = 0.01
    pi = np.sqrt((np.trace(a) / 3) / (np.trace(g) / 2))
    want_a, want_g = a + pi * np.sqrt(lam) * np.eye(3), g + np.sqrt(lam) / pi * np.eye(2)
    got_a, got_g = KFAC(TKFACConfig()).inverse_damping(Tensor(a), Tensor(g), Tensor(lam, ms.float64))
    np.testing.assert_allclose(got_a.asnumpy(), want_a, rtol=1e-12)
    np.testing.assert_allclose(got_g.asnumpy(), want_g, rtol=1e-12)
    same = TKFACNor(TKFACConfig()).inverse_damping(Tensor(a), Tensor(g), Tensor(lam, ms.float64))
    np.testing.assert_array_equal(same[0].asnumpy(), a)

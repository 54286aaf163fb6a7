"""reference_torch statistics against oracles built independently of the code under test.

Issue 2, tests 1-3:

1. the trace property ``delta = tr F`` and the two partial-trace identities of spec Sec. 2,
   with ``F`` built from per-sample gradients by ``torch.func`` (``vmap(grad(...))``), never
   from the hooks; for Conv2d, ``F`` is the Assumption-1 block built from per-location vectors
   that are derived independently (hand-written im2col loops, ``torch.func`` output gradients)
   and checked against the per-sample weight gradient first;
2. exactness for batch size 1 (Dense), and paper Theorem 4's bound (spec Sec. 6) on random
   batches, tight enough to catch ``delta`` off by a factor of 2;
3. a mean-reduced and a sum-reduced training loss give the same factors.

Layout convention of the oracles: a per-sample gradient matrix ``G[o, i]`` flattened row-major,
``g[o * d_in + i] = u_o a_i``, so ``g g^T = (u u^T) kron (a a^T)`` and the TKFAC block is
``delta * kron(Psi, Phi)`` in this order. ``F`` is kept as ``[d_out, d_in, d_out, d_in]``.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import pytest
import torch
from testing_utils import (
    assert_allclose,
    report_deviation,
    torch_single_thread,  # noqa: F401  (autouse fixture)
)
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

import reference_torch

DTYPE = torch.float64
TARGET = "2"  # every oracle model is Sequential(head..., target, tail...) with the target at [2]


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class StatsCase:
    """One layer under test inside a small classifier, and the batch fed to it."""

    name: str
    kind: str  # "linear" or "conv"
    bias: bool
    batch: int = 4
    fisher: str = "empirical"
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    kernel: int = 3
    seed: int = 0


STATS_CASES = [
    StatsCase("dense_bias", "linear", bias=True),
    StatsCase("dense_nobias", "linear", bias=False),
    StatsCase("dense_bias_true_fisher", "linear", bias=True, fisher="true", seed=1),
    StatsCase("conv_s2_p1_d2_bias", "conv", bias=True, stride=2, padding=1, dilation=2),
    StatsCase("conv_s1_p1_bias_true_fisher", "conv", bias=True, padding=1, fisher="true", seed=2),
    StatsCase("conv_s2_nobias_k2", "conv", bias=False, stride=2, kernel=2, seed=3),
]

IN_SHAPE = {"linear": (5,), "conv": (2, 7, 7)}
NUM_CLASSES = 3


def make_model(case: StatsCase) -> nn.Sequential:
    """``Sequential(head[0:2], target[2], tail[3:])`` in float64, seeded."""
    torch.manual_seed(case.seed)
    if case.kind == "linear":
        model = nn.Sequential(
            nn.Linear(5, 6),
            nn.Tanh(),
            nn.Linear(6, 4, bias=case.bias),
            nn.Tanh(),
            nn.Linear(4, NUM_CLASSES),
        )
    else:
        conv = nn.Conv2d(
            3,
            4,
            case.kernel,
            stride=case.stride,
            padding=case.padding,
            dilation=case.dilation,
            bias=case.bias,
        )
        h_out = (7 + 2 * case.padding - case.dilation * (case.kernel - 1) - 1) // case.stride + 1
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.Tanh(),
            conv,
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(4 * h_out * h_out, NUM_CLASSES),
        )
    return model.to(DTYPE)


def make_batch(case: StatsCase, model: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """``x``, true labels ``y`` and model-sampled labels ``y~`` (spec Sec. 1)."""
    gen = torch.Generator().manual_seed(100 + case.seed)
    x = torch.randn(case.batch, *IN_SHAPE[case.kind], dtype=DTYPE, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (case.batch,), generator=gen)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    sampled = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return x, y, sampled


# ----------------------------------------------------------------------------- oracle


def im2col_loops(z: Tensor, case: StatsCase) -> Tensor:
    """Patches ``[N, T, C*k*k (+1)]`` by explicit loops over output pixels, in (c, i, j) order."""
    n, c, h, w = z.shape
    p, k, s, d = case.padding, case.kernel, case.stride, case.dilation
    zp = torch.zeros(n, c, h + 2 * p, w + 2 * p, dtype=z.dtype)
    zp[:, :, p : p + h, p : p + w] = z
    h_out = (h + 2 * p - d * (k - 1) - 1) // s + 1
    w_out = (w + 2 * p - d * (k - 1) - 1) // s + 1
    locations = []
    for oh, ow in itertools.product(range(h_out), range(w_out)):
        entries = [
            zp[:, ch, oh * s + i * d, ow * s + j * d]
            for ch, i, j in itertools.product(range(c), range(k), range(k))
        ]
        if case.bias:
            entries.append(torch.ones(n, dtype=z.dtype))
        locations.append(torch.stack(entries, dim=1))
    return torch.stack(locations, dim=1)


def per_sample_grad_matrices(model: nn.Sequential, x: Tensor, labels: Tensor) -> Tensor:
    """``[N, d_out, d_in]``: gradient of each sample's own loss w.r.t. the target's (W | b)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_n(p: dict[str, Tensor], xn: Tensor, yn: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xn[None],)), yn[None])

    grads = vmap(grad(loss_n), in_dims=(None, 0, 0))(params, x, labels)
    gw = grads[f"{TARGET}.weight"]
    mats = gw.reshape(gw.shape[0], gw.shape[1], -1)
    if f"{TARGET}.bias" in grads:
        mats = torch.cat([mats, grads[f"{TARGET}.bias"][:, :, None]], dim=2)
    return mats


def per_location_vectors(
    model: nn.Sequential, x: Tensor, labels: Tensor, case: StatsCase
) -> tuple[Tensor, Tensor]:
    """Independent ``a`` ``[N, T, d_in]`` and ``u`` ``[N, T, d_out]`` of the target layer."""
    head, target, tail = model[:2], model[2], model[3:]
    with torch.no_grad():
        z = head(x)
        out = target(z)
    if case.kind == "linear":
        a = z[:, None, :]
        if case.bias:
            a = torch.cat([a, torch.ones(a.shape[0], 1, 1, dtype=DTYPE)], dim=2)
    else:
        a = im2col_loops(z, case)

    def tail_loss(out_n: Tensor, yn: Tensor) -> Tensor:
        return F.cross_entropy(tail(out_n[None]), yn[None])

    du = vmap(grad(tail_loss))(out, labels)  # d l_n / d out_n, per sample
    if case.kind == "linear":
        return a, du[:, None, :]
    return a, du.reshape(du.shape[0], du.shape[1], -1).transpose(1, 2)


@dataclass
class Oracle:
    """The exact (Dense) or Assumption-1 (Conv2d) block, as ``[d_out, d_in, d_out, d_in]``."""

    fisher: Tensor
    a: Tensor
    u: Tensor

    @property
    def trace(self) -> Tensor:
        return torch.einsum("oioi->", self.fisher)

    @property
    def partial_trace_out(self) -> Tensor:
        """Trace over the output space: ``[d_in, d_in]``, equal to ``delta * Phi``."""
        return torch.einsum("oioj->ij", self.fisher)

    @property
    def partial_trace_in(self) -> Tensor:
        """Trace over the input space: ``[d_out, d_out]``, equal to ``delta * Psi``."""
        return torch.einsum("oipi->op", self.fisher)


def build_oracle(case: StatsCase, model: nn.Sequential, x: Tensor, labels: Tensor) -> Oracle:
    """``F`` of the target layer for the per-sample losses ``l_n = CE(f(x_n), labels_n)``."""
    model = copy.deepcopy(model)  # a hook-free copy
    grads = per_sample_grad_matrices(model, x, labels)  # [N, d_out, d_in]
    a, u = per_location_vectors(model, x, labels, case)
    # The per-location vectors must rebuild each sample's gradient: sum_t u a^T = G_n.
    assert_allclose(torch.einsum("nto,nti->noi", u, a), grads, name="sum_t u a^T vs grad_n")
    n = x.shape[0]
    if case.kind == "linear":  # the exact Fisher block from the per-sample gradients
        fisher = torch.einsum("noi,npj->oipj", grads, grads) / n
    else:  # Assumption 1: F = (1/N) sum_n sum_t (a a^T) kron (u u^T)
        fisher = torch.einsum("nto,nti,ntp,ntj->oipj", u, a, u, a) / n
    return Oracle(fisher=fisher, a=a, u=u)


def run_one_step(
    case: StatsCase,
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    sampled: Tensor,
    approximation: str = "tkfac_nor",
    reduction: str = "mean",
) -> reference_torch.TKFAC:
    """One optimizer step with the code under test (capture hooks + optimizer + math)."""
    opt = reference_torch.TKFAC(
        model,
        lr=1e-3,
        approximation=approximation,
        fisher=case.fisher,
        loss_reduction=reduction,
        factor_update_steps=1,
    )
    opt.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y, reduction=reduction)
    opt.sample_fisher_backward(logits, sampled_labels=sampled)
    loss.backward()
    opt.step()
    return opt


@pytest.fixture(params=STATS_CASES, ids=lambda c: c.name)
def stats_case(request: pytest.FixtureRequest) -> StatsCase:
    return request.param


# ----------------------------------------------------------------------------- test 1


def test_trace_and_partial_traces_match_fisher(stats_case: StatsCase) -> None:
    case = stats_case
    model = make_model(case)
    x, y, sampled = make_batch(case, model)
    labels = sampled if case.fisher == "true" else y
    oracle = build_oracle(case, model, x, labels)

    st = run_one_step(case, model, x, y, sampled).layer_state(TARGET)
    assert st.delta is not None and st.phi is not None and st.psi is not None
    checks = [
        assert_allclose(st.delta, oracle.trace, name="delta vs tr F"),
        assert_allclose(st.delta * st.phi, oracle.partial_trace_out, name="delta*Phi vs Tr_out F"),
        assert_allclose(st.delta * st.psi, oracle.partial_trace_in, name="delta*Psi vs Tr_in F"),
        assert_allclose(torch.trace(st.phi), 1.0, name="tr Phi"),
        assert_allclose(torch.trace(st.psi), 1.0, name="tr Psi"),
    ]
    for dev in checks:
        report_deviation(f"test1[{case.name}]", dev)


def test_kfac_factors_match_independent_vectors(stats_case: StatsCase) -> None:
    """Spec Sec. 6: ``A = (1/N) sum a a^T``, ``G = (1/(N T)) sum u u^T`` from oracle vectors."""
    case = stats_case
    model = make_model(case)
    x, y, sampled = make_batch(case, model)
    labels = sampled if case.fisher == "true" else y
    oracle = build_oracle(case, model, x, labels)
    n, t = oracle.a.shape[:2]

    st = run_one_step(case, model, x, y, sampled, approximation="kfac").layer_state(TARGET)
    assert_allclose(st.a_batch, torch.einsum("nti,ntj->ij", oracle.a, oracle.a) / n, name="A")
    assert_allclose(st.g_batch, torch.einsum("nto,ntp->op", oracle.u, oracle.u) / (n * t), name="G")


# ----------------------------------------------------------------------------- test 2


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_batch_size_one_dense_is_exact(bias: bool) -> None:
    case = StatsCase("dense_n1", "linear", bias=bias, batch=1, seed=4)
    model = make_model(case)
    x, y, sampled = make_batch(case, model)
    oracle = build_oracle(case, model, x, y)
    st = run_one_step(case, model, x, y, sampled).layer_state(TARGET)
    assert st.delta is not None and st.phi is not None and st.psi is not None

    d_out, d_in = st.psi.shape[0], st.phi.shape[0]
    tkfac_block = (st.delta * torch.kron(st.psi, st.phi)).reshape(d_out, d_in, d_out, d_in)
    dev = assert_allclose(tkfac_block, oracle.fisher, name="delta Phi kron Psi vs F (N=1)")
    report_deviation(f"test2[batch_size_one_{'bias' if bias else 'nobias'}]", dev)


def theorem4_terms(a: Tensor, u: Tensor, delta_scale: float = 1.0) -> tuple[float, float]:
    """``(||F - delta_scale * delta Phi kron Psi||_F, Theorem 4 bound)`` for Dense vectors.

    ``F`` and the bound come from ``a`` ``[N, d_in]``, ``u`` ``[N, d_out]`` by their definitions;
    only ``(delta, Phi, Psi)`` come from the code under test.
    """
    n = a.shape[0]
    fisher = torch.einsum("ni,no,nj,np->iojp", a, u, a, u).reshape(a.shape[1] * u.shape[1], -1)
    fisher = fisher / n  # (1/N) sum (a a^T) kron (u u^T), column-major vec order
    delta, phi, psi = reference_torch.tkfac_stats(a[:, None, :], u[:, None, :])
    error = torch.linalg.matrix_norm(fisher - delta_scale * delta * torch.kron(phi, psi))
    tr_l, tr_g = (a * a).sum(1), (u * u).sum(1)  # tr(Lambda_i), tr(Gamma_i)
    pair_max = max(
        float(torch.sqrt(tr_l[i] * tr_l[j] * tr_g[i] * tr_g[j]))
        for i in range(n)
        for j in range(i + 1, n)
    )
    return float(error), 2 * (n - 1) / n * pair_max


def random_vectors(n: int, seed: int, dominant: float = 1.0) -> tuple[Tensor, Tensor]:
    """Random Dense ``a`` ``[n, 6]`` and ``u`` ``[n, 4]``; sample 0 scaled by ``dominant``."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 6, dtype=DTYPE, generator=gen)
    u = torch.randn(n, 4, dtype=DTYPE, generator=gen)
    a[0] *= dominant
    u[0] *= dominant
    return a, u


@pytest.mark.parametrize("n", [2, 3, 8, 32])
def test_theorem4_bound_holds_on_random_batches(n: int) -> None:
    ratios = []
    for seed in range(20):
        error, bound = theorem4_terms(*random_vectors(n, seed))
        assert error <= bound, f"N={n} seed={seed}: ||F - F_TKFAC|| {error:.6g} > {bound:.6g}"
        ratios.append(error / bound)
    print(f"DEVIATION test2[theorem4_N{n}]: max error/bound={max(ratios):.3f}")


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("wrong_scale", [2.0, 0.5], ids=["delta_x2", "delta_x0.5"])
def test_theorem4_bound_catches_wrong_delta(n: int, wrong_scale: float) -> None:
    """With one dominant sample the bound is tight enough to reject ``delta`` off by 2x.

    (On batches whose samples have similar norms the bound is too loose for that: there it is
    met even by ``2 * delta``, see docs/math.md.)
    """
    for seed in range(5):
        a, u = random_vectors(n, seed, dominant=30.0)
        error, bound = theorem4_terms(a, u)
        assert error <= bound, f"N={n} seed={seed}: {error:.6g} > {bound:.6g}"
        wrong_error, _ = theorem4_terms(a, u, delta_scale=wrong_scale)
        assert wrong_error > bound, (
            f"N={n} seed={seed}: delta x{wrong_scale} still meets the "
            f"bound ({wrong_error:.6g} <= {bound:.6g})"
        )


# ----------------------------------------------------------------------------- test 3


@pytest.mark.parametrize("approximation", ["tkfac_nor", "tkfac_new", "kfac"])
def test_mean_and_sum_loss_give_the_same_factors(approximation: str) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 4),
    ).to(DTYPE)
    x = torch.randn(6, 2, 5, 5, dtype=DTYPE)
    y = torch.randint(0, 4, (6,))
    states = {}
    for reduction in ("mean", "sum"):
        net = copy.deepcopy(model)
        opt = reference_torch.TKFAC(
            net,
            lr=0.1,
            approximation=approximation,
            fisher="empirical",
            loss_reduction=reduction,
            nu=1e-2,
        )
        opt.zero_grad()
        F.cross_entropy(net(x), y, reduction=reduction).backward()
        opt.step()
        states[reduction] = {name: opt.layer_state(name) for name in opt.layer_names}
    fields = ("a_batch", "g_batch", "a_factor", "g_factor", "a_inv", "g_inv")
    if approximation != "kfac":
        fields = ("delta", "phi", "psi") + fields
    for name, st_mean in states["mean"].items():
        st_sum = states["sum"][name]
        for fld in fields:
            assert_allclose(getattr(st_sum, fld), getattr(st_mean, fld), name=f"{name}.{fld}")

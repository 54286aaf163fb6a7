"""Approximation quality of TKFAC against KFAC on the exact Fisher blocks (paper Fig. 1, Fig. 2).

An MLP 64-20-20-20-10 (ReLU, biases) is trained on scikit-learn's digits with the float64 oracle
``reference_torch.TKFAC(approximation="tkfac_nor", fisher="true")``. Before every step, on that
step's batch and weights, and for every layer:

* labels ``y~_n ~ softmax(logits_n)`` are drawn (the true Fisher of the paper's Eq. 3) and the
  per-sample gradients ``g_n = dl_n/dW`` (bias as the last column, spec Sec. 1) are computed
  with ``torch.func`` (``vmap(grad(...))``);
* the exact block is ``F = (1/N) sum_n vec(g_n) vec(g_n)^T`` (row-major ``vec``, so
  ``vec(u a^T) = u kron a`` and ``F = (1/N) sum_n (u u^T) kron (a a^T)``; the issue's
  ``(a a^T) kron (u u^T)`` is the column-major spelling of the same matrix, with the same norms);
* from the same per-sample ``a`` (layer input, trailing 1) and ``u`` (the per-sample bias
  gradient), ``F_TKFAC = delta Psi kron Phi`` (spec Sec. 2) and ``F_KFAC = G kron A`` (Sec. 6);
* ``||F - F_TKFAC||_F``, ``||F - F_KFAC||_F`` and Theorem 4's bound
  ``2(N-1)/N max_{i<j} sqrt(tr L_i tr L_j tr G_i tr G_j)`` (``tr L_i tr G_i = |a_i|^2 |u_i|^2``)
  with its KFAC counterpart ``2(N-1)/N max_{i<j} (tr L_i + tr L_j)(tr G_i + tr G_j) / 4``.

On the first measured step the script also checks that ``g_n = u_n a_n^T`` and that ``F`` equals
``(1/N) sum_n (u u^T) kron (a a^T)`` built entry by entry, and that ``tr F = delta``.

Usage::

    python bench/approx_quality.py [--epochs 20] [--batch 100] [--lr 0.003] [--damping 0.01]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import reference_torch  # noqa: E402
from bench._common import IMG, RESULTS, digits_flat, finish, plt, provenance, write_json  # noqa: E402
from reference_torch.models import MLP  # noqa: E402


def layer_vectors(model: nn.Module, x: torch.Tensor, y_tilde: torch.Tensor):
    """Per layer ``(name, a [N, d_in], u [N, d_out], g [N, d_out, d_in])`` for the loss ``l_n``.

    ``l_n = -log p(y~_n | x_n)``. ``a`` is the layer input with a trailing 1, ``u`` the
    per-sample bias gradient (= ``dl_n / ds_n``) and ``g`` the per-sample weight-and-bias
    gradient, all from ``torch.func``.
    """
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: inputs.__setitem__(n, inp[0].detach()))
        for n, m in linears
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None], reduction="sum")

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y_tilde)
    out = []
    for name, _ in linears:
        h = inputs[name]
        a = torch.cat([h, h.new_ones(h.shape[0], 1)], dim=1)
        u = grads[f"{name}.bias"]
        g = torch.cat([grads[f"{name}.weight"], u[:, :, None]], dim=2)
        out.append((name, a, u, g))
    return out


def blocks(a: torch.Tensor, u: torch.Tensor, g: torch.Tensor):
    """Exact ``F``, ``F_TKFAC``, ``F_KFAC`` (row-major vec) and the TKFAC ``delta``."""
    n = a.shape[0]
    flat = g.reshape(n, -1)
    exact = flat.T @ flat / n
    delta, phi, psi = reference_torch.tkfac_stats(a[:, None, :], u[:, None, :])
    fac_a, fac_g = reference_torch.kfac_stats(a[:, None, :], u[:, None, :])
    return exact, delta * torch.kron(psi, phi), torch.kron(fac_g, fac_a), delta


def theorem4_bounds(a: torch.Tensor, u: torch.Tensor) -> tuple[float, float]:
    """Theorem 4's TKFAC bound and the paper's KFAC counterpart on one batch."""
    n = a.shape[0]
    s, r = (a * a).sum(1), (u * u).sum(1)  # tr L_i, tr G_i
    t = s * r
    top = torch.topk(t, 2).values
    tk = 2 * (n - 1) / n * float(torch.sqrt(top[0] * top[1]))
    pair = (s[:, None] + s[None, :]) * (r[:, None] + r[None, :]) / 4
    iu = torch.triu_indices(n, n, offset=1)
    kf = 2 * (n - 1) / n * float(pair[iu[0], iu[1]].max())
    return tk, kf


def check_layout(a: torch.Tensor, u: torch.Tensor, g: torch.Tensor, exact: torch.Tensor, delta):
    """The kron ordering and the trace identity, verified numerically (returns the worst errors)."""
    outer = u[:, :, None] * a[:, None, :]
    g_err = float((g - outer).abs().max() / g.abs().max())
    n = a.shape[0]
    brute = sum(torch.kron(torch.outer(u[i], u[i]), torch.outer(a[i], a[i])) for i in range(n)) / n
    f_err = float((exact - brute).abs().max() / exact.abs().max())
    tr_err = float(abs(torch.trace(exact) - delta) / delta)
    return {"g_vs_u_aT": g_err, "F_vs_kron_sum": f_err, "trace_F_vs_delta": tr_err}


def heatmaps(exact: np.ndarray, approx: np.ndarray, path, title: str) -> None:
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(18, 6.2), constrained_layout=True)
    rel = np.linalg.norm(exact - approx) / np.linalg.norm(exact)
    vmax = float(np.quantile(np.abs(exact), 0.995))
    panels = [
        ("|F| (exact)", np.abs(exact)),
        ("|F_TKFAC|", np.abs(approx)),
        (f"|F - F_TKFAC|  (||F - F_TKFAC||_F / ||F||_F = {rel:.2f})", np.abs(exact - approx)),
    ]
    im = None
    for ax, (name, m) in zip(axes, panels, strict=True):
        im = ax.imshow(m, cmap="gray", vmin=0, vmax=vmax, interpolation="antialiased")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="absolute value (white = large)")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--damping", type=float, default=0.01)
    parser.add_argument("--update-steps", type=int, default=10, help="T_FIM = T_INV")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (smoke tests)")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the JSON result")
    parser.add_argument("--img", default=str(IMG), help="folder of the figures")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    info = provenance(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    xtr, ytr = (torch.from_numpy(v) for v in digits_flat(True))
    xte, yte = (torch.from_numpy(v) for v in digits_flat(False))
    model = MLP(in_dim=64, hidden=(20, 20, 20), num_classes=10).double()
    opt = reference_torch.TKFAC(
        model,
        lr=args.lr,
        damping=args.damping,
        approximation="tkfac_nor",
        fisher="true",
        factor_update_steps=args.update_steps,
        inv_update_steps=args.update_steps,
    )
    n = args.batch
    steps_per_epoch = len(ytr) // n
    rows: list[dict] = []
    checks: dict = {}
    epochs: list[dict] = []
    first_layer = None
    step = 0
    for epoch in range(args.epochs):
        perm = torch.from_numpy(rng.permutation(len(ytr)))
        losses = []
        for b in range(steps_per_epoch):
            idx = perm[b * n : (b + 1) * n]
            x, y = xtr[idx], ytr[idx]
            with torch.no_grad():
                probs = torch.softmax(model(x), dim=1)
            y_tilde = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            row = {
                "step": step,
                "tkfac": [],
                "kfac": [],
                "bound_tkfac": [],
                "bound_kfac": [],
                "norm_F": [],
            }
            for li, (name, a, u, g) in enumerate(layer_vectors(model, x, y_tilde)):
                exact, f_tk, f_kf, delta = blocks(a, u, g)
                if not checks and li == 0:
                    checks = check_layout(a, u, g, exact, delta)
                row["tkfac"].append(float(torch.linalg.norm(exact - f_tk)))
                row["kfac"].append(float(torch.linalg.norm(exact - f_kf)))
                row["norm_F"].append(float(torch.linalg.norm(exact)))
                b_tk, b_kf = theorem4_bounds(a, u)
                row["bound_tkfac"].append(b_tk)
                row["bound_kfac"].append(b_kf)
                if li == 0:
                    first_layer = (name, exact.numpy(), f_tk.numpy(), step)
            rows.append(row)
            # the training step itself (paper Algorithm 1 with the oracle)
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.sample_fisher_backward(logits, generator=gen)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if args.max_steps is not None and step >= args.max_steps:
                break
        with torch.no_grad():
            acc = float((model(xte).argmax(1) == yte).double().mean())
        epochs.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_acc": acc})
        print(f"epoch {epoch + 1}: train loss {np.mean(losses):.4f}, test acc {acc:.4f}")
        if args.max_steps is not None and step >= args.max_steps:
            break

    tk = np.array([r["tkfac"] for r in rows])  # [steps, layers]
    kf = np.array([r["kfac"] for r in rows])
    btk = np.array([r["bound_tkfac"] for r in rows])
    bkf = np.array([r["bound_kfac"] for r in rows])
    norm_f = np.array([r["norm_F"] for r in rows])
    sum_tk, sum_kf = tk.sum(1), kf.sum(1)
    layer_names = [f"layer {i + 1}" for i in range(tk.shape[1])]
    summary = {
        "iterations": len(rows),
        "fraction_tkfac_smaller_summed": float(np.mean(sum_tk < sum_kf)),
        "fraction_tkfac_smaller_per_layer": dict(
            zip(layer_names, np.mean(tk < kf, axis=0).tolist(), strict=True)
        ),
        "median_ratio_tkfac_over_kfac_summed": float(np.median(sum_tk / sum_kf)),
        "median_relative_error_per_layer": {
            "tkfac": dict(zip(layer_names, np.median(tk / norm_f, axis=0).tolist(), strict=True)),
            "kfac": dict(zip(layer_names, np.median(kf / norm_f, axis=0).tolist(), strict=True)),
        },
        "theorem4_holds_every_iteration": bool(np.all(tk <= btk * (1 + 1e-12))),
        "theorem4_max_error_over_bound": float(np.max(tk / btk)),
        "kfac_bound_holds_every_iteration": bool(np.all(kf <= bkf * (1 + 1e-12))),
        "kfac_max_error_over_bound": float(np.max(kf / bkf)),
        "layout_checks_relative_error": checks,
        "final_test_acc": epochs[-1]["test_acc"],
    }
    for k, v in summary.items():
        print(f"{k}: {v}")

    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(17, 4.4), constrained_layout=True)
    it = np.arange(len(rows))
    win = max(1, steps_per_epoch)

    def smooth(v: np.ndarray) -> np.ndarray:
        """Moving average over one epoch (``win`` iterations), for readability."""
        return np.convolve(v, np.ones(win) / win, mode="valid") if len(v) >= win else v

    its = it[win - 1 :] if len(it) >= win else it
    axes[0].plot(it, sum_kf, color="tab:blue", lw=0.6, alpha=0.35)
    axes[0].plot(it, sum_tk, color="tab:red", lw=0.6, alpha=0.35)
    axes[0].plot(its, smooth(sum_kf), color="tab:blue", lw=2, label="KFAC: sum of ||F - F_KFAC||_F")
    axes[0].plot(
        its, smooth(sum_tk), color="tab:red", lw=2, label="TKFAC: sum of ||F - F_TKFAC||_F"
    )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("approximation error, summed over the 4 layers")
    axes[0].set_title(
        f"(a) Fig. 2: TKFAC smaller in {100 * summary['fraction_tkfac_smaller_summed']:.0f}%"
        " of iterations (thick: 1-epoch average)"
    )
    axes[0].legend(fontsize=8)
    for li in range(tk.shape[1]):
        axes[1].plot(its, smooth(tk[:, li] / kf[:, li]), lw=1.5, label=layer_names[li])
    axes[1].axhline(1.0, color="k", ls="--", lw=1)
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("||F - F_TKFAC||_F / ||F - F_KFAC||_F")
    axes[1].set_title("(b) per layer, 1-epoch moving average: below 1 = TKFAC closer")
    axes[1].legend(fontsize=8)
    for li in range(tk.shape[1]):
        axes[2].plot(it, tk[:, li] / btk[:, li], lw=1, label=layer_names[li])
    axes[2].axhline(1.0, color="k", ls="--", lw=1, label="Theorem 4 bound")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("||F - F_TKFAC||_F / Theorem 4 bound")
    axes[2].set_title("(c) Theorem 4: error / bound (must stay below 1)")
    axes[2].legend(fontsize=8)
    fig.suptitle(
        "MLP 64-20-20-20-10 on digits, trained with TKFAC_nor (float64 oracle), "
        f"batch {n}, exact true-Fisher blocks"
    )
    fig2 = img / "approx_fig2_error_curves.png"
    fig.savefig(fig2, dpi=110)
    pyplot.close(fig)
    name, exact, approx, at = first_layer
    summary["fig1_first_layer_relative_error"] = float(
        np.linalg.norm(exact - approx) / np.linalg.norm(exact)
    )
    summary["fig1_iteration"] = int(at)
    fig1 = img / "approx_fig1_heatmaps.png"
    heatmaps(
        exact,
        approx,
        fig1,
        f"Fig. 1 analogue: first layer (64+1 inputs -> 20 units, a {exact.shape[0]}x"
        f"{exact.shape[0]} block) at iteration {at}; shared gray scale clipped at the 99.5th "
        "percentile of |F|",
    )
    result = {
        "experiment": "approx_quality",
        **info,
        "args": vars(args),
        "summary": summary,
        "epochs": epochs,
        "per_iteration": {
            "tkfac": tk,
            "kfac": kf,
            "bound_tkfac": btk,
            "bound_kfac": bkf,
            "norm_F": norm_f,
        },
        "figures": [str(fig2), str(fig1)],
    }
    finish(result, t_start)
    path = write_json(Path(args.results) / "approx_quality.json", result)
    print(f"wrote {path}, {fig2}, {fig1} in {result['runtime_s']} s")
    return result


if __name__ == "__main__":
    main()

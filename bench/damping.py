"""Damping diagnostics of ResNet-20 under TKFAC_nor and TKFAC_new (paper Fig. 3).

Trains ResNet-20 on digits with ``mindspore.train.Model`` and the product callback
``tkfac_ms.DampingDiagnostics``, which logs after every factor update (every ``T_FIM`` steps),
per layer: ``delta`` and the ratios of the damping to the mean eigenvalue of the curvature part,

* TKFAC_nor: ``ratio_phi = sqrt(lambda) / (tr(sqrt(delta) Phi) / d_in)`` and ``ratio_psi``
  with ``Psi``, ``d_out`` (paper Fig. 3 (a), (b));
* TKFAC_new: both ratios are ``sqrt(delta~)`` (damping ``delta~ / d`` against
  ``tr(sqrt(delta~) Phi) / d``), ``delta~ = max(nu, delta)`` (conv) or ``max(nu, beta delta)``.

A ratio above 1 means the damping dominates that factor. The third column plots ``delta``
itself (Fig. 3 (c)).

Usage::

    python bench/damping.py [--epochs 5] [--image-size 32] [--batch 64] [--update-steps 5]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import IMG, RESULTS, finish, plt, provenance, write_json  # noqa: E402


def pick_layers(paths: list[str], kinds: list[str], n_conv: int = 4) -> list[str]:
    """``n_conv`` conv layers spread over the depth (first and last included) and every dense."""
    conv = [p for p, k in zip(paths, kinds, strict=True) if k == "conv"]
    dense = [p for p, k in zip(paths, kinds, strict=True) if k != "conv"]
    if len(conv) <= n_conv:
        return conv + dense
    idx = np.linspace(0, len(conv) - 1, n_conv).round().astype(int)
    return [conv[i] for i in idx] + dense


def run(args: argparse.Namespace, approximation: str, csv_path: Path) -> dict:
    from mindspore import Tensor, nn
    from mindspore.train import Model

    import tkfac_ms
    from bench import _ms
    from bench._common import digits_images
    from model_zoo.src.dataset import create_dataset
    from model_zoo.src.models import create_model

    _ms.setup(args.seed)
    kwargs = {"image_size": args.image_size} if args.model == "small_cnn" else {}
    net = create_model(args.model, num_classes=10, **kwargs)
    lr = args.lr_new if approximation == "tkfac_new" else args.lr_nor
    opt = tkfac_ms.TKFAC(
        net,
        lr,
        damping=args.damping,
        nu=args.nu,
        approximation=approximation,
        factor_update_steps=args.update_steps,
        inv_update_steps=args.update_steps,
        fisher="true",
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    data = create_dataset(
        "digits", batch_size=args.batch, train=True, image_size=args.image_size, seed=args.seed
    )
    if args.max_steps is not None:
        data = data.take(args.max_steps)
    if csv_path.exists():
        csv_path.unlink()
    diag = tkfac_ms.DampingDiagnostics(opt, csv_path)
    t0 = time.perf_counter()
    Model(cell).train(args.epochs, data, callbacks=[diag], dataset_sink_mode=False)
    seconds = time.perf_counter() - t0
    _, _, xte, yte = digits_images(args.image_size)
    net.set_train(False)
    acc = float((net(Tensor(xte)).asnumpy().argmax(1) == yte).mean())
    print(f"{approximation}: {len(diag.rows)} rows, test acc {acc:.4f}, {seconds:.0f} s")
    return {
        "approximation": approximation,
        "lr": lr,
        "test_acc": acc,
        "train_seconds_with_compile": seconds,
        "csv": str(csv_path),
        "layers": [(w.path, w.kind, w.d_in, w.d_out) for w in opt.layers],
    }


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def series(rows: list[dict], layer: str, field: str) -> tuple[np.ndarray, np.ndarray]:
    sel = [r for r in rows if r["layer"] == layer]
    return np.array([int(r["step"]) for r in sel]), np.array([float(r[field]) for r in sel])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--update-steps", type=int, default=5, help="T_FIM = T_INV")
    parser.add_argument("--damping", type=float, default=3e-2, help="lambda of TKFAC_nor")
    parser.add_argument("--nu", type=float, default=1e-3, help="trace floor of TKFAC_new")
    parser.add_argument("--lr-nor", type=float, default=0.03)
    parser.add_argument("--lr-new", type=float, default=0.1)
    parser.add_argument("--approximations", default="tkfac_nor,tkfac_new")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch (smoke)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--img", default=str(IMG))
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    info = provenance(argv)
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    approximations = [a for a in args.approximations.split(",") if a]
    runs = [run(args, a, results_dir / f"damping_{args.model}_{a}.csv") for a in approximations]

    first = runs[0]["layers"]
    chosen = pick_layers([p for p, *_ in first], [k for _, k, *_ in first])
    summary = {}
    pyplot = plt()
    fig, axes = pyplot.subplots(
        len(runs), 3, figsize=(15, 4.0 * len(runs)), squeeze=False, constrained_layout=True
    )
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, res in enumerate(runs):
        rows = read_rows(Path(res["csv"]))
        approx = res["approximation"]
        last_step = max(int(r["step"]) for r in rows)
        final = [r for r in rows if int(r["step"]) == last_step]
        conv_final = [r for r in final if r["kind"] == "conv"]
        summary[approx] = {
            "rows": len(rows),
            "last_step": last_step,
            "test_acc": res["test_acc"],
            "conv_layers_damping_dominates_phi": sum(float(r["ratio_phi"]) > 1 for r in conv_final),
            "conv_layers_damping_dominates_psi": sum(float(r["ratio_psi"]) > 1 for r in conv_final),
            "conv_layers": len(conv_final),
            "chosen_layers": {
                layer: {
                    field: {
                        "first": float(series(rows, layer, field)[1][0]),
                        "last": float(series(rows, layer, field)[1][-1]),
                    }
                    for field in ("delta", "ratio_phi", "ratio_psi")
                }
                for layer in chosen
            },
        }
        for col, (field, title) in enumerate(
            (
                ("ratio_phi", "damping / mean eig. of sqrt(delta) Phi"),
                ("ratio_psi", "damping / mean eig. of sqrt(delta) Psi"),
                ("delta", "delta = tr F (raw, before any floor)"),
            )
        ):
            ax = axes[row, col]
            for i, layer in enumerate(chosen):
                x, y = series(rows, layer, field)
                ax.plot(x, y, marker=".", color=colors[i % len(colors)], label=layer)
            if col < 2:
                ax.axhline(1.0, color="k", ls="--", lw=1)
            ax.set_yscale("log")
            ax.set_xlabel("iteration")
            ax.set_title(f"{approx}: {title}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=8)
    fig.suptitle(
        f"Fig. 3 analogue: {args.model} on digits {args.image_size}x{args.image_size}, batch "
        f"{args.batch}, logged every T_FIM = {args.update_steps} steps "
        f"(TKFAC_nor lambda = {args.damping:g}, TKFAC_new nu = {args.nu:g}); "
        "dashed: ratio 1"
    )
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    fig_path = img / f"damping_{args.model}.png"
    fig.savefig(fig_path, dpi=100)
    pyplot.close(fig)
    for approx, s in summary.items():
        print(
            f"{approx}: test acc {s['test_acc']:.4f}; at step {s['last_step']} the damping "
            f"dominates phi in {s['conv_layers_damping_dominates_phi']}/{s['conv_layers']} and "
            f"psi in {s['conv_layers_damping_dominates_psi']}/{s['conv_layers']} conv layers"
        )
        for layer, v in s["chosen_layers"].items():
            print(
                "   "
                + f"{layer:18s} "
                + " ".join(f"{f}: {v[f]['first']:.3g} -> {v[f]['last']:.3g}" for f in v)
            )
    result = {
        "experiment": "damping",
        **info,
        "args": vars(args),
        "summary": summary,
        "runs": runs,
        "figures": [str(fig_path)],
    }
    finish(result, t_start)
    path = write_json(results_dir / f"damping_{args.model}.json", result)
    print(f"wrote {path}, {fig_path} in {result['runtime_s']} s")
    return result


if __name__ == "__main__":
    main()

"""Worker of tests/test_distributed.py: a few TKFAC steps, one process or one msrun rank.

``python tests/dist_worker.py OUT_PREFIX`` trains, for every case of :data:`CASES`, a BN-free
``small_cnn`` for :data:`STEPS` steps on fixed batches of :data:`GLOBAL_BATCH` samples. Alone it
takes the whole batch; as rank ``r`` of ``N`` msrun workers (data parallel, mean gradients) it
takes rows ``[r B/N, (r+1) B/N)``. It saves ``OUT_PREFIX_<rank>.npz``: per case the local losses,
the factor state after the first step and every Parameter after the last.

The sampled labels of the true Fisher are given (``cell(x, y, sampled_label)``), so both runs
use the same ones; every step updates the factors and inverses (``T_FIM = T_INV = 1``).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import tkfac_ms  # noqa: E402
from model_zoo.src.models import create_model  # noqa: E402
from model_zoo.src.trainer import setup_context  # noqa: E402

CASES = (("tkfac_new", "true"), ("tkfac_nor", "empirical"), ("kfac", "empirical"))
STEPS = 5
GLOBAL_BATCH = 8
CLASSES = 4
IMAGE = 8


def batch(step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step ``step``'s global batch: images, labels, sampled labels."""
    rng = np.random.default_rng(100 + step)
    x = rng.standard_normal((GLOBAL_BATCH, 3, IMAGE, IMAGE)).astype(np.float32)
    y = rng.integers(0, CLASSES, GLOBAL_BATCH).astype(np.int32)
    sampled = rng.integers(0, CLASSES, GLOBAL_BATCH).astype(np.int32)
    return x, y, sampled


def run_case(approximation: str, fisher: str, rank: int, world: int) -> dict[str, np.ndarray]:
    """Train one case; returns its arrays keyed ``loss<t>``, ``f0/<name>``, ``p/<name>``."""
    ms.set_seed(0)
    net = create_model("small_cnn", num_classes=CLASSES, image_size=IMAGE, channels=(4, 8))
    opt = tkfac_ms.TKFAC(
        net,
        0.05,
        approximation=approximation,
        fisher=fisher,
        factor_update_steps=1,
        inv_update_steps=1,
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    cell.set_train()
    local = GLOBAL_BATCH // world
    rows = slice(rank * local, (rank + 1) * local)
    out: dict[str, np.ndarray] = {}
    for step in range(STEPS):
        x, y, sampled = batch(step)
        loss = cell(Tensor(x[rows]), Tensor(y[rows]), Tensor(sampled[rows]))
        out[f"loss{step}"] = loss.asnumpy()
        if step == 0:
            for p in cell.get_parameters():
                if ".tkfac." in p.name:
                    out["f0/" + p.name] = p.asnumpy().copy()
    for p in cell.get_parameters():
        if not p.name.startswith("tkfac_backup."):
            out["p/" + p.name] = p.asnumpy().copy()
    return out


def audit_primitives(rank: int, world: int) -> np.ndarray:
    """The primitives of this rank's compiled step on the portable route (KFAC, true Fisher).

    Under msrun the graph holds the data-parallel collectives (``AllReduce`` of the gradients
    and of the statistics), which the single-process audit of ``python -m tkfac_ms.portability``
    cannot see; tests/test_distributed.py checks them against the support table.
    """
    from tkfac_ms import _device, portability

    os.environ[_device.PORTABLE_ENV] = "1"
    try:
        ms.set_seed(0)
        net = create_model("small_cnn", num_classes=CLASSES, image_size=IMAGE, channels=(4, 8))
        opt = tkfac_ms.TKFAC(net, 0.05, approximation="kfac", fisher="true")
        cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
        x, y, _ = batch(0)
        local = GLOBAL_BATCH // world
        prims = portability.compiled_primitives(cell, Tensor(x[:local]), Tensor(y[:local]))
    finally:
        os.environ.pop(_device.PORTABLE_ENV, None)
    return np.asarray(sorted(prims))


def main() -> None:
    """Run every case and save this rank's arrays."""
    prefix = sys.argv[1]
    rank, world = setup_context("CPU")  # joins the msrun job when launched by msrun
    arrays: dict[str, np.ndarray] = {}
    for approximation, fisher in CASES:
        case = run_case(approximation, fisher, rank, world)
        arrays.update({f"{approximation}-{fisher}/{k}": v for k, v in case.items()})
    arrays["audit/primitives"] = audit_primitives(rank, world)
    np.savez(f"{prefix}_{rank}.npz", **arrays)
    print(f"[rank {rank}/{world}] saved {len(arrays)} arrays to {prefix}_{rank}.npz", flush=True)


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmark scripts: provenance, result files, digits arrays, plots.

Nothing here imports MindSpore: the torch-only benchmark (``approx_quality.py``) uses it too.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before any MindSpore conv (performance.md)
os.environ.setdefault("GLOG_v", "3")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img"

#: The optimizers of the comparisons, in the order of every table and legend.
OPTIMIZERS = ("sgdm", "adam", "kfac", "tkfac_nor", "tkfac_new")
LABELS = {
    "sgdm": "SGDM",
    "adam": "Adam",
    "kfac": "KFAC",
    "tkfac_nor": "TKFAC_nor",
    "tkfac_new": "TKFAC_new",
}
COLORS = {
    "sgdm": "tab:gray",
    "adam": "tab:green",
    "kfac": "tab:blue",
    "tkfac_nor": "tab:red",
    "tkfac_new": "tab:orange",
}


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Command, machine, load and date of a run: every result file carries them."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    script = Path(sys.argv[0]).name if argv is None else "main()"
    return {
        "command": " ".join(
            ["python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU used",
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "date_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "git_commit": commit,
    }


def finish(info: dict[str, Any], t0: float) -> dict[str, Any]:
    """Stamp the runtime and the end load average onto a result dict."""
    info["runtime_s"] = round(time.perf_counter() - t0, 1)
    info["load_average_at_end"] = os.getloadavg()
    return info


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` (numpy scalars and non-finite floats made JSON-safe) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=1) + "\n")
    return path


def digits_flat(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """The model zoo's digits split as ``[n, 64]`` float features in [0, 1] and int labels.

    Same images and split as ``create_dataset("digits")`` (``digits_arrays`` at the native 8x8
    size is the identity resampling; one of the three identical channels is kept).
    """
    from model_zoo.src.dataset import digits_arrays

    images, labels = digits_arrays(train, image_size=8)
    return images[..., 0].reshape(len(labels), 64).astype(np.float64), labels.astype(np.int64)


def digits_images(image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalized NCHW float32 digits (train images, train labels, test images, test labels).

    The arrays behind ``create_dataset("digits", image_size=...)``: real scikit-learn digits,
    bilinearly upsampled, replicated to 3 channels, normalized by the training split's mean and
    standard deviation. Batching is done by the caller (no augmentation, as for digits).
    """
    from model_zoo.src.dataset import digits_arrays

    xtr, ytr = digits_arrays(True, image_size)
    xte, yte = digits_arrays(False, image_size)
    mean, std = float(xtr.mean()), float(xtr.std())

    def prep(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)

    return prep(xtr), ytr.astype(np.int32), prep(xte), yte.astype(np.int32)


def plt():
    """matplotlib.pyplot on the Agg back-end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot

"""Train a model-zoo network with TKFAC_new / TKFAC_nor / KFAC / SGDM / Adam from one YAML config.

One device::

    python model_zoo/train.py --config model_zoo/config/cifar10_resnet20.yaml \
        --device CPU --data-path /data/cifar-10-batches-bin [--output DIR] [--<field> V ...]

Several (data parallel, mean gradients; ``batch_size`` stays the global batch)::

    msrun --worker_num 2 --local_worker_num 2 model_zoo/train.py --config ... --device CPU

``--resume`` continues the run in the output folder from its newest checkpoint (or
``--resume PATH`` from that file) with the optimizer state, the step counter and the data order
of the uninterrupted run. The launchers in ``scripts/`` wrap these commands; every config field
can be overridden as ``--<field> value`` (see ``model_zoo/README.md``).

Writes to the output folder (default ``outputs/<config name>``): ``config.yaml`` (the resolved
settings), ``checkpoints/epoch_<e>.ckpt``, ``metrics.csv``, ``metrics.json`` and ``curves.png``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before MindSpore loads: fast CPU convs
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script from a checkout without installing it
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import inspect  # noqa: E402
import shlex  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import mindspore as ms  # noqa: E402
import mindspore.dataset as ds  # noqa: E402
import yaml  # noqa: E402
from mindspore import nn  # noqa: E402

from model_zoo.src.dataset import DATASETS, create_dataset  # noqa: E402
from model_zoo.src.models import MODELS, create_model  # noqa: E402
from model_zoo.src.trainer import (  # noqa: E402
    ConfigError,
    TrainConfig,
    Trainer,
    add_override_args,
    create_lr,
    create_optimizer,
    create_train_cell,
    latest_checkpoint,
    load_checkpoint_for_resume,
    load_config,
    overrides_from_args,
    resolve_config,
    setup_context,
)
from model_zoo.src.trainer.callbacks import (  # noqa: E402
    CheckpointCallback,
    EvalCallback,
    MetricsLogger,
    PlotCallback,
    ProgressLogger,
    write_atomic,
)
from model_zoo.src.trainer.checkpoint import CHECKPOINT_DIR  # noqa: E402
from model_zoo.src.trainer.plot import load_run, plot_runs  # noqa: E402

# Settings a resumed run may change; any other difference from the saved config is an error.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "device", "output_dir", "log_interval", "keep_checkpoints", "data_path"}
)
RUN_FILES = ("metrics.csv", "metrics.json", "curves.png")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``--config``, ``--output``, ``--resume`` and config overrides."""
    parser = argparse.ArgumentParser(
        prog="model_zoo/train.py",
        description="Train a model-zoo network with TKFAC or a baseline optimizer.",
    )
    parser.add_argument("--config", "-c", help="YAML run config (model_zoo/config/*.yaml)")
    parser.add_argument("--output", help="output folder (default: outputs/<config name>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CKPT",
        help="continue the run in the output folder from its newest checkpoint, or from CKPT",
    )
    add_override_args(parser)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Resolve the run's settings: defaults, config file, optimizer block, command line."""
    raw = load_config(args.config) if args.config else {}
    overrides = overrides_from_args(args)
    if args.output is not None:
        overrides["output_dir"] = args.output
    stem = Path(args.config).stem if args.config else "run"
    return resolve_config(raw, overrides, stem=stem)


def model_kwargs(cfg: TrainConfig, image_size: int) -> dict[str, Any]:
    """``cfg.model_args``, plus the input size for constructors that take one.

    Raises:
        ValueError: ``cfg.model`` is not registered.
    """
    key = cfg.model.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model '{cfg.model}'; available: {', '.join(sorted(MODELS))}")
    kwargs = dict(cfg.model_args)
    params = inspect.signature(MODELS[key]).parameters
    if "image_size" in params:
        kwargs.setdefault("image_size", image_size)
    if "in_dim" in params:
        kwargs.setdefault("in_dim", 3 * image_size * image_size)
    return kwargs


@dataclass
class Run:
    """Everything a training run is built from."""

    cfg: TrainConfig
    net: nn.Cell
    optimizer: nn.Optimizer
    train_cell: nn.Cell
    train_data: Callable[[int], ds.Dataset]
    eval_data: ds.Dataset
    steps_per_epoch: int
    lr: list[float]
    rank: int
    world_size: int


def build_run(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> Run:
    """Data pipelines, network, learning rates, optimizer and training cell of ``cfg``.

    Raises:
        ConfigError: the global batch does not split evenly over the workers.
    """
    key = cfg.dataset.lower()
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset '{cfg.dataset}'; available: {', '.join(DATASETS)}")
    spec = DATASETS[key]
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} (global) does not split over {world_size} workers"
        )
    image_size = cfg.image_size or spec.image_size
    shard = {"shard_id": rank, "num_shards": world_size} if world_size > 1 else {}
    data_path = cfg.data_path if key != "digits" else None

    def train_data(epoch: int) -> ds.Dataset:
        # A fresh pipeline per epoch, seeded by (seed, epoch): resumed runs see the same data.
        return create_dataset(
            key,
            data_path,
            batch_size=cfg.batch_size // world_size,
            train=True,
            image_size=image_size,
            num_parallel_workers=cfg.data_workers,
            seed=cfg.seed + epoch,
            **shard,
        )

    steps = train_data(0).get_dataset_size()
    if cfg.steps_per_epoch is not None:
        steps = min(steps, cfg.steps_per_epoch)
    eval_data = create_dataset(
        key,
        data_path,
        batch_size=cfg.eval_batch_size or cfg.batch_size,
        train=False,
        image_size=image_size,
        num_parallel_workers=cfg.data_workers,
        drop_remainder=False,
    )
    ms.set_seed(cfg.seed)  # the same initial weights on every worker
    num_classes = cfg.num_classes or spec.num_classes
    net = create_model(cfg.model, num_classes=num_classes, **model_kwargs(cfg, image_size))
    lr = create_lr(cfg, steps)
    optimizer = create_optimizer(cfg, net, lr)  # TKFAC wraps the layers first
    cell = create_train_cell(net, nn.CrossEntropyLoss(), optimizer)
    cell.set_train(True)
    return Run(cfg, net, optimizer, cell, train_data, eval_data, steps, lr, rank, world_size)


def _check_resumable(cfg: TrainConfig, out: Path) -> None:
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(
            f"--resume with settings that differ from the run in {out} ({diffs}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )


def _clear_previous_run(out: Path) -> None:
    stale = [p for p in (out / CHECKPOINT_DIR).glob("*.ckpt")] + [
        out / f for f in RUN_FILES if (out / f).exists()
    ]
    if stale:
        print(
            f"note: {out} held a previous run; its checkpoints and metrics are replaced "
            "(use --resume to continue a run instead)",
            flush=True,
        )
        for p in stale:
            p.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """Train as the command line says; returns the exit status."""
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rank, world = setup_context(cfg.device)
    lead = rank == 0
    out = Path(cfg.output_dir or "outputs/run")
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
    try:
        ckpt = None
        if args.resume is not None:
            _check_resumable(cfg, out)
            ckpt = latest_checkpoint(out) if args.resume == "latest" else Path(args.resume)
            if ckpt is None:
                raise ConfigError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}")
        run = build_run(cfg, rank, world)
        start_epoch, start_step = 0, 0
        if ckpt is not None:
            start_epoch, start_step = load_checkpoint_for_resume(ckpt, run.train_cell)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(
        f"{prefix}{cfg.model} on {cfg.dataset} with {cfg.optimizer}: {cfg.epochs} epochs x "
        f"{run.steps_per_epoch} steps, batch {cfg.batch_size}"
        + (f" ({cfg.batch_size // world} per worker x {world})" if world > 1 else "")
        + f", lr {cfg.lr} ({cfg.lr_schedule}), device {cfg.device}, output {out}",
        flush=True,
    )
    if ckpt is not None:
        print(f"{prefix}resumed from {ckpt}: epoch {start_epoch}, step {start_step}", flush=True)

    history: list[dict] = []
    steps: list[dict] = []
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            _clear_previous_run(out)
        elif (out / "metrics.json").is_file():  # keep the rows up to the checkpoint
            old = load_run(out)
            history = [r for r in old.get("epochs", []) if r["epoch"] <= start_epoch]
            steps = [r for r in old.get("steps", []) if r["step"] <= start_step]
        # Atomic: other workers of a resumed msrun job may be reading it.
        write_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    run_info = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "optimizer": cfg.optimizer,
        "steps_per_epoch": run.steps_per_epoch,
        "world_size": world,
        "command": shlex.join(sys.argv),
        "config": cfg.to_dict(),
    }
    callbacks: list[Any] = [EvalCallback(run.net, run.eval_data, cfg.eval_steps)]
    saver = None
    if lead:
        saver = CheckpointCallback(out, keep=cfg.keep_checkpoints)
        callbacks += [MetricsLogger(out, run_info, cfg.log_interval, history, steps), saver]
    callbacks.append(ProgressLogger(cfg.log_interval, prefix=prefix))
    if lead:
        callbacks.append(
            PlotCallback(out / "curves.png", lambda path: plot_runs([load_run(out)], path))
        )
    trainer = Trainer(
        run.train_cell,
        run.train_data,
        cfg.epochs,
        run.steps_per_epoch,
        run.lr,
        callbacks,
        start_epoch=start_epoch,
        start_step=start_step,
        extra={"rank": rank, "world_size": world, "optimizer": run.optimizer},
    )
    if start_epoch >= cfg.epochs:
        print(f"{prefix}nothing to do: the run already has {start_epoch} epochs", flush=True)
        return 0
    state = trainer.run()

    if lead:
        hist = state.get("history", [])
        best = max(hist, key=lambda r: r["test_acc"]) if hist else None
        last = saver.last if saver is not None else None
        print(f"done: {cfg.epochs} epochs", flush=True)
        if best is not None:
            print(
                f"  test accuracy: final {100 * hist[-1]['test_acc']:.2f}%, "
                f"best {100 * best['test_acc']:.2f}% (epoch {best['epoch']})"
            )
        print(f"  checkpoint: {last}")
        print(f"  metrics:    {out / 'metrics.csv'}, {out / 'metrics.json'}")
        print(f"  plot:       {out / 'curves.png'}")
        print(f"  config:     {out / 'config.yaml'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

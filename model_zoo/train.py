"""Train a model-zoo network with TKFAC_new / TKFAC_nor / KFAC / SGDM / Adam from one YAML config.

One device::

    python -m model_zoo.train --config model_zoo/config/cifar10_resnet20.yaml \
        --device CPU --data-path /data/cifar-10-batches-bin [--output DIR] [--<field> V ...]

Several (data parallel, mean gradients; ``batch_size`` stays the global batch)::

    msrun --worker_num 2 --local_worker_num 2 model_zoo/train.py --config ... --device CPU

``python -m model_zoo.train --help`` lists every option and config field with its default.

Output folder (default ``outputs/<config name>``): ``config.yaml`` (the resolved settings),
``checkpoints/epoch_<e>.ckpt``, ``metrics.csv``, ``metrics.json`` and ``curves.png``. A run
holds the folder's ``.lock`` while it lives: a second run in the same folder is refused. A new
run (without ``--resume``) refuses a folder that holds an earlier run's checkpoints or metrics,
and never deletes anything.

``--resume`` continues the run in the output folder (``--resume DIR``: in DIR; ``--resume
CKPT``: from that file) with the settings of its saved ``config.yaml`` (flags given on the
command line override them; only a few may change), the optimizer state, the step counter and
the data order of the uninterrupted run.

Exit status: 0 done, 1 stopped because training diverged (non-finite loss for a whole epoch,
or too many skipped non-finite steps; the last good checkpoint is kept), 2 a usage error (one
``error: ...`` line on stderr).
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
    ZooArgumentParser,
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
    NonfiniteMonitor,
    PlotCallback,
    ProgressLogger,
    write_atomic,
)
from model_zoo.src.trainer.checkpoint import CHECKPOINT_DIR  # noqa: E402
from model_zoo.src.trainer.plot import load_run, plot_runs  # noqa: E402
from model_zoo.src.trainer.rundir import (  # noqa: E402
    RunFolderError,
    RunLock,
    in_use_error,
    lock_holder,
    previous_run_files,
)

# Settings a resumed run may change; any other difference from the saved config is an error.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "device",
        "output_dir",
        "log_interval",
        "keep_checkpoints",
        "data_path",
        "data_workers",
        "max_skipped_fraction",
    }
)


def _config_defaults(argv: Sequence[str] | None) -> dict[str, Any]:
    """The settings of ``--config`` FILE (if given and readable), shown as defaults in --help."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", "-c")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return {}
    try:
        return resolve_config(load_config(known.config), stem=Path(known.config).stem).to_dict()
    except ConfigError:
        return {}  # reported when the command line is resolved


def make_parser(defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The command line: ``--config``, ``--output``, ``--resume`` and every config field."""
    parser = ZooArgumentParser(
        prog="python -m model_zoo.train",
        description="Train a model-zoo network with TKFAC or a baseline optimizer.\n\n"
        "Settings, lowest precedence first: the defaults below, the --config file (its top\n"
        "level, then its block for the selected optimizer), the command line. With --config,\n"
        "the defaults shown are that file's.",
        epilog="output folder (--output, default outputs/<config name>): config.yaml,\n"
        "checkpoints/epoch_<e>.ckpt, metrics.csv, metrics.json, curves.png. One live run per\n"
        "folder (.lock); without --resume a folder that holds an earlier run is refused.\n\n"
        "exit status: 0 done; 1 stopped because training diverged (the last good checkpoint\n"
        "is kept); 2 usage error (one 'error: ...' line on stderr).\n\n"
        "examples:\n"
        "  python -m model_zoo.train --config model_zoo/config/digits_resnet20_tkfac_new.yaml\n"
        "  python -m model_zoo.train --output outputs/digits_resnet20_tkfac_new --resume \\\n"
        "      --epochs 10",
    )
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="YAML run config (model_zoo/config/*.yaml)"
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="output folder (default: the config's output_dir, or outputs/<config name>)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CKPT|DIR",
        help="continue the run in the output folder (or in DIR) from its newest checkpoint, or "
        "from CKPT, with the settings of the run's config.yaml; flags given here override them "
        f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change)",
    )
    add_override_args(parser, defaults)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``--help`` shows the ``--config`` file's values as defaults)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return make_parser(_config_defaults(argv)).parse_args(argv)


def _run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINT_DIR else ckpt.parent


def _read_saved_config(path: Path) -> dict[str, Any]:
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the run's settings {path}: {exc}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    unknown = sorted(set(saved) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}")
    return saved


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """Resolve the run's settings and, with ``--resume``, the checkpoint to start from.

    A new run: defaults, config file, its optimizer block, command line. A resumed run: the
    run's saved ``config.yaml``, then the command line (checked against
    :data:`RESUMABLE_CHANGES`).

    Returns:
        ``(config, checkpoint)``; the checkpoint is None for a new run.

    Raises:
        ConfigError: bad settings, or nothing to resume from.
    """
    overrides = overrides_from_args(args)
    if args.output is not None:
        overrides["output_dir"] = args.output
    stem = Path(args.config).stem if args.config else None
    if args.resume is None:
        raw = load_config(args.config) if args.config else {}
        return resolve_config(raw, overrides, stem=stem or "run"), None

    given_dir = given_ckpt = None
    if args.resume != "latest":
        target = Path(args.resume)
        if target.is_dir():
            given_dir = target
        elif target.is_file():
            given_ckpt = target
        else:
            raise ConfigError(f"--resume: no such checkpoint or run folder: {target}")
    if overrides.get("output_dir") is not None:
        out = Path(overrides["output_dir"])
    elif given_dir is not None:
        out = given_dir
    elif given_ckpt is not None:
        out = _run_dir_of(given_ckpt)
    elif args.config:
        raw = load_config(args.config)
        out = Path(resolve_config(raw, stem=stem).output_dir or f"outputs/{stem}")
    else:
        raise ConfigError("--resume needs the run's folder: --output DIR or --resume DIR")
    overrides["output_dir"] = str(out)

    saved_file = next(
        (
            d / "config.yaml"
            for d in (out, given_dir, given_ckpt and _run_dir_of(given_ckpt))
            if d is not None and (d / "config.yaml").is_file()
        ),
        None,
    )
    if saved_file is not None:
        saved = _read_saved_config(saved_file)
        cfg = resolve_config(saved, overrides)
        _check_resumable(cfg, saved, saved_file)
    elif args.config:
        cfg = resolve_config(load_config(args.config), overrides, stem=stem)
    else:
        raise ConfigError(f"--resume: no config.yaml in {out}; pass the run's --config")

    if given_ckpt is not None:
        return cfg, given_ckpt
    folder = given_dir or out
    ckpt = latest_checkpoint(folder)
    if ckpt is None:
        raise ConfigError(f"--resume: no checkpoint in {folder / CHECKPOINT_DIR}")
    return cfg, ckpt


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


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any], where: Path) -> None:
    now = cfg.to_dict()
    defaults = TrainConfig().to_dict()
    changed = sorted(
        k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]
    )
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k, defaults[k])!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(
            f"--resume with settings that differ from the run's {where} ({diffs}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )


def _prepare_folder(out: Path, resuming: bool) -> RunLock:
    """Lock ``out`` for this run; a new run refuses a folder that holds an earlier run.

    Raises:
        RunFolderError: another live run holds the folder, it is not writable, or (new run)
            it holds an earlier run's checkpoints or metrics.
    """
    lock = RunLock(out).acquire()
    if not resuming:
        found = previous_run_files(out)
        if found:
            lock.release()
            shown = ", ".join(str(p.relative_to(out)) for p in found[:4])
            raise RunFolderError(
                f"{out} already holds a run ({shown}{' ...' if len(found) > 4 else ''}); "
                f"nothing was changed. Continue it with --resume, or start a new run with "
                "--output NEW_FOLDER"
            )
    return lock


def main(argv: Sequence[str] | None = None) -> int:
    """Train as the command line says; returns the exit status (0, 1 diverged, 2 usage)."""
    args = parse_args(argv)
    lock: RunLock | None = None
    try:
        cfg, ckpt = build_config(args)
        rank, world = setup_context(cfg.device)
        lead = rank == 0
        out = Path(cfg.output_dir or "outputs/run")
        if lead:  # only rank 0 writes to the folder
            lock = _prepare_folder(out, resuming=ckpt is not None)
        run = build_run(cfg, rank, world)
        start_epoch, start_step = 0, 0
        if ckpt is not None:
            start_epoch, start_step = load_checkpoint_for_resume(ckpt, run.train_cell)
        if lead:
            # Atomic: other workers of a resumed msrun job may be reading it.
            write_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    except (ConfigError, RunFolderError, FileNotFoundError, ValueError, OSError) as exc:
        if lock is not None:
            lock.release()
        elif not isinstance(exc, RunFolderError):
            # A folder in use by a live run: that is the error to report (it may be why the
            # folder has no checkpoint yet, or settings that differ).
            for folder in (args.output, args.resume):
                owner = lock_holder(folder) if folder and Path(folder).is_dir() else None
                if owner:
                    exc = in_use_error(folder, owner)
                    break
        text = str(exc).strip().replace("\n", " ") or type(exc).__name__
        print(f"error: {text}", file=sys.stderr)
        return 2
    try:
        return _train(args, cfg, run, out, ckpt, start_epoch, start_step)
    finally:
        if lock is not None:
            lock.release()


def _train(
    args: argparse.Namespace,
    cfg: TrainConfig,
    run: Run,
    out: Path,
    ckpt: Path | None,
    start_epoch: int,
    start_step: int,
) -> int:
    rank, world = run.rank, run.world_size
    lead = rank == 0
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
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
    if lead and ckpt is not None and (out / "metrics.json").is_file():
        old = load_run(out)  # keep the rows up to the checkpoint
        history = [r for r in old.get("epochs", []) if r["epoch"] <= start_epoch]
        steps = [r for r in old.get("steps", []) if r["step"] <= start_step]

    run_info = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "optimizer": cfg.optimizer,
        "steps_per_epoch": run.steps_per_epoch,
        "world_size": world,
        "command": shlex.join(sys.argv),
        "config": cfg.to_dict(),
    }
    callbacks: list[Any] = [
        NonfiniteMonitor(cfg.max_skipped_fraction),
        EvalCallback(run.net, run.eval_data, cfg.eval_steps),
    ]
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

    if state.get("diverged"):
        good = latest_checkpoint(out) if lead else None
        kept = f"; the last good checkpoint is {good}" if good else "; no checkpoint was kept"
        print(
            f"{prefix}stopped: training diverged in epoch {state.cur_epoch_num}: "
            f"{state.diverged}{kept if lead else ''} (lower --lr, or raise "
            "--max-skipped-fraction to go on)",
            file=sys.stderr,
            flush=True,
        )
        return 1
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

"""Evaluate a checkpoint of ``model_zoo/train.py`` on the test split: loss and top-1 accuracy.

Usage::

    python model_zoo/eval.py --checkpoint outputs/cifar10_resnet20[/checkpoints/epoch_0200.ckpt] \
        [--config FILE] [--device CPU] [--json FILE] [--<field> V ...]

``--checkpoint`` is a checkpoint file or a training output folder (its newest checkpoint). The
settings default to the run's saved ``config.yaml`` (found next to the ``checkpoints/``
folder), so only the checkpoint is needed; ``--config`` and ``--<field>`` overrides (e.g.
``--data-path``, ``--eval-batch-size``, ``--eval-steps``) take precedence.
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
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import mindspore as ms  # noqa: E402

from model_zoo.src.dataset import DATASETS, create_dataset  # noqa: E402
from model_zoo.src.models import create_model  # noqa: E402
from model_zoo.src.trainer import (  # noqa: E402
    ConfigError,
    EvalNetwork,
    add_override_args,
    evaluate,
    latest_checkpoint,
    load_config,
    overrides_from_args,
    resolve_config,
    setup_context,
)
from model_zoo.src.trainer.checkpoint import CHECKPOINT_DIR  # noqa: E402
from model_zoo.train import model_kwargs  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``--checkpoint``, ``--config``, ``--json`` and config overrides."""
    parser = argparse.ArgumentParser(
        prog="model_zoo/eval.py", description="Evaluate a model-zoo checkpoint on the test split."
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint file, or a training output folder"
    )
    parser.add_argument("--config", "-c", help="YAML config (default: the run's config.yaml)")
    parser.add_argument("--json", help="also write the result to this JSON file")
    add_override_args(parser)
    return parser.parse_args(argv)


def _find(checkpoint: str) -> tuple[Path, Path]:
    """``(checkpoint file, run folder)`` from a file or a folder."""
    path = Path(checkpoint)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path / CHECKPOINT_DIR}")
        return found, path
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    return path, run_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate as the command line says; returns the exit status."""
    args = parse_args(argv)
    try:
        ckpt, run_dir = _find(args.checkpoint)
        if args.config:
            raw = load_config(args.config)
        elif (run_dir / "config.yaml").is_file():
            raw = load_config(run_dir / "config.yaml")
        else:
            raise ConfigError(f"no config.yaml in {run_dir}; pass --config")
        cfg = resolve_config(raw, overrides_from_args(args))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_context(cfg.device)
    spec = DATASETS[cfg.dataset.lower()]
    image_size = cfg.image_size or spec.image_size
    net = create_model(
        cfg.model, num_classes=cfg.num_classes or spec.num_classes, **model_kwargs(cfg, image_size)
    )
    params = ms.load_checkpoint(str(ckpt))
    missing, _ = ms.load_param_into_net(net, params, strict_load=True)
    if missing:
        print(f"error: {ckpt} lacks {len(missing)} parameter(s) of {cfg.model}: {missing[:5]}")
        return 2
    data = create_dataset(
        cfg.dataset,
        cfg.data_path if cfg.dataset.lower() != "digits" else None,
        batch_size=cfg.eval_batch_size or cfg.batch_size,
        train=False,
        image_size=image_size,
        num_parallel_workers=cfg.data_workers,
        drop_remainder=False,
    )
    tick = time.perf_counter()
    result = evaluate(EvalNetwork(net), data, cfg.eval_steps)
    result.update(
        checkpoint=str(ckpt),
        model=cfg.model,
        dataset=cfg.dataset,
        optimizer=cfg.optimizer,
        epoch=int(params["epoch"].asnumpy()) if "epoch" in params else None,
        eval_time_s=time.perf_counter() - tick,
    )
    print(
        f"{cfg.model} on {cfg.dataset} ({cfg.optimizer}, epoch {result['epoch']}): "
        f"test_loss {result['test_loss']:.4f} | test_acc {100 * result['test_acc']:.2f}% "
        f"({result['test_samples']} images, {result['eval_time_s']:.1f} s) from {ckpt}",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"result: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluate a checkpoint of ``model_zoo/train.py`` on the test split: loss and top-1 accuracy.

Usage::

    python -m model_zoo.eval --checkpoint outputs/cifar10_resnet20[/checkpoints/epoch_0200.ckpt] \
        [--config FILE] [--device CPU] [--json FILE] [--<field> V ...]

``--checkpoint`` is a checkpoint file or a training output folder (its newest checkpoint). The
settings default to the run's saved ``config.yaml`` (found next to the ``checkpoints/``
folder), so only the checkpoint is needed; ``--config`` and ``--<field>`` overrides (e.g.
``--data-path``, ``--eval-batch-size``, ``--eval-steps``) take precedence. A missing, corrupted
or mismatched checkpoint (another network) is one ``error: ...`` line, exit status 2.
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
from typing import Any  # noqa: E402

import mindspore as ms  # noqa: E402

from model_zoo.src.dataset import DATASETS, create_dataset  # noqa: E402
from model_zoo.src.models import create_model  # noqa: E402
from model_zoo.src.trainer import (  # noqa: E402
    ConfigError,
    EvalNetwork,
    ZooArgumentParser,
    add_override_args,
    evaluate,
    latest_checkpoint,
    load_config,
    overrides_from_args,
    resolve_config,
    setup_context,
)
from model_zoo.src.trainer.checkpoint import (  # noqa: E402
    CHECKPOINT_DIR,
    check_params_fit,
    read_checkpoint,
)
from model_zoo.train import model_kwargs  # noqa: E402


def _run_defaults(argv: Sequence[str]) -> dict[str, Any]:
    """The settings ``--help`` shows as defaults: the --config file's or the run's config.yaml."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--checkpoint")
    pre.add_argument("--config", "-c")
    known, _ = pre.parse_known_args(argv)
    try:
        if known.config:
            return resolve_config(load_config(known.config)).to_dict()
        if known.checkpoint:
            _, run_dir = _find(known.checkpoint)
            if (run_dir / "config.yaml").is_file():
                return resolve_config(load_config(run_dir / "config.yaml")).to_dict()
    except (ConfigError, FileNotFoundError):
        pass  # reported when the command line is resolved
    return {}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``--checkpoint``, ``--config``, ``--json`` and config overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ZooArgumentParser(
        prog="python -m model_zoo.eval",
        description="Evaluate a model-zoo checkpoint on the test split (loss, top-1 accuracy).\n\n"
        "The settings come from the run's config.yaml (next to checkpoints/), or --config;\n"
        "the config fields below override them (the defaults shown are the run's, when\n"
        "--checkpoint or --config is given).",
        epilog="exit status: 0 done; 2 usage error, missing, corrupted or mismatched checkpoint\n"
        "(one 'error: ...' line on stderr).\n\n"
        "example:\n"
        "  python -m model_zoo.eval --checkpoint outputs/digits_resnet20_tkfac_new",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT|DIR",
        help="checkpoint file, or a training output folder (its newest checkpoint)",
    )
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config (default: the run's config.yaml)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the result to this JSON file")
    add_override_args(parser, _run_defaults(argv))
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
        setup_context(cfg.device)
        if cfg.dataset.lower() not in DATASETS:
            raise ConfigError(f"unknown dataset '{cfg.dataset}'; available: {', '.join(DATASETS)}")
        spec = DATASETS[cfg.dataset.lower()]
        image_size = cfg.image_size or spec.image_size
        net = create_model(
            cfg.model,
            num_classes=cfg.num_classes or spec.num_classes,
            **model_kwargs(cfg, image_size),
        )
        params = read_checkpoint(ckpt)
        check_params_fit(params, net, ckpt)  # every shape, before anything is written
        ms.load_param_into_net(net, params, strict_load=True)
        data = create_dataset(
            cfg.dataset,
            cfg.data_path if cfg.dataset.lower() != "digits" else None,
            batch_size=cfg.eval_batch_size or cfg.batch_size,
            train=False,
            image_size=image_size,
            num_parallel_workers=cfg.data_workers,
            drop_remainder=False,
        )
    except (ConfigError, FileNotFoundError, ValueError, OSError) as exc:
        text = str(exc).strip().replace("\n", " ") or type(exc).__name__
        print(f"error: {text}", file=sys.stderr)
        return 2
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
        try:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"result: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

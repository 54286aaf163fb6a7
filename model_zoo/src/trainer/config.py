"""One run's settings: a YAML file, its per-optimizer block, then command-line overrides.

A config file is flat (the fields of :class:`TrainConfig`) plus one optional mapping,
``optimizers``, of per-optimizer blocks. The block of the selected ``optimizer`` is merged over
the top level, so one file holds every paper baseline and ``--optimizer momentum`` switches the
learning rate and its schedule along with the method. Precedence, lowest first: the
:class:`TrainConfig` defaults, the file's top level, the selected block, the command line.

Command-line overrides are ``--field value`` for every field (dashes or underscores), the value
read as YAML: ``--lr 0.05``, ``--kl-clip null``, ``--model-args "{hidden: [64]}"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "TrainConfig",
    "ConfigError",
    "load_config",
    "add_override_args",
    "overrides_from_args",
    "resolve_config",
]

DEVICES = ("CPU", "GPU", "Ascend")


class ConfigError(ValueError):
    """A config file or override is malformed or out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """Resolved settings of one training run (see ``model_zoo/README.md``, Script Parameters).

    ``batch_size`` is the *global* batch: with N data-parallel workers each one takes
    ``batch_size / N`` samples per step, so N workers follow the same trajectory as one.
    """

    # network and data
    model: str = "resnet20"
    model_args: dict = field(default_factory=dict)
    dataset: str = "digits"
    data_path: str | None = None
    image_size: int | None = None  # None: the data set's native size
    num_classes: int | None = None  # None: the data set's
    batch_size: int = 128
    eval_batch_size: int | None = None  # None: batch_size
    data_workers: int | None = None  # map threads; None: min(8, cpus)
    # length of the run
    epochs: int = 200
    steps_per_epoch: int | None = None  # cap on training steps per epoch; None: the full split
    eval_steps: int | None = None  # cap on evaluation batches; None: the full test split
    # optimizer
    optimizer: str = "tkfac_new"
    lr: float = 0.1
    lr_schedule: str = "step"
    lr_decay_epochs: int = 40
    lr_decay_factor: float = 0.1
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 0.0
    # TKFAC / KFAC
    damping: float = 1e-3
    nu: float = 1e-3
    factor_decay: float = 0.95
    factor_update_steps: int = 100
    inv_update_steps: int = 100
    fisher: str = "true"
    kl_clip: float | None = None
    # Adam
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # run
    seed: int = 1
    device: str = "CPU"
    output_dir: str | None = None  # None: outputs/<config file stem>
    log_interval: int = 10  # steps between progress lines
    keep_checkpoints: int = 5  # newest per-epoch checkpoints kept

    def __post_init__(self) -> None:
        """Check types and ranges; raise :class:`ConfigError` naming the field."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, f.type)
        positive = ("batch_size", "epochs", "factor_update_steps", "inv_update_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "eval_batch_size",
            "steps_per_epoch",
            "eval_steps",
            "data_workers",
            "image_size",
            "num_classes",
        ):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1 or null, got {v}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.lr_decay_epochs < 1 or not 0 < self.lr_decay_factor <= 1:
            raise ConfigError(
                "need lr_decay_epochs >= 1 and 0 < lr_decay_factor <= 1, got "
                f"{self.lr_decay_epochs}, {self.lr_decay_factor}"
            )
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.log_interval < 1 or self.keep_checkpoints < 1:
            raise ConfigError("log_interval and keep_checkpoints must be >= 1")
        # The optimizer's own hyperparameters are range-checked by the optimizers themselves
        # (tkfac_ms.TKFACConfig, nn.Momentum, nn.Adam) when the run is built.

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML- and JSON-serializable)."""
        return dataclasses.asdict(self)


_TYPES = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "dict": (dict,),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
    "str | None": (str, type(None)),
}


def _check_type(name: str, value: Any, annotation: Any) -> None:
    allowed = _TYPES[str(annotation)]
    if isinstance(value, bool) or not isinstance(value, allowed):
        want = str(annotation).replace("None", "null")
        raise ConfigError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_keys(keys: Any, where: str) -> None:
    unknown = sorted(set(keys) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}"
        )


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a config file: its top level, with the ``optimizers`` mapping kept as is.

    Raises:
        ConfigError: the file is missing, not a mapping, or has unknown keys.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of settings, got {type(raw).__name__}")
    blocks = raw.get("optimizers", {}) or {}
    if not isinstance(blocks, dict) or not all(isinstance(b, dict) for b in blocks.values()):
        raise ConfigError(f"{p}: 'optimizers' must map optimizer names to mappings of settings")
    _check_keys((k for k in raw if k != "optimizers"), str(p))
    for name, block in blocks.items():
        _check_keys(block, f"{p}: optimizers.{name}")
    return raw


def resolve_config(
    raw: dict[str, Any], overrides: dict[str, Any] | None = None, stem: str | None = None
) -> TrainConfig:
    """Merge defaults, file, the selected optimizer's block and overrides into a config.

    Args:
        raw: what :func:`load_config` returned (or ``{}``).
        overrides: command-line values by field name.
        stem: the config file's stem, for the default ``output_dir`` (``outputs/<stem>``).
    """
    overrides = dict(overrides or {})
    _check_keys(overrides, "command line")
    top = {k: v for k, v in raw.items() if k != "optimizers"}
    blocks = raw.get("optimizers", {}) or {}
    name = overrides.get("optimizer", top.get("optimizer", TrainConfig.optimizer))
    merged = {**top, **blocks.get(name, {}), **overrides}
    if merged.get("output_dir") is None and stem is not None:
        merged["output_dir"] = str(Path("outputs") / stem)
    # YAML reads 1e-3 without a dot as a string; accept numeric strings for float fields.
    for key, value in merged.items():
        if "float" in str(FIELDS[key].type) and isinstance(value, str):
            try:
                merged[key] = float(value)
            except ValueError:
                pass
    return TrainConfig(**merged)


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"not a YAML value: {text!r} ({exc})") from None


def add_override_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--<field>`` (dashes, YAML value) for every :class:`TrainConfig` field."""
    group = parser.add_argument_group(
        "config overrides", "any config field, e.g. --epochs 1 --lr 0.05 (values read as YAML)"
    )
    taken = {a for action in parser._actions for a in action.option_strings}
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        if flag in taken:
            continue
        group.add_argument(
            flag,
            *([f"--{name}"] if "_" in name else []),
            dest=f"override.{name}",
            type=_yaml_value,
            default=argparse.SUPPRESS,
            metavar="V",
        )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--<field>`` values given on the command line, by field name."""
    return {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("override.")}

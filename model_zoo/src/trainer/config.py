"""One run's settings: a YAML file, its per-optimizer block, then command-line overrides.

A config file is flat (the fields of :class:`TrainConfig`) plus one optional mapping,
``optimizers``, of per-optimizer blocks. The block of the selected ``optimizer`` is merged over
the top level, so one file holds every paper baseline and ``--optimizer momentum`` switches the
learning rate and its schedule along with the method. Precedence, lowest first: the
:class:`TrainConfig` defaults, the file's top level, the selected block, the command line.

Command-line overrides are ``--field value`` for every field (dashes or underscores). The value
is read by the field's type: numbers as numbers, ``null`` (or ``none``) for an optional field,
names as given (``--fisher true`` is the string ``true``: ``fisher`` is a name, not a switch), a
mapping as YAML (``--model-args "{hidden: [64]}"``). Names with a fixed set of values (``model``,
``dataset``, ``optimizer``, ``lr_schedule``, ``fisher``, ``device``) are checked against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

__all__ = [
    "TrainConfig",
    "ConfigError",
    "ZooArgumentParser",
    "FIELD_HELP",
    "load_config",
    "add_override_args",
    "overrides_from_args",
    "resolve_config",
]

DEVICES = ("CPU", "GPU", "Ascend")
FISHER_TYPES = ("true", "empirical")


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
    max_skipped_fraction: float | None = 0.25  # stop when more of an epoch's steps are skipped

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
        if self.fisher not in FISHER_TYPES:
            raise ConfigError(
                f"fisher must be one of {', '.join(FISHER_TYPES)}, got {self.fisher!r}"
            )
        frac = self.max_skipped_fraction
        if frac is not None and not 0 <= frac <= 1:
            raise ConfigError(f"max_skipped_fraction must be in [0, 1] or null, got {frac}")
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
    # The documented ``fisher: true`` is YAML's boolean when unquoted: it names the true Fisher.
    if merged.get("fisher") is True:
        merged["fisher"] = "true"
    return TrainConfig(**merged)


# One line of help per field (``--help``; the README's Script Parameters table says more).
FIELD_HELP = {
    "model": "network, a model-zoo registry name",
    "model_args": 'extra network constructor arguments, a YAML mapping, e.g. "{hidden: [64]}"',
    "dataset": "data set (digits is built in; the others need --data-path)",
    "data_path": "data folder of cifar10 / cifar100 / imagenet",
    "image_size": "input height = width; null: the data set's own",
    "num_classes": "number of classes; null: the data set's",
    "batch_size": "global batch: N data-parallel workers take batch_size / N each",
    "eval_batch_size": "evaluation batch; null: batch_size",
    "data_workers": "data-pipeline threads; null: min(8, CPUs)",
    "epochs": "length of the run in epochs",
    "steps_per_epoch": "cap on training steps per epoch; null: the whole training split",
    "eval_steps": "cap on evaluation batches; null: the whole test split",
    "optimizer": "training method (tkfac_new/tkfac_nor/kfac: tkfac_ms.TKFAC)",
    "lr": "initial learning rate",
    "lr_schedule": "step: x lr_decay_factor every lr_decay_epochs; cosine; constant",
    "lr_decay_epochs": "epochs between two decays of the step schedule",
    "lr_decay_factor": "factor of each decay of the step schedule, in (0, 1]",
    "warmup_epochs": "epochs of linear warmup",
    "momentum": "momentum (SGDM and the TKFAC methods)",
    "weight_decay": "L2 weight decay",
    "damping": "damping lambda (tkfac_nor, kfac)",
    "nu": "trace floor nu (tkfac_new)",
    "factor_decay": "moving-average decay epsilon of the factors",
    "factor_update_steps": "T_FIM: steps between factor updates",
    "inv_update_steps": "T_INV: steps between inverse updates",
    "fisher": "true: labels sampled from the model; empirical: the data's labels",
    "kl_clip": "KL clipping of the preconditioned step; null: off",
    "adam_beta1": "Adam beta1",
    "adam_beta2": "Adam beta2",
    "adam_eps": "Adam epsilon",
    "seed": "seed of the initial weights and the data order (epoch e: seed + e)",
    "device": "device target",
    "output_dir": "output folder (same as --output); null: outputs/<config name>",
    "log_interval": "steps between progress lines",
    "keep_checkpoints": "newest per-epoch checkpoints kept",
    "max_skipped_fraction": "stop the run (exit status 1) when more than this fraction of an "
    "epoch's steps were skipped as non-finite; null: never",
}


class ZooArgumentParser(argparse.ArgumentParser):
    """``argparse`` without prefix matching, whose errors are one ``error: ...`` line (status 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``error: <message>`` to stderr and exit with status 2."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


_NULLS = ("null", "none", "~", "")


def _field_type(name: str, choices: dict[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """How the command line reads ``name``: by its type, checked against its choices."""
    annotation = str(FIELDS[name].type)
    optional = "None" in annotation

    def parse(text: str) -> Any:
        if optional and text.strip().lower() in _NULLS:
            return None
        if annotation.startswith("int"):
            try:
                return int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if annotation.startswith("float"):
            try:
                return float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if annotation.startswith("dict"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise argparse.ArgumentTypeError(f"not a YAML mapping: {text!r} ({exc})") from None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"not a YAML mapping: {text!r}")
            return value
        if name in choices:
            allowed = choices[name]
            for c in allowed:
                if text.lower() == c.lower():
                    return c
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(allowed)})"
            )
        return text

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def field_choices() -> dict[str, tuple[str, ...]]:
    """The fixed value sets of the name fields (the registries of networks, data, methods)."""
    # Imported here: optim and lr import this module.
    from model_zoo.src.dataset import DATASETS
    from model_zoo.src.models import MODELS
    from model_zoo.src.trainer.lr import LR_SCHEDULES
    from model_zoo.src.trainer.optim import OPTIMIZERS

    return {
        "model": tuple(MODELS),
        "dataset": tuple(DATASETS),
        "optimizer": tuple(OPTIMIZERS),
        "lr_schedule": tuple(LR_SCHEDULES),
        "fisher": FISHER_TYPES,
        "device": DEVICES,
    }


def _metavar(name: str, choices: dict[str, tuple[str, ...]]) -> str:
    if name in choices:
        return "{" + ",".join(choices[name]) + "}"
    annotation = str(FIELDS[name].type)
    kind = annotation.split(" ")[0]
    base = {"int": "N", "float": "X", "dict": "YAML"}.get(kind, "PATH" if "path" in name else "DIR")
    if kind == "str" and "dir" not in name and "path" not in name:
        base = "TEXT"
    return base + ("|null" if "None" in annotation else "")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True).strip() if value else "{}"
    return str(value)


def add_override_args(
    parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None
) -> None:
    """Add ``--<field>`` for every :class:`TrainConfig` field, with help, default and choices.

    Args:
        parser: the entry point's parser.
        defaults: the values to show as defaults (a config file's); the dataclass defaults for
            the fields it lacks. Only shown: an option not given on the command line is absent
            from the parsed namespace, so it never overrides the file.
    """
    shown = {f.name: getattr(TrainConfig, f.name, None) for f in FIELDS.values()}
    shown["model_args"] = {}
    shown.update(defaults or {})
    choices = field_choices()
    group = parser.add_argument_group(
        "config fields",
        "every config field, overriding the config file: --<field> VALUE (dashes or underscores)",
    )
    taken = {a for action in parser._actions for a in action.option_strings}
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        if flag in taken:
            continue
        text = FIELD_HELP[name]
        if name in choices:
            text += f"; one of: {', '.join(choices[name])}"
        group.add_argument(
            flag,
            *([f"--{name}"] if "_" in name else []),
            dest=f"override.{name}",
            type=_field_type(name, choices),
            default=argparse.SUPPRESS,
            metavar=_metavar(name, choices),
            help=f"{text} (default: {_show(shown.get(name))})".replace("%", "%%"),
        )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--<field>`` values given on the command line, by field name."""
    return {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("override.")}

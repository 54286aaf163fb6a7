"""Issues 14.6 and 15.1: one framework-free config module, so both twins validate the same way.

This file imports only ``tkfac_ms.config``; what needs another package (``reference_torch``) or
a clean interpreter (is MindSpore loaded?) runs in a subprocess.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tkfac_ms import config
from tkfac_ms.config import Approximation, FisherType, LossReduction, TKFACConfig

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repository root."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_config_module_loads_no_framework() -> None:
    proc = run_python(
        "import sys, tkfac_ms, tkfac_ms.config\n"
        "loaded = sorted(m for m in ('mindspore', 'torch') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "import os; assert os.environ['ONEDNN_MAX_CPU_ISA']\n"
        "assert {'TKFAC', 'wrap_network', 'DampingDiagnostics'} <= set(dir(tkfac_ms))\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_both_twins_use_the_same_objects_and_the_torch_twin_does_not_load_mindspore() -> None:
    proc = run_python(
        "import sys\n"
        "import reference_torch, reference_torch.config as ref, tkfac_ms.config as ms\n"
        "assert 'mindspore' not in sys.modules, 'importing reference_torch loaded mindspore'\n"
        "for name in ('Approximation', 'FisherType', 'LossReduction', 'Schedule',"
        " 'TKFACConfig'):\n"
        "    assert getattr(ref, name) is getattr(ms, name), name\n"
        "    assert name in ref.__all__, name\n"
        "assert reference_torch.TKFACConfig is ms.TKFACConfig\n"
    )
    assert proc.returncode == 0, proc.stderr


@dataclass(frozen=True)
class Bad:
    """Keyword arguments for ``TKFACConfig(**kwargs)`` and the message they must raise."""

    name: str
    kwargs: dict[str, Any]
    match: str


BAD = [
    Bad("string_damping", {"damping": "0.1"}, r"damping must be a number > 0, got '0\.1'"),
    Bad("bool_damping", {"damping": True}, r"damping must be a number > 0, got True"),
    Bad("inf_damping", {"damping": math.inf}, r"damping must be > 0, got inf"),
    Bad("bool_momentum", {"momentum": False}, r"momentum must be a number in \[0, 1\), got False"),
    Bad("zero_lr", {"lr": 0}, r"lr must be > 0, got 0$"),
    Bad("string_lr", {"lr": "0.1"}, r"lr must be a number > 0, got '0\.1'"),
    Bad("empty_lr", {"lr": []}, r"lr must be a float > 0 or a non-empty per-step list, got \[\]"),
    Bad("bad_step_in_list", {"damping": [0.1, -1.0]}, r"damping\[1\] must be > 0, got -1\.0"),
    Bad("string_in_lr_list", {"lr": (0.1, "x")}, r"lr\[1\] must be a number > 0, got 'x'"),
    Bad("bool_fisher", {"fisher": True}, r"fisher must be one of 'true', 'empirical', got True$"),
]


@pytest.mark.parametrize("bad", BAD, ids=lambda b: b.name)
def test_bad_value_raises_naming_it(bad: Bad) -> None:
    with pytest.raises(ValueError, match=bad.match):
        TKFACConfig(**bad.kwargs)


def test_enums_are_str_enums_taking_their_value_in_any_case() -> None:
    cfg = TKFACConfig(approximation="TKFAC_New", fisher="EMPIRICAL", loss_reduction="Sum")
    assert cfg.approximation is Approximation.TKFAC_NEW
    assert cfg.fisher is FisherType.EMPIRICAL
    assert cfg.loss_reduction is LossReduction.SUM
    assert f"{cfg.approximation}/{cfg.fisher}" == "tkfac_new/empirical"  # StrEnum: the value
    assert cfg == TKFACConfig(
        approximation=Approximation.TKFAC_NEW,
        fisher=FisherType.EMPIRICAL,
        loss_reduction=LossReduction.SUM,
    )


@dataclass(frozen=True)
class ScheduleCase:
    """A ``damping``/``lr`` argument, how it is stored and its values at steps 0, 1, 2, 10."""

    name: str
    value: Any
    stored: Any
    at: tuple[float, float, float, float]


SCHEDULES = [
    ScheduleCase("float", 0.5, 0.5, (0.5, 0.5, 0.5, 0.5)),
    ScheduleCase("int", 2, 2.0, (2.0, 2.0, 2.0, 2.0)),
    ScheduleCase("list", [0.3, 0.2, 0.1], (0.3, 0.2, 0.1), (0.3, 0.2, 0.1, 0.1)),
    ScheduleCase("tuple_of_ints", (1, 2), (1.0, 2.0), (1.0, 2.0, 2.0, 2.0)),
    ScheduleCase("one_step_list", [0.7], (0.7,), (0.7, 0.7, 0.7, 0.7)),
]


@pytest.mark.parametrize("case", SCHEDULES, ids=lambda c: c.name)
def test_per_step_values_of_damping_and_lr(case: ScheduleCase) -> None:
    cfg = TKFACConfig(lr=case.value, damping=case.value)
    for stored, at in [(cfg.damping, cfg.damping_at), (cfg.lr, cfg.lr_at)]:
        assert stored == case.stored and type(stored) is type(case.stored)
        assert tuple(at(t) for t in (0, 1, 2, 10)) == case.at


@pytest.mark.parametrize("field_name", ["damping", "lr"])
def test_callable_schedules_are_checked_when_evaluated(field_name: str) -> None:
    cfg = TKFACConfig(**{field_name: lambda t: 0.1 - 0.2 * t})
    at = cfg.damping_at if field_name == "damping" else cfg.lr_at
    assert at(0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=rf"{field_name}\(1\) must be > 0, got -0\.1"):
        at(1)
    with pytest.raises(ValueError, match="step must be an integer >= 0, got -1"):
        at(-1)


def test_lr_is_optional_for_the_mindspore_twin() -> None:
    cfg = TKFACConfig(damping=0.01)
    assert cfg.lr is None
    with pytest.raises(ValueError, match=r"lr is not set in this config \(lr=None\)"):
        cfg.lr_at(0)


@pytest.mark.parametrize(
    "value,want",
    [
        ("fc1", ("fc1",)),  # a string is one pattern, not its characters
        (["fc1", "layer*.conv2"], ("fc1", "layer*.conv2")),
        ((p for p in ("a", "b")), ("a", "b")),
        ((), ()),
    ],
)
def test_check_skip(value: Any, want: tuple[str, ...]) -> None:
    assert config.check_skip(value) == want


@pytest.mark.parametrize(
    "value,name,match",
    [
        ([0], "skip", r"skip must contain strings, got 0"),
        (["fc", None], "skip_layers", r"skip_layers must contain strings, got None"),
        (3, "skip", r"skip must be a name pattern or an iterable of name patterns, got 3"),
        (None, "skip_layers", r"skip_layers must be a name pattern .*, got None"),
        (b"fc1", "skip", r"skip must be a name pattern .*, got b'fc1'"),
    ],
)
def test_check_skip_rejects(value: Any, name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config.check_skip(value, name)


def test_check_decay_filter() -> None:
    def no_bias(name: str, param: object) -> bool:
        return not name.endswith("bias")

    assert config.check_decay_filter(None) is None
    assert config.check_decay_filter(no_bias) is no_bias
    with pytest.raises(
        ValueError, match=r"decay_filter must be a callable \(name, param\) -> bool or None, got 3"
    ):
        config.check_decay_filter(3)


def test_check_learning_rate() -> None:
    class Schedule:  # stands in for a MindSpore Tensor / LearningRateSchedule
        pass

    schedule = Schedule()
    per_step = [0.1, 0.05]
    assert config.check_learning_rate(0.1) == 0.1
    assert config.check_learning_rate(1) == 1.0
    assert config.check_learning_rate(per_step) is per_step
    assert config.check_learning_rate(schedule) is schedule
    for value, match in [
        (0.0, r"learning_rate must be > 0, got 0\.0"),
        (math.nan, r"learning_rate must be > 0, got nan"),
        (True, r"learning_rate must be a number > 0, got True"),
        ("0.1", r"learning_rate must be a number > 0, got '0\.1'"),
        (None, r"learning_rate must be a number > 0, got None"),
        ([], r"learning_rate must be a float > 0 or a non-empty per-step list, got \[\]"),
        ((0.1, 0.0), r"learning_rate\[1\] must be > 0, got 0\.0"),
    ]:
        with pytest.raises(ValueError, match=match):
            config.check_learning_rate(value)
    with pytest.raises(ValueError, match=r"lr must be > 0, got -1"):
        config.check_learning_rate(-1, "lr")

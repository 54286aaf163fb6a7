"""The model zoo's command line: --help everywhere, typed flags, one-line user errors, launchers.

Every subprocess here stops before training (help, or a user error), except the one tiny SGDM
run that the error cases need a checkpoint of, and one tiny parity case.
"""

from __future__ import annotations

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before MindSpore loads (see conftest)

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from zoo_helpers import ROOT, run, run_split

from model_zoo import train
from model_zoo.src.trainer import ConfigError, load_config, resolve_config
from model_zoo.src.trainer.config import FIELDS

CONFIG = ROOT / "model_zoo" / "config" / "digits_resnet20_tkfac_new.yaml"
SCRIPTS = ROOT / "scripts"
PY = sys.executable
TINY = [
    "--model",
    "mlp",
    "--image-size",
    "8",
    "--batch-size",
    "16",
    "--steps-per-epoch",
    "2",
    "--eval-steps",
    "1",
    "--optimizer",
    "momentum",
    "--epochs",
    "1",
]
ZOO_ENTRY_POINTS = {
    "train": [PY, "-m", "model_zoo.train"],
    "eval": [PY, "-m", "model_zoo.eval"],
    "run_standalone_train.sh": ["bash", str(SCRIPTS / "run_standalone_train.sh")],
    "run_distribute_train.sh": ["bash", str(SCRIPTS / "run_distribute_train.sh")],
    "run_eval.sh": ["bash", str(SCRIPTS / "run_eval.sh")],
    "train_default.sh": ["bash", str(SCRIPTS / "train_default.sh")],
}


# --- --help -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO_ENTRY_POINTS))
def test_help_exits_0_on_stdout_and_lists_every_field(name):
    result = run_split([*ZOO_ENTRY_POINTS[name], "--help"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = " ".join(result.stdout.split())  # argparse wraps the help text
    for field in FIELDS:
        assert "--" + field.replace("_", "-") in text, field
    assert text.count("default:") >= len(FIELDS)
    assert "{true,empirical}" in text and "{CPU,GPU,Ascend}" in text  # choices
    assert "one of: tkfac_new, tkfac_nor, kfac, momentum, adam" in text
    assert "stop the run (exit status 1)" in text  # help text, not just names
    if name.endswith(".sh"):
        assert "Usage: " in text  # the launcher's own options first


def test_help_defaults_come_from_the_config_file(capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--config", str(CONFIG), "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs N length of the run in epochs (default: 8)" in text  # the file's, not 200
    assert "--batch_size N global batch: N data-parallel workers" in text
    assert "(default: 64)" in text and "(default: 200)" not in text


@pytest.mark.slow
def test_parity_launcher_help_and_flags_reach_python_m_parity():
    result = run_split(["bash", str(SCRIPTS / "run_parity.sh"), "--help"], timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    for flag in ("--image-size", "--seed", "--stats", "--from-json", "--free-running"):
        assert flag in result.stdout
    # A flag the old launcher rejected with its own usage line reaches python -m parity.
    bad = run_split(
        ["bash", str(SCRIPTS / "run_parity.sh"), "--model", "mlp", "--approximation", "kfac"]
        + ["--stats", "bogus"],
        timeout=60,
    )
    assert bad.returncode == 2 and "argument --stats: invalid choice: 'bogus'" in bad.stderr


@pytest.mark.slow  # ~25 s on 2 cores: MindSpore and torch start-up, one parity step
def test_parity_launcher_resolves_paths_from_the_callers_directory(tmp_path):
    cmd = ["bash", str(SCRIPTS / "run_parity.sh"), "--model", "mlp", "--approximation", "kfac"]
    cmd += ["--steps", "1", "--batch", "2", "--image-size", "8", "--stats", "none"]
    cmd += ["--seed", "1", "--out", "tables", "--quiet"]
    result = run(cmd, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert json.loads((tmp_path / "tables" / "mlp_kfac.json").read_text())
    assert not (ROOT / "tables").exists()


# --- parsing ------------------------------------------------------------------------------------


def test_abbreviated_flags_are_rejected_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--config", str(CONFIG), "--epoch", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unrecognized arguments: --epoch 1")


def test_booleans_and_enums_parse_as_documented(tmp_path, capsys):
    args = train.parse_args(["--config", str(CONFIG), "--fisher", "true", "--device", "cpu"])
    cfg, _ = train.build_config(args)
    assert (cfg.fisher, cfg.device) == ("true", "CPU")
    args = train.parse_args(["--fisher", "empirical", "--kl-clip", "null", "--lr", "1e-3"])
    cfg, _ = train.build_config(args)
    assert (cfg.fisher, cfg.kl_clip, cfg.lr) == ("empirical", None, 1e-3)
    args = train.parse_args(["--model-args", "{hidden: [64]}", "--image-size", "none"])
    cfg, _ = train.build_config(args)
    assert cfg.model_args == {"hidden": [64]} and cfg.image_size is None
    # In a config file, an unquoted `fisher: true` is YAML's boolean: it names the true Fisher.
    path = tmp_path / "run.yaml"
    path.write_text("fisher: true\n")
    assert resolve_config(load_config(path)).fisher == "true"
    path.write_text("fisher: false\n")
    with pytest.raises(ConfigError, match="fisher must be"):
        resolve_config(load_config(path))
    for bad in (["--fisher", "yes"], ["--epochs", "two"], ["--optimizer", "sgd"]):
        with pytest.raises(SystemExit) as exc:
            train.parse_args(bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: argument {bad[0]}")


# --- user errors --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "mlp"
    cmd = [PY, "-m", "model_zoo.train", "--config", str(CONFIG), *TINY, "--output", str(out)]
    result = run(cmd, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    return out


def _user_error_cases(run_dir: Path, tmp: Path) -> dict[str, list[str]]:
    train_cmd = [PY, "-m", "model_zoo.train", "--config", str(CONFIG), *TINY]
    eval_cmd = [PY, "-m", "model_zoo.eval"]
    blocker = tmp / "a_file"
    blocker.write_text("")
    corrupt = tmp / "corrupt.ckpt"
    data = (run_dir / "checkpoints" / "epoch_0001.ckpt").read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    # The run's folder, its config.yaml saying small_cnn: its checkpoints are of another network.
    other = tmp / "other"
    shutil.copytree(run_dir, other)
    for p in other.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    saved = yaml.safe_load((other / "config.yaml").read_text())
    saved["model"] = "small_cnn"
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    return {
        "device GPU on a CPU build": [*train_cmd, "--device", "GPU", "--output", str(tmp / "x")],
        "unwritable output": [*train_cmd, "--output", str(blocker / "run")],
        "unknown flag": [*train_cmd, "--no-such-field", "1"],
        "resume with another network's checkpoint": [
            PY,
            "-m",
            "model_zoo.train",
            "--output",
            str(other),
            "--resume",
            "--epochs",
            "2",
        ],
        "eval with another network": [
            *eval_cmd,
            "--checkpoint",
            str(run_dir),
            "--model",
            "small_cnn",
        ],
        "eval of a corrupted checkpoint": [
            *eval_cmd,
            "--checkpoint",
            str(corrupt),
            "--config",
            str(run_dir / "config.yaml"),
        ],
        "eval of a missing checkpoint": [*eval_cmd, "--checkpoint", str(tmp / "none.ckpt")],
        "eval launcher, device GPU": [
            "bash",
            str(SCRIPTS / "run_eval.sh"),
            "--checkpoint",
            str(run_dir),
            "--device",
            "GPU",
        ],
        "standalone launcher without --config": [
            "bash",
            str(SCRIPTS / "run_standalone_train.sh"),
            "--device",
            "CPU",
        ],
        "distribute launcher, bad --workers": [
            "bash",
            str(SCRIPTS / "run_distribute_train.sh"),
            "--workers",
            "two",
            "--config",
            str(CONFIG),
        ],
    }


CASES = [
    ("device GPU on a CPU build", "device GPU is not available"),
    ("unwritable output", "cannot create the output folder"),
    ("unknown flag", "unrecognized arguments: --no-such-field"),
    ("resume with another network's checkpoint", "does not match this run"),
    ("eval with another network", "does not match this run"),
    ("eval of a corrupted checkpoint", "not a readable MindSpore checkpoint"),
    ("eval of a missing checkpoint", "checkpoint not found"),
    ("eval launcher, device GPU", "device GPU is not available"),
    ("standalone launcher without --config", "--config FILE is required"),
    ("distribute launcher, bad --workers", "--workers must be a positive integer"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, message", CASES, ids=[c for c, _ in CASES])
def test_user_errors_are_one_error_line_with_status_2(mlp_run, tmp_path, case, message):
    cmd = _user_error_cases(mlp_run, tmp_path)[case]
    result = run_split(cmd, timeout=120)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    err = result.stderr
    assert err.count("\n") == 1 and err.startswith("error: "), err[-3000:]
    assert message in err
    assert "Traceback" not in result.stdout + err
    assert not (tmp_path / "x").exists()  # nothing created for a run that could not start

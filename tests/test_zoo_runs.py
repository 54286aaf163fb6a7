"""Model-zoo run folders: one live run per folder, nothing of an earlier run lost or mixed.

The end-to-end runs are tiny (an MLP on 8x8 digits, two steps of batch 16): a few seconds each,
most of it MindSpore's start-up. Concurrency is made deterministic by stopping a run
(``SIGSTOP``) while it holds its folder, and a run is killed during its graph compilation by
``SIGKILL`` right after it announces its first step.
"""

from __future__ import annotations

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before MindSpore loads (see conftest)

import csv
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import yaml
from mindspore import Parameter, Tensor, nn
from mindspore import dtype as mstype
from mindspore.train import RunContext
from zoo_helpers import ROOT, kill, read_until, run, start

import tkfac_ms
from model_zoo.src.trainer import RunParams, load_checkpoint_for_resume, save_checkpoint_atomic
from model_zoo.src.trainer.callbacks import NonfiniteMonitor
from model_zoo.src.trainer.rundir import (
    LOCK_NAME,
    RunFolderError,
    RunLock,
    remove_stale_temps,
    temp_name,
)

CONFIG = ROOT / "model_zoo" / "config" / "digits_resnet20_tkfac_new.yaml"
TRAIN = [sys.executable, "-m", "model_zoo.train"]
TINY = [
    "--config",
    str(CONFIG),
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
    "--log-interval",
    "1",
]


@pytest.fixture(autouse=True, scope="module")
def _graph_mode():
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """One finished epoch of a tiny SGDM run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("runs") / "first"
    result = run(
        [*TRAIN, *TINY, "--optimizer", "momentum", "--epochs", "1", "--output", str(out)], 120
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert not (out / LOCK_NAME).exists()  # released at the end
    return out


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    for p in dest.rglob("*"):  # MindSpore writes checkpoints read-only
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


# --- the lock -----------------------------------------------------------------------------------


def test_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path):
    notes: list[str] = []
    first = RunLock(tmp_path / "run", log=notes.append).acquire()
    assert f"pid={os.getpid()}" in (tmp_path / "run" / LOCK_NAME).read_text()
    with pytest.raises(RunFolderError, match=rf"in use by another run \(PID {os.getpid()}"):
        RunLock(tmp_path / "run").acquire()  # a second open file description: refused
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()

    dead = _dead_pid()
    (tmp_path / "run" / LOCK_NAME).write_text(f"pid={dead}\nhost=elsewhere\n")
    with RunLock(tmp_path / "run", log=notes.append):
        assert f"pid={os.getpid()}" in (tmp_path / "run" / LOCK_NAME).read_text()
    assert notes and "stale lock" in notes[0] and f"PID {dead}" in notes[0]


def test_unwritable_output_folder_is_a_run_folder_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunFolderError, match="cannot create the output folder"):
        RunLock(blocker / "run").acquire()


# --- temporary files and checkpoints --------------------------------------------------------------


def _tiny_cell(out_features: int = 2):
    ms.set_seed(0)
    net = nn.SequentialCell([nn.Dense(3, 4), nn.Dense(4, out_features)])
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    return net, nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)


def test_temp_names_are_unique_and_cleanup_spares_live_writers(tmp_path):
    final = tmp_path / "checkpoints" / "epoch_0002.ckpt"
    a, b = temp_name(final, ".ckpt"), temp_name(final, ".ckpt")
    assert a != b and f".{os.getpid()}-" in a.name and a.parent == final.parent
    final.parent.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = final.with_name(f".epoch_0001.ckpt.{sleeper.pid}-0123abcd.tmp.ckpt")
        dead = final.with_name(f".epoch_0001.ckpt.{_dead_pid()}-0123abcd.tmp.ckpt")
        mine = final.with_name(f".metrics.csv.{os.getpid()}-0123abcd.tmp")
        for p in (live, dead, mine):
            p.write_bytes(b"partial")
        _, cell = _tiny_cell()
        save_checkpoint_atomic(cell, final, 2, 2)  # cleans up the dead writer's file only
        assert final.is_file() and live.exists() and mine.exists() and not dead.exists()
        assert remove_stale_temps(final.parent) == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temps(final.parent) == [live]


def test_checkpoint_of_another_shape_is_refused_before_any_parameter_is_written(tmp_path):
    _, cell = _tiny_cell(out_features=2)
    path = save_checkpoint_atomic(cell, tmp_path / "epoch_0001.ckpt", 1, 1)
    net, other = _tiny_cell(out_features=5)  # same names; the first layer fits, the second not
    for p in net.trainable_params():
        p.set_data(Tensor(np.full(p.shape, 7.0, np.float32)))
    before = {p.name: p.asnumpy().copy() for p in other.get_parameters()}
    with pytest.raises(ValueError, match=r"another shape.*\(2, 4\).*\(5, 4\).*Nothing was loaded"):
        load_checkpoint_for_resume(path, other)
    changed = [
        p.name for p in other.get_parameters() if not np.array_equal(p.asnumpy(), before[p.name])
    ]
    assert changed == []


def test_checkpoint_of_another_approximation_is_refused_before_any_parameter_is_written(
    tmp_path,
):
    def tkfac_cell(approximation):
        ms.set_seed(0)
        net = nn.SequentialCell([nn.Dense(3, 4), nn.Dense(4, 2)])
        opt = tkfac_ms.TKFAC(net, 0.1, approximation=approximation, fisher="empirical")
        return tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)

    path = save_checkpoint_atomic(tkfac_cell("tkfac_nor"), tmp_path / "epoch_0001.ckpt", 1, 1)
    other = tkfac_cell("kfac")
    before = {p.name: p.asnumpy().copy() for p in other.get_parameters()}
    with pytest.raises(
        ValueError, match="approximation 'tkfac_nor' in the checkpoint, 'kfac' here"
    ):
        load_checkpoint_for_resume(path, other)
    assert all(np.array_equal(p.asnumpy(), before[p.name]) for p in other.get_parameters())
    load_checkpoint_for_resume(path, tkfac_cell("tkfac_nor"))  # the same configuration loads


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "epoch_0001.ckpt"
    bad.write_bytes(os.urandom(2048))
    _, cell = _tiny_cell()
    with pytest.raises(ValueError, match="not a readable MindSpore checkpoint"):
        load_checkpoint_for_resume(bad, cell)


# --- non-finite steps ---------------------------------------------------------------------------


class _CountingCell:
    def __init__(self):
        self.nonfinite_steps = Parameter(Tensor(0, mstype.int32), name="tkfac.nonfinite_steps")


@pytest.mark.parametrize(
    "losses, skipped, limit, stops",
    [
        ([1.0, math.nan, math.nan, 1.0], 2, 0.25, "2 of epoch 1's 4 steps were skipped"),
        ([1.0, math.nan, math.nan, 1.0], 2, 0.5, None),
        ([1.0, math.nan, math.nan, 1.0], 2, None, None),
        ([math.nan] * 4, 4, None, "not finite in any of epoch 1's 4 steps"),
    ],
)
def test_nonfinite_monitor_counts_skips_and_stops_a_diverged_run(losses, skipped, limit, stops):
    cell = _CountingCell()
    cell.nonfinite_steps.set_data(Tensor(3, mstype.int32))  # skips of earlier epochs
    p = RunParams(train_network=cell, cur_epoch_num=1)
    ctx = RunContext(p)
    monitor = NonfiniteMonitor(limit)
    monitor.on_train_epoch_begin(ctx)
    for loss in losses:
        p.loss = loss
        monitor.on_train_step_end(ctx)
    cell.nonfinite_steps.set_data(Tensor(3 + skipped, mstype.int32))
    monitor.on_train_epoch_end(ctx)
    assert p.skipped_steps == skipped
    assert ctx.get_stop_requested() == (stops is not None)
    if stops:
        assert stops in p.diverged
    else:
        assert p.diverged is None


@pytest.mark.slow
def test_diverged_run_stops_with_status_1_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "diverged"
    # lr 1e30: the first step blows the weights up, every later step is non-finite and
    # skipped by TKFAC's train cell. Epoch 1 (3 of 4 skipped) is under the 0.9 limit and is
    # saved; in epoch 2 no loss is finite, and the run stops.
    cmd = [*TRAIN, *TINY, "--steps-per-epoch", "4", "--log-interval", "4", "--lr", "1e30"]
    cmd += ["--max-skipped-fraction", "0.9", "--epochs", "3", "--output", str(out)]
    result = run(cmd, 180)
    assert result.returncode == 1, result.stdout[-3000:]
    text = result.stdout
    assert "epoch 1/3 done" in text and "skipped 3/4 non-finite steps" in text
    assert "stopped: training diverged in epoch 2" in text and "not finite in any" in text
    assert "epoch_0001.ckpt" in text.split("stopped:")[1]  # names the last good checkpoint
    assert "done: 3 epochs" not in text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001.ckpt"]
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["epoch"], r["skipped_steps"]) for r in rows] == [("1", "3"), ("2", "4")]
    params = ms.load_checkpoint(str(out / "checkpoints" / "epoch_0001.ckpt"))
    assert all(np.isfinite(v.asnumpy()).all() for v in params.values())


# --- whole runs -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_new_run_leaves_a_folder_holding_a_run_alone(first_run, tmp_path):
    out = _copy(first_run, tmp_path / "run")
    before = _snapshot(out)
    result = run([*TRAIN, *TINY, "--optimizer", "adam", "--epochs", "1", "--output", str(out)], 120)
    assert result.returncode == 2
    assert "error: " in result.stdout and "already holds a run" in result.stdout
    assert "--resume" in result.stdout
    assert _snapshot(out) == before


@pytest.mark.slow
def test_resume_reads_the_saved_config_and_flags_override_it(first_run, tmp_path):
    out = _copy(first_run, tmp_path / "run")
    # Neither --config nor the original overrides: they come from the run's config.yaml.
    result = run([*TRAIN, "--output", str(out), "--resume", "--epochs", "2"], 120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "mlp on digits with momentum" in result.stdout
    assert "resumed from" in result.stdout and "epoch 1, step 2" in result.stdout
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["model"], saved["optimizer"], saved["image_size"]) == ("mlp", "momentum", 8)
    assert saved["epochs"] == 2
    assert (out / "checkpoints" / "epoch_0002.ckpt").is_file()
    # A setting that would change the trajectory is refused, naming the saved value.
    refused = run([*TRAIN, "--resume", str(out), "--epochs", "3", "--lr", "0.5"], 120)
    assert refused.returncode == 2 and "lr: 0.1 -> 0.5" in refused.stdout


@pytest.mark.slow
def test_run_killed_during_compile_keeps_the_earlier_checkpoints(first_run, tmp_path):
    out = _copy(first_run, tmp_path / "run")
    before = _snapshot(out)
    proc = start([*TRAIN, "--output", str(out), "--resume", "--epochs", "2"])
    read_until(proc, "the first step compiles the graph", timeout=120)
    assert (out / LOCK_NAME).is_file()
    kill(proc)  # SIGKILL while the graph compiles
    assert proc.returncode == -signal.SIGKILL
    after = _snapshot(out)
    # Every checkpoint and metrics file intact (config.yaml holds the resumed settings).
    assert {k: after[k] for k in before if k != "config.yaml"} == {
        k: v for k, v in before.items() if k != "config.yaml"
    }
    assert f"pid={proc.pid}" in (out / LOCK_NAME).read_text()  # a stale lock is left

    again = run([*TRAIN, "--output", str(out), "--resume", "--epochs", "2"], 120)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "taking over the stale lock" in again.stdout and f"PID {proc.pid}" in again.stdout
    assert (out / "checkpoints" / "epoch_0002.ckpt").is_file()
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_concurrent_runs_on_one_folder(tmp_path):
    out = tmp_path / "run"
    owner = start([*TRAIN, *TINY, "--optimizer", "momentum", "--epochs", "1", "--output", str(out)])
    try:
        read_until(owner, "the first step compiles the graph", timeout=120)
        os.kill(owner.pid, signal.SIGSTOP)  # hold the folder for as long as the test needs
        for extra in ([], ["--resume"]):
            other = run([*TRAIN, *TINY, "--optimizer", "adam", "--output", str(out), *extra], 120)
            assert other.returncode == 2, other.stdout[-3000:]
            assert f"in use by another run (PID {owner.pid}" in other.stdout
        os.kill(owner.pid, signal.SIGCONT)
        rest, _ = owner.communicate(timeout=120)
    finally:
        if owner.poll() is None:
            os.kill(owner.pid, signal.SIGCONT)
            kill(owner)
    assert owner.returncode == 0, rest[-3000:]
    assert yaml.safe_load((out / "config.yaml").read_text())["optimizer"] == "momentum"
    info = yaml.safe_load((out / "metrics.json").read_text())["run"]
    assert info["optimizer"] == "momentum"
    assert not (out / LOCK_NAME).exists()

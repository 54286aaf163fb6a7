"""Model-zoo training: configs, schedules, every network x optimizer, launchers, exact resume.

Costs on the 2-core CI machine are dominated by graph compilation (a TKFAC graph of ResNet-20
compiles in ~15 s, ResNet-56 in ~65 s, VGG16-BN in ~37 s plus ~86 s for its first inverse
step, ResNet-50 in ~115 s plus ~69 s). So in CI the TKFAC / KFAC x network matrix runs on the
small networks (mlp, small_cnn; ResNet-20 runs TKFAC_new in the main command and KFAC in the
resume test), and every network runs with SGDM and Adam. ``ZOO_FULL_MATRIX=1`` runs all of it.
"""

from __future__ import annotations

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before MindSpore loads (see conftest)

import csv
import json
import math
import shutil
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import yaml
from mindspore import Tensor, nn
from zoo_helpers import ROOT, free_port, run, run_split

from model_zoo.src.models import MODELS, create_model
from model_zoo.src.trainer import (
    OPTIMIZERS,
    SECOND_ORDER,
    ConfigError,
    TrainConfig,
    create_lr,
    create_optimizer,
    create_train_cell,
    latest_checkpoint,
    load_checkpoint_for_resume,
    load_config,
    resolve_config,
    save_checkpoint_atomic,
)
from model_zoo.src.trainer import checkpoint as ckpt_module
from model_zoo.src.trainer.plot import load_run, plot_runs
from model_zoo.src.trainer.plot import main as plot_main

CONFIG_DIR = ROOT / "model_zoo" / "config"
DEFAULT_CONFIG = CONFIG_DIR / "digits_resnet20_tkfac_new.yaml"
PAPER_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p != DEFAULT_CONFIG)
SCRIPTS = ROOT / "scripts"
FULL_MATRIX = os.environ.get("ZOO_FULL_MATRIX") == "1"
CI_SECOND_ORDER_NETS = {"mlp", "small_cnn"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Tiny training settings shared by the end-to-end runs.
TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--eval-steps", "1", "--batch-size", "16"]


@pytest.fixture(autouse=True, scope="module")
def _graph_mode():
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)


# --- configs and schedules ----------------------------------------------------------------------


def test_config_precedence_defaults_file_optimizer_block_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: small_cnn\nlr: 0.5\ndamping: 0.01\noptimizer: kfac\n"
        "optimizers:\n  kfac: {lr: 0.2}\n  adam: {lr: 0.001, lr_decay_epochs: 60}\n"
    )
    raw = load_config(path)
    cfg = resolve_config(raw, stem="run")
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.damping) == ("small_cnn", "kfac", 0.2, 0.01)
    assert cfg.epochs == TrainConfig.epochs and cfg.output_dir == "outputs/run"
    cfg = resolve_config(raw, {"optimizer": "adam"})
    assert (cfg.lr, cfg.lr_decay_epochs) == (0.001, 60)
    cfg = resolve_config(raw, {"optimizer": "adam", "lr": 0.003, "output_dir": "x"})
    assert (cfg.lr, cfg.output_dir) == (0.003, "x")


@pytest.mark.parametrize(
    "text, overrides, match",
    [
        ("lr: 0.1\nbogus: 1\n", {}, "unknown key.*bogus"),
        ("optimizers:\n  kfac: {dampin: 1}\n", {}, "optimizers.kfac.*dampin"),
        ("", {"epochs": "ten"}, "epochs must be int"),
        ("", {"batch_size": 0}, "batch_size must be >= 1"),
        ("", {"device": "TPU"}, "device must be one of"),
        ("", {"lr_decay_factor": 2}, "lr_decay_factor"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, overrides, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config(load_config(path), overrides)


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_hold_the_paper_settings(path):
    raw = load_config(path)
    assert set(raw["optimizers"]) == set(OPTIMIZERS)
    for name in OPTIMIZERS:
        cfg = resolve_config(raw, {"optimizer": name})
        assert cfg.model in MODELS
        assert (cfg.batch_size, cfg.epochs, cfg.momentum, cfg.weight_decay) == (128, 200, 0.9, 0)
        assert (cfg.factor_decay, cfg.factor_update_steps, cfg.inv_update_steps) == (0.95, 100, 100)
        assert (cfg.lr_schedule, cfg.lr_decay_factor) == ("step", 0.1)
        assert cfg.lr_decay_epochs == (40 if name in SECOND_ORDER else 60), name
    assert "grid search" in path.read_text()


def test_step_schedule_decays_every_40_or_60_epochs():
    raw = load_config(CONFIG_DIR / "cifar10_resnet20.yaml")
    tk = create_lr(resolve_config(raw, {"optimizer": "tkfac_new"}), steps_per_epoch=2)
    sgd = create_lr(resolve_config(raw, {"optimizer": "momentum"}), steps_per_epoch=2)
    assert len(tk) == len(sgd) == 400
    assert tk[79] == 0.1 and tk[80] == pytest.approx(0.01) and tk[160] == pytest.approx(1e-3)
    assert sgd[119] == 0.1 and sgd[120] == pytest.approx(0.01) and sgd[240] == pytest.approx(1e-3)
    warm = create_lr(TrainConfig(epochs=3, lr=0.3, warmup_epochs=1), steps_per_epoch=3)
    assert warm[:3] == pytest.approx([0.1, 0.2, 0.3]) and warm[3] == 0.3
    cos = create_lr(TrainConfig(epochs=2, lr=1.0, lr_schedule="cosine"), steps_per_epoch=2)
    assert cos == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 - 0.7071)], 1e-4
    )


# --- every network x optimizer: two steps ---------------------------------------------------------

NET_INPUT = {  # small inputs; VGG16 and ResNet-50 need 32x32 to keep a spatial extent
    "mlp": (16, {"in_dim": 3 * 16 * 16, "hidden": (16,)}),
    "small_cnn": (16, {"image_size": 16}),
    "resnet20": (16, {}),
    "resnet32": (16, {}),
    "resnet56": (16, {}),
    "vgg16_bn": (32, {}),
    "resnet50": (32, {}),
}


def _matrix():
    for model in MODELS:
        for optimizer in OPTIMIZERS:
            heavy = optimizer in SECOND_ORDER and model not in CI_SECOND_ORDER_NETS
            marks = (
                [pytest.mark.skip(reason="heavy TKFAC graph; ZOO_FULL_MATRIX=1 runs it")]
                if heavy and not FULL_MATRIX
                else []
            )
            yield pytest.param(model, optimizer, id=f"{model}-{optimizer}", marks=marks)


def test_matrix_covers_every_registered_network_and_optimizer():
    ids = {(p.values[0], p.values[1]) for p in _matrix()}
    assert ids == {(m, o) for m in MODELS for o in OPTIMIZERS}
    assert set(NET_INPUT) == set(MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("model, optimizer", list(_matrix()))
def test_every_network_and_optimizer_trains_two_steps(model, optimizer):
    size, kwargs = NET_INPUT[model]
    ms.set_seed(0)
    net = create_model(model, num_classes=10, **kwargs)
    cfg = TrainConfig(model=model, optimizer=optimizer, epochs=1, lr=0.01)
    opt = create_optimizer(cfg, net, create_lr(cfg, steps_per_epoch=2))
    cell = create_train_cell(net, nn.CrossEntropyLoss(), opt)
    cell.set_train()
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(2):  # TKFAC: step 0 updates factors and inverses, step 1 only preconditions
        x = Tensor(rng.standard_normal((4, 3, size, size)).astype(np.float32))
        y = Tensor(rng.integers(0, 10, 4).astype(np.int32))
        losses.append(float(cell(x, y).asnumpy()))
    assert all(math.isfinite(v) for v in losses), losses
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 2
    unchanged = [
        p.name for p in net.trainable_params() if np.array_equal(p.asnumpy(), before[p.name])
    ]
    assert unchanged == [], f"{model}/{optimizer} left {unchanged} untouched"


# --- checkpoints ------------------------------------------------------------------------------


def _tiny_cell():
    ms.set_seed(0)
    net = nn.Dense(3, 2)
    opt = nn.Momentum(net.trainable_params(), learning_rate=[0.1, 0.1, 0.1], momentum=0.9)
    return nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)


def test_checkpoint_write_is_atomic_and_crash_leaves_the_last_good_one(tmp_path, monkeypatch):
    cell = _tiny_cell()
    x, y = Tensor(np.ones((2, 3), np.float32)), Tensor(np.array([0, 1], np.int32))
    cell(x, y)
    good = save_checkpoint_atomic(cell, tmp_path / "checkpoints" / "epoch_0001.ckpt", 1, 1)
    cell(x, y)

    def crash(obj, name, **kwargs):  # dies half way through writing
        Path(name).write_bytes(b"\x00" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.ms, "save_checkpoint", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint_atomic(cell, tmp_path / "checkpoints" / "epoch_0002.ckpt", 2, 2)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoints" / "epoch_0002.ckpt").exists()
    assert latest_checkpoint(tmp_path) == good
    fresh = _tiny_cell()
    assert load_checkpoint_for_resume(good, fresh) == (1, 1)
    # The next good save removes the partial temporary file; `keep` prunes old epochs.
    for epoch in (2, 3):
        save_checkpoint_atomic(
            cell, tmp_path / "checkpoints" / f"epoch_{epoch:04d}.ckpt", epoch, epoch, keep=2
        )
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch_0002.ckpt", "epoch_0003.ckpt"]


def test_resume_rejects_a_checkpoint_of_another_network(tmp_path):
    cell = _tiny_cell()
    path = save_checkpoint_atomic(cell, tmp_path / "epoch_0001.ckpt", 1, 1)
    ms.set_seed(0)
    net = nn.Dense(3, 2, has_bias=False)
    other = nn.TrainOneStepCell(
        nn.WithLossCell(net, nn.CrossEntropyLoss()), nn.Adam(net.trainable_params(), 0.1)
    )
    with pytest.raises(ValueError, match="does not match this run"):
        load_checkpoint_for_resume(path, other)


# --- plots --------------------------------------------------------------------------------------


def _fake_run(folder: Path, optimizer: str, acc: list[float]) -> Path:
    folder.mkdir(parents=True)
    epochs = [
        {
            "epoch": i + 1,
            "step": 2 * (i + 1),
            "train_loss": 1 / (i + 1),
            "test_loss": 1.2 / (i + 1),
            "test_acc": a,
        }
        for i, a in enumerate(acc)
    ]
    steps = [{"epoch": e["epoch"], "step": e["step"], "loss": e["train_loss"]} for e in epochs]
    doc = {
        "run": {
            "model": "resnet20",
            "dataset": "digits",
            "optimizer": optimizer,
            "steps_per_epoch": 2,
        },
        "epochs": epochs,
        "steps": steps,
    }
    (folder / "metrics.json").write_text(json.dumps(doc))
    return folder


def test_plot_tool_puts_optimizers_side_by_side(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", "tkfac_new", [0.5, 0.8, 0.9])
    b = _fake_run(tmp_path / "b", "momentum", [0.4, 0.7, 0.85])
    out = tmp_path / "compare.png"
    assert plot_main([str(a), str(b / "metrics.json"), "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert str(out) in capsys.readouterr().out
    single = plot_runs([load_run(a)], tmp_path / "one.png")
    assert single.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        load_run(tmp_path / "missing")


# --- command-line errors ------------------------------------------------------------------------


def test_train_rejects_unknown_override_and_mismatched_resume(tmp_path, capsys):
    from model_zoo import train

    with pytest.raises(SystemExit) as exc:
        train.main(["--config", str(DEFAULT_CONFIG), "--no-such-field", "1"])
    assert exc.value.code == 2
    out = tmp_path / "run"
    out.mkdir()
    cfg = resolve_config(load_config(DEFAULT_CONFIG), {"output_dir": str(out)})
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    status = train.main(
        ["--config", str(DEFAULT_CONFIG), "--output", str(out), "--lr", "0.5", "--resume"]
    )
    assert status == 2
    assert "lr: 0.1 -> 0.5" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "run_standalone_train.sh",
            ["--device", "TPU", "--config", str(DEFAULT_CONFIG)],
            "argument --device: invalid choice: 'TPU'",
        ),
        ("run_standalone_train.sh", ["--device", "CPU"], "--config FILE is required"),
        ("run_distribute_train.sh", ["--workers", "two", "--device", "CPU"], "--workers must be"),
        ("run_eval.sh", ["--device", "CPU", "stray"], "required: --checkpoint"),
    ],
)
def test_scripts_reject_bad_input_with_one_error_line(script, args, message):
    result = run_split(["bash", str(SCRIPTS / script), *args], timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = [
        "run_standalone_train.sh",
        "run_distribute_train.sh",
        "run_eval.sh",
        "run_parity.sh",
        "train_default.sh",
    ]
    result = run(["shellcheck", *(str(SCRIPTS / s) for s in scripts)], timeout=60)
    assert result.returncode == 0, result.stdout


# --- end to end -------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.slow  # a training run of a minute or more on 2 cores
def test_main_command_trains_resnet20_tkfac_new_and_says_where_outputs_went(tmp_path):
    out = tmp_path / "main"
    result = run(["bash", str(SCRIPTS / "train_default.sh"), "--output", str(out), *TINY], 240)
    assert result.returncode == 0, result.stdout[-4000:]
    text = result.stdout
    assert "resnet20 on digits with tkfac_new" in text
    for label, path in [
        ("checkpoint:", out / "checkpoints" / "epoch_0001.ckpt"),
        ("metrics:", out / "metrics.csv"),
        ("plot:", out / "curves.png"),
    ]:
        assert f"{label}" in text and str(path) in text, (label, text[-1500:])
        assert path.is_file()
    assert "test_acc" in text and "ms/step" in text and "ETA" in text
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert len(_read_csv(out / "metrics.csv")) == 1


# The resume runs: ResNet-20 (BatchNorm running statistics are part of the state) with KFAC,
# the empirical Fisher (the sampled labels of the true Fisher come from MindSpore's RNG, whose
# state is not in a checkpoint), factors and inverses every 2 steps, so the resumed epoch crosses
# a factor step.
RESUME = [
    "--optimizer",
    "kfac",
    "--fisher",
    "empirical",
    "--image-size",
    "16",
    "--batch-size",
    "8",
    "--steps-per-epoch",
    "3",
    "--eval-steps",
    "1",
    "--factor-update-steps",
    "2",
    "--inv-update-steps",
    "2",
    "--log-interval",
    "1",
]


@pytest.fixture(scope="module")
def standalone_run(tmp_path_factory) -> Path:
    """The uninterrupted 2-epoch run, through scripts/run_standalone_train.sh."""
    out = tmp_path_factory.mktemp("standalone") / "run"
    cmd = [
        "bash",
        str(SCRIPTS / "run_standalone_train.sh"),
        "--device",
        "CPU",
        "--config",
        str(DEFAULT_CONFIG),
        "--output",
        str(out),
        "--epochs",
        "2",
        *RESUME,
    ]
    result = run(cmd, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.slow  # a training run of a minute or more on 2 cores
def test_standalone_script_writes_checkpoints_metrics_and_plot(standalone_run):
    out = standalone_run
    assert [p.name for p in sorted((out / "checkpoints").glob("*.ckpt"))] == [
        "epoch_0001.ckpt",
        "epoch_0002.ckpt",
    ]
    rows = _read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [3, 6]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["run"]["optimizer"] == "kfac" and len(doc["steps"]) == 6
    assert yaml.safe_load((out / "config.yaml").read_text())["fisher"] == "empirical"
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
@pytest.mark.slow  # a training run of a minute or more on 2 cores
def test_resume_continues_bit_identically(standalone_run, tmp_path):
    out = tmp_path / "resumed"
    base = [
        "bash",
        str(SCRIPTS / "run_standalone_train.sh"),
        "--device",
        "CPU",
        "--config",
        str(DEFAULT_CONFIG),
        "--output",
        str(out),
        *RESUME,
    ]
    first = run([*base, "--epochs", "1"], timeout=240)
    assert first.returncode == 0, first.stdout[-4000:]
    second = run([*base, "--epochs", "2", "--resume"], timeout=240)
    assert second.returncode == 0, second.stdout[-4000:]
    assert "resumed from" in second.stdout and "epoch 1, step 3" in second.stdout

    want = ms.load_checkpoint(str(standalone_run / "checkpoints" / "epoch_0002.ckpt"))
    got = ms.load_checkpoint(str(out / "checkpoints" / "epoch_0002.ckpt"))
    assert want.keys() == got.keys()
    assert any(".tkfac.a_inv" in k for k in want) and "global_step" in want
    assert any("moving_mean" in k for k in want)  # BatchNorm running statistics
    differ = [k for k in want if not np.array_equal(want[k].asnumpy(), got[k].asnumpy())]
    assert differ == [], f"resumed run differs in {differ}"
    keys = ("epoch", "step", "lr", "train_loss", "test_loss", "test_acc")
    rows_want = [{k: r[k] for k in keys} for r in _read_csv(standalone_run / "metrics.csv")]
    rows_got = [{k: r[k] for k in keys} for r in _read_csv(out / "metrics.csv")]
    assert rows_got == rows_want


@pytest.mark.slow
@pytest.mark.slow  # a training run of a minute or more on 2 cores
def test_eval_script_reproduces_the_last_epoch_evaluation(standalone_run, tmp_path):
    result_file = tmp_path / "eval.json"
    cmd = [
        "bash",
        str(SCRIPTS / "run_eval.sh"),
        "--device",
        "CPU",
        "--checkpoint",
        str(standalone_run),
        "--eval-steps",
        "1",
        "--json",
        str(result_file),
    ]
    result = run(cmd, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]
    got = json.loads(result_file.read_text())
    last = _read_csv(standalone_run / "metrics.csv")[-1]
    assert got["epoch"] == 2 and got["checkpoint"].endswith("epoch_0002.ckpt")
    assert got["test_acc"] == pytest.approx(float(last["test_acc"]), abs=1e-12)
    assert got["test_loss"] == pytest.approx(float(last["test_loss"]), rel=1e-5)


@pytest.mark.slow
@pytest.mark.slow  # a training run of a minute or more on 2 cores
def test_distribute_script_trains_on_two_msrun_workers(tmp_path):
    out = tmp_path / "dist"
    cmd = [
        "bash",
        str(SCRIPTS / "run_distribute_train.sh"),
        "--workers",
        "2",
        "--device",
        "CPU",
        "--config",
        str(DEFAULT_CONFIG),
        "--output",
        str(out),
        "--port",
        str(free_port()),
        "--model",
        "small_cnn",
        *TINY,
    ]
    result = run(cmd, timeout=240)
    logs = {p.name: p.read_text() for p in (out / "msrun_logs").glob("worker_*.log")}
    assert result.returncode == 0, result.stdout[-3000:] + "".join(logs.values())[-3000:]
    assert set(logs) == {"worker_0.log", "worker_1.log"}
    assert "[rank 1/2]" in logs["worker_1.log"] and "epoch 1/1 done" in logs["worker_1.log"]
    assert "8 per worker x 2" in logs["worker_0.log"]
    assert (out / "checkpoints" / "epoch_0001.ckpt").is_file()
    assert json.loads((out / "metrics.json").read_text())["run"]["world_size"] == 2

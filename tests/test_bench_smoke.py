"""Smoke tests of the benchmark scripts (bench/): each runs on a tiny setting, in-process.

They catch breakage of the scripts (APIs they use, result files, figures), and check what can
be checked on a tiny run: Theorem 4's bound, finite numbers, sane accuracies. The real results
are in docs/benchmarks.md. The whole module takes well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def out(tmp_path):
    return ["--results", str(tmp_path / "results"), "--img", str(tmp_path / "img")]


def _png(path: str | Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


def _load(res: dict, name: str, tmp_path: Path) -> dict:
    data = json.loads((tmp_path / "results" / name).read_text())
    assert data["experiment"] == res["experiment"]
    assert data["command"].startswith("python bench/") and data["date_utc"]
    return data


@pytest.mark.slow
def test_approx_quality(out, tmp_path):
    from bench import approx_quality

    res = approx_quality.main(["--epochs", "1", "--max-steps", "3", "--batch", "30", *out])
    s = res["summary"]
    assert s["iterations"] == 3
    assert s["theorem4_holds_every_iteration"], s["theorem4_max_error_over_bound"]
    assert 0 < s["theorem4_max_error_over_bound"] <= 1
    assert s["kfac_bound_holds_every_iteration"]
    for name, err in s["layout_checks_relative_error"].items():
        assert err < 1e-10, f"{name}: relative error {err}"
    assert 0.0 <= s["fraction_tkfac_smaller_summed"] <= 1.0
    data = _load(res, "approx_quality.json", tmp_path)
    assert len(data["per_iteration"]["tkfac"]) == 3
    for fig in res["figures"]:
        _png(fig)


@pytest.mark.slow
def test_optim_speed(out, tmp_path):
    from bench import optim_speed

    res = optim_speed.main(
        [
            "--epochs",
            "2",
            "--grid",
            "one",
            "--widths",
            "64-16-64",
            "--update-steps",
            "2",
            "--optimizers",
            "sgdm,tkfac_nor",
            *out,
        ]
    )
    assert set(res["table"]) == {"sgdm", "tkfac_nor"}
    for name, row in res["table"].items():
        assert math.isfinite(row["final_train_error"]), name
        assert 0 < row["final_train_error"] < 64, name  # pixels are in [0, 1]
    for run in res["runs"]:
        assert [c["epoch"] for c in run["curve"]] == [0, 1, 2]
    _load(res, "optim_speed.json", tmp_path)
    _png(res["figures"][0])


@pytest.mark.slow
def test_generalization(out, tmp_path):
    from bench import generalization

    res = generalization.main(
        [
            "--model",
            "small_cnn",
            "--image-size",
            "8",
            "--epochs",
            "2",
            "--seeds",
            "0,1",
            "--optimizers",
            "sgdm,tkfac_new",
            "--lr",
            "sgdm=0.05,tkfac_new=0.05",
            "--update-steps",
            "3",
            "--no-isolate",
            *out,
        ]
    )
    for name in ("sgdm", "tkfac_new"):
        row = res["table"][name]
        assert 0.0 <= row["final_acc_mean"] <= 1.0 and math.isfinite(row["final_acc_std"])
        assert row["diverged"] == 0
        assert row["seconds_per_epoch"] > 0
    assert res["table"]["tkfac_new"]["final_acc_mean"] > 0.3  # learns something in 2 epochs
    _load(res, "generalization_small_cnn.json", tmp_path)
    _png(res["figures"][0])


@pytest.mark.slow
def test_damping(out, tmp_path):
    from bench import damping

    res = damping.main(
        [
            "--model",
            "small_cnn",
            "--image-size",
            "8",
            "--epochs",
            "1",
            "--max-steps",
            "5",
            "--update-steps",
            "2",
            "--approximations",
            "tkfac_nor,tkfac_new",
            *out,
        ]
    )
    for approx in ("tkfac_nor", "tkfac_new"):
        s = res["summary"][approx]
        assert s["rows"] == 3 * 3  # 3 layers x factor updates at steps 0, 2, 4
        for layer, fields in s["chosen_layers"].items():
            for field, v in fields.items():
                assert math.isfinite(v["last"]) and v["last"] > 0, (approx, layer, field)
    # TKFAC_new: both ratios are sqrt(delta~) >= sqrt(nu)
    for v in res["summary"]["tkfac_new"]["chosen_layers"].values():
        assert v["ratio_phi"]["last"] == pytest.approx(v["ratio_psi"]["last"])
        assert v["ratio_phi"]["last"] >= math.sqrt(1e-3) * (1 - 1e-6)
    _png(res["figures"][0])


@pytest.mark.slow
def test_cost_scaling(out, tmp_path):
    from bench import cost_scaling

    res = cost_scaling.main(
        ["--parts", "memory,scaling", "--models", "resnet20", "--quick", "--steps", "12", *out]
    )
    mem = res["memory"]["resnet20"]
    # Momentum keeps one moment per parameter (plus a step counter and the learning rate)
    assert mem["params"] <= mem["sgdm"] < mem["params"] + 1024
    assert mem["adam"] >= 2 * mem["params"]
    assert mem["tkfac_nor"] >= mem["params"] + mem["tkfac_factors_and_inverses"]
    rows = res["scaling"]["rows"]
    assert len(rows) == 2
    for row in rows:
        assert row["momentum_s"] > 0 and row["plain_tkfac_s"] > 0
        assert row["layers"] == 4  # all three convs and the Dense are preconditioned
    for fig in res["figures"]:
        _png(fig)


@pytest.mark.slow
def test_step_time_cli(tmp_path, capsys):
    from bench import step_time

    res = step_time.main(
        [
            "--model",
            "small_cnn",
            "--batch",
            "8",
            "--image-size",
            "8",
            "--steps",
            "12",
            "--json",
            str(tmp_path / "st.json"),
        ]
    )
    text = capsys.readouterr().out
    assert "(d) amortized, T_FIM = T_INV = 100" in text
    assert res["momentum_s"] > 0 and all(v > 0 for v in res["median_s"].values())
    # every timed TKFAC step was applied (a diverged run times skipped steps instead)
    assert res["valid"] and all(math.isfinite(v) for v in res["losses"])
    assert all(res["min_s"][k] <= res["median_s"][k] for k in res["median_s"])
    assert json.loads((tmp_path / "st.json").read_text())["layers"] == 3


def test_conv_stats(tmp_path):
    from bench import conv_stats

    res = conv_stats.main(
        ["--batch", "4", "--repeat", "1", "--shapes", "2", "--json", str(tmp_path / "cs.json")]
    )
    assert [r["layer"] for r in res["rows"]] == [s[0] for s in conv_stats.SHAPES[:2]]
    for row in res["rows"]:
        # two different routes (bitwise equal would mean one route ran twice), same sums
        assert 0 < row["phi_rel_diff"] < 1e-5
        assert row["median_s"]["ms_ops"] > 0 and row["median_s"]["cpu_kernel"] > 0
    assert json.loads((tmp_path / "cs.json").read_text())["rows"][0]["batch"] == 4


@pytest.mark.slow
def test_graph_memory(tmp_path):
    from bench import graph_memory

    res = graph_memory.main(["--d", "256", "--ks", "1,3", "--json", str(tmp_path / "gm.json")])
    assert [r["k"] for r in res["temporaries"]] == [1, 3]
    # peak growth can be 0 where the import already peaked higher than a small probe
    assert all(r["peak_growth_mb"] >= 0 for r in res["temporaries"])
    rows = {r["optimizer"]: r for r in res["factors"]}
    assert set(rows) == set(graph_memory.OPTIMIZERS)
    assert all(r["d"] == 256 and r["peak_growth_mb"] >= 0 for r in rows.values())
    assert all(r["buffers_per_factor"] == r["peak_growth_mb"] / (3 * 0.25) for r in rows.values())
    assert json.loads((tmp_path / "gm.json").read_text())["factors"][0]["optimizer"] == "momentum"

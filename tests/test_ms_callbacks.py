"""DampingDiagnostics (paper Fig. 3 data): values checked against the batch statistics."""

from __future__ import annotations

import csv
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import dataset as mds
from mindspore import nn
from mindspore.train import Model
from test_ms_training import TinyCNN, batch

import tkfac_ms

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


@pytest.mark.parametrize("approximation", ["tkfac_nor", "tkfac_new"])
def test_ratios_follow_the_batch_delta(approximation, tmp_path):
    ms.set_seed(0)
    net = TinyCNN()
    opt = tkfac_ms.TKFAC(
        net,
        0.01,
        approximation=approximation,
        fisher="empirical",
        damping=4e-2,
        nu=3e-2,
        factor_update_steps=2,
        inv_update_steps=2,
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    cell.set_train()  # as Model.train does: BatchNorm on batch statistics
    x, y = batch(0)
    stats = cell.layer_statistics(x, y)  # what step 0's factor update will see
    cb = tkfac_ms.DampingDiagnostics(opt, tmp_path / "damping.csv")
    data = mds.NumpySlicesDataset(
        {"x": np.tile(x.asnumpy(), (3, 1, 1, 1)), "y": np.tile(y.asnumpy(), 3)}, shuffle=False
    ).batch(8)
    Model(cell).train(1, data, callbacks=[cb], dataset_sink_mode=False)  # steps 0, 1, 2
    assert [r["step"] for r in cb.rows] == [0] * 3 + [2] * 3
    first = {r["layer"]: r for r in cb.rows[:3]}
    conv_deltas = [float(stats[p]["delta"].asnumpy()) for p in ("conv1", "conv2")]
    beta = max(max(3e-2, d) / d for d in conv_deltas)
    for layer in opt.layers:
        delta = float(stats[layer.path]["delta"].asnumpy())
        row = first[layer.path]
        assert row["delta"] == pytest.approx(delta, rel=1e-5)
        if approximation == "tkfac_nor":
            assert row["ratio_phi"] == pytest.approx(
                math.sqrt(4e-2) * layer.d_in / math.sqrt(delta), rel=1e-5
            )
            assert row["ratio_psi"] == pytest.approx(
                math.sqrt(4e-2) * layer.d_out / math.sqrt(delta), rel=1e-5
            )
        else:
            scaled = delta if layer.kind == "conv" else beta * delta
            assert row["ratio_phi"] == pytest.approx(math.sqrt(max(3e-2, scaled)), rel=1e-5)
    with open(tmp_path / "damping.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6

"""Why VGG16 / TKFAC_new failed under the old kink filter: a measurement (docs/parity.md).

``python -m parity.diagnose_flips [OUT.json]`` replays the case as it was published before
the branch check (batches chosen by the old relative kink margin 3e-7, same sampled labels,
re-anchored) and at every step measures, on the same weights and batch:
* ReLU masks and max-pool argmaxes of torch float32, torch float64 and MindSpore float32
  (BatchNorm in train mode) and where they differ;
* the momentum buffer that torch would get with a float64 gradient (same inverses), against
  torch float32's, next to MindSpore's against torch float32's.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time

import parity.compare as C  # first: sets the OpenMP / oneDNN environment  # isort: skip

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mindspore import Tensor  # noqa: E402

import reference_torch._math as tm  # noqa: E402
from model_zoo.src.models import create_model  # noqa: E402
from model_zoo.src.models.name_map import batchnorm_prefixes  # noqa: E402


def torch_probe(model, x, dtype):
    """``(kind, input)`` of every ReLU / max-pool call of torch in ``dtype`` (train mode)."""
    m = copy.deepcopy(model).to(dtype)
    m.train()
    rec = []

    def hook(mod, inputs, _out):
        rec.append((type(mod).__name__, inputs[0].detach().clone()))

    for mod in m.modules():
        if isinstance(mod, (torch.nn.ReLU, torch.nn.MaxPool2d)):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.from_numpy(x).to(dtype))
    return [(k, v.double().numpy()) for k, v in rec]


def torch_grads(model, x, y, dtype):
    """Loss gradients of every parameter of a copy of ``model`` in ``dtype``."""
    m = copy.deepcopy(model).to(dtype)
    m.train()
    for p in m.parameters():
        p.grad = None
    loss = F.cross_entropy(m(torch.from_numpy(x).to(dtype)), torch.from_numpy(y).long())
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters()}


class MsProbe:
    """MindSpore VGG16 run layer by layer on given weights, recording ReLU / pool inputs."""

    def __init__(self):
        self.net = create_model("vgg16_bn", 10)
        self.net.set_train(True)
        self.params = {p.name: p for p in self.net.get_parameters()}

    def __call__(self, weights, x):
        """``(kind, input)`` of every ReLU / max-pool call (train mode)."""
        for name, value in weights.items():
            self.params[name].set_data(Tensor(value))
        rec = []
        h = Tensor(x)
        for cell in self.net.features.cells():
            kind = type(cell).__name__
            if kind in ("ReLU", "MaxPool2d"):
                rec.append((kind, h.asnumpy().astype(np.float64)))
            h = cell(h)
        return rec


def windows(v):
    """2x2 / stride-2 pooling windows ``[N, C, H/2, W/2, 4]``."""
    n, c, hh, ww = v.shape
    return (
        v.reshape(n, c, hh // 2, 2, ww // 2, 2)
        .transpose(0, 1, 2, 4, 3, 5)
        .reshape(n, c, hh // 2, ww // 2, 4)
    )


def compare_probes(p32, p64, pms):
    """Per call: errors of each float32 side and the flipped branches (ReLU masks, argmaxes)."""
    out = []
    for i, ((kind, a32), (_, a64), (_, ams)) in enumerate(zip(p32, p64, pms, strict=True)):
        scale = np.abs(a64).max()
        e32 = np.abs(a32 - a64).max() / scale
        ems = np.abs(ams - a64).max() / scale
        ems32 = np.abs(ams - a32).max() / scale
        entry = {
            "i": i,
            "kind": kind,
            "shape": list(a64.shape),
            "err32": e32,
            "errms": ems,
            "errms32": ems32,
        }
        if kind == "ReLU":
            m32, m64, mms = a32 > 0, a64 > 0, ams > 0
            entry["flips_32_64"] = int((m32 != m64).sum())
            entry["flips_ms_32"] = int((mms != m32).sum())
            entry["flips_ms_64"] = int((mms != m64).sum())
            entry["min_rel"] = float(np.abs(a64).min() / scale)
            where = np.argwhere(mms != m32)
            entry["pos_ms_32"] = where[:5].tolist()
            entry["vals"] = [
                [float(a64[tuple(w)]), float(a32[tuple(w)]), float(ams[tuple(w)])]
                for w in where[:5]
            ]
        else:
            w32, w64, wms = windows(a32), windows(a64), windows(ams)
            g32, g64, gms = w32.argmax(-1), w64.argmax(-1), wms.argmax(-1)
            live = w64.max(-1) > 0
            entry["flips_32_64"] = int(((g32 != g64) & live).sum())
            entry["flips_ms_32"] = int(((gms != g32) & live).sum())
            entry["flips_ms_64"] = int(((gms != g64) & live).sum())
            top = np.sort(w64, -1)
            gap = (top[..., -1] - top[..., -2])[live]
            entry["min_gap_rel"] = float(gap.min() / scale) if gap.size else 1.0
            where = np.argwhere((gms != g32) & live)
            entry["pos_ms_32"] = where[:5].tolist()
            entry["vals"] = [
                [w64[tuple(w)].tolist(), w32[tuple(w)].tolist(), wms[tuple(w)].tolist()]
                for w in where[:5]
            ]
        out.append(entry)
    return out


def main():
    """Replay the case and print / write the per-step measurements."""
    # the batches of the run published before the branch check: old margin, no branch check
    case = C.Case(
        "vgg16_bn",
        "tkfac_new",
        statistics=(),
        branch_check=False,
        kink_margin=3e-7,
        max_draws=30,
    )
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    batches = C._Batches(case)
    tmp = tempfile.mkdtemp()
    twins = C.make_twins(
        case.model,
        tmp,
        case.input_shape,
        seed=case.seed,
        num_classes=case.num_classes,
        model_kwargs=case.model_kwargs,
    )
    tmodel, net = twins.torch_model, twins.ms_net
    tmodel.train()
    first = batches.next(tmodel)
    opt = C._ms_optimizer(net, case, "true")
    cell = C._ms_cell(net, opt, False)
    topt = C._torch_optimizer(tmodel, case, "true")
    bn = batchnorm_prefixes(net)
    probe = MsProbe()
    gen = torch.Generator().manual_seed(case.seed + 7)
    report = []
    v_prev = None
    x, y = first
    for k in range(case.steps):
        t0 = time.time()
        if k > 0:
            x, y = batches.next(tmodel)
        w_pre = C._torch_params(tmodel, bn)
        p32 = torch_probe(tmodel, x, torch.float32)
        p64 = torch_probe(tmodel, x, torch.float64)
        pms = probe(w_pre, x)
        kinks = compare_probes(p32, p64, pms)
        g64 = torch_grads(tmodel, x, y, torch.float64)
        g32 = torch_grads(tmodel, x, y, torch.float32)
        t_loss, sampled = C._torch_step(tmodel, topt, x, y, gen)
        s = y if sampled is None else sampled.numpy().astype(np.int32)
        cell(Tensor(x), Tensor(y), Tensor(s))
        v_ms, v_t = C._ms_moments(opt), C._torch_moments(tmodel, topt, bn)
        # float64-gradient momentum with torch's (post-step) inverses
        names = {n: C.torch_to_ms_name(n, bn) for n, _ in tmodel.named_parameters()}
        d64 = {}
        for lname in topt.layer_names:
            st = topt.layer_state(lname)
            gw = g64[lname + ".weight"]
            gb = g64.get(lname + ".bias")
            gm = tm.grad_matrix(gw, gb)
            dm = tm.precondition(gm, st.g_inv.double(), st.a_inv.double())
            dw, db = tm.split_grad_matrix(dm, gw.shape, gb is not None)
            d64[lname + ".weight"] = dw
            if db is not None:
                d64[lname + ".bias"] = db
        rows = []
        for tname, msname in names.items():
            d = d64.get(tname, g64[tname]).numpy()
            prev = 0.0 if v_prev is None else v_prev[msname]
            v64 = case.momentum * prev + d
            e_ms, _ = C.rel_err(v_ms[msname], v_t[msname])
            e_64, _ = C.rel_err(v64, v_t[msname])
            e_ms64, _ = C.rel_err(v_ms[msname], v64)
            eg, _ = C.rel_err(g32[tname].numpy(), g64[tname].numpy())
            rows.append(
                {
                    "param": msname,
                    "ms_vs_t32": e_ms,
                    "t64_vs_t32": e_64,
                    "ms_vs_t64": e_ms64,
                    "grad_t32_vs_t64": eg,
                }
            )
        worst = max(rows, key=lambda r: r["ms_vs_t32"])
        worst64 = max(rows, key=lambda r: r["t64_vs_t32"])
        print(
            f"step {k} ({time.time() - t0:.0f} s) margin(draw)={batches.min_margin:.2e} "
            f"worst ms_vs_t32 {worst['ms_vs_t32']:.2e} at {worst['param']} "
            f"(t64_vs_t32 there {worst['t64_vs_t32']:.2e}); "
            f"worst t64_vs_t32 {worst64['t64_vs_t32']:.2e} at {worst64['param']}",
            flush=True,
        )
        for e in kinks:
            if e["flips_32_64"] or e["flips_ms_32"] or e["flips_ms_64"]:
                print(
                    "   ",
                    {kk: e[kk] for kk in e if kk not in ("pos_ms_32", "vals")},
                    e["pos_ms_32"][:3],
                    e["vals"][:3],
                    flush=True,
                )
        report.append({"step": k, "kinks": kinks, "rows": rows})
        w_t = C._torch_params(tmodel, bn)
        C._resync(net, opt, w_t, v_t)
        v_prev = v_t
    out = sys.argv[1] if len(sys.argv) > 1 else "diagnose_flips.json"
    with open(out, "w") as f:
        json.dump(report, f, default=float)


if __name__ == "__main__":
    main()

"""Audit of the compiled training graph against MindSpore's documented kernel support.

``python -m tkfac_ms.portability [--device Ascend|GPU|CPU] [--model NAME] [--approximation A]
[--fisher F] [--loss-scale none|fixed|dynamic]`` compiles a TKFAC training step here, on the CPU,
through the route that the named device takes (:mod:`tkfac_ms._device`: GPU and Ascend take the
portable route, as ``TKFAC_MS_PORTABLE=1`` does on the CPU), lists every primitive in the
compiled graph's IR, and checks each one against the support table kept in
``tkfac_ms/op_support/``. It exits 1, naming the primitives, if any lacks a documented kernel
on that device; 2 on a usage error (unknown device or model, or a MindSpore version the table
does not cover); 0 otherwise.

The table is generated from the installed MindSpore's own op documentation by
``python -m tkfac_ms.portability --generate-table`` (see :func:`generate_support_table`): for a
primitive, the "Supported Platforms" section of its class docstring, or, where the generated
class only says "Refer to mindspore.ops.xxx", of the functional API it names or that calls it.
A primitive documented as "Deprecated" has no platform. Graph-structural IR nodes (tuples,
monads, control flow) are not kernels; they are listed in :data:`IR_NODES` with the functional
API whose documentation covers them.

Which IR: ``*_validate_*.ir``, the last graph of MindSpore's frontend (after inlining,
automatic differentiation and the frontend optimizer, before the backend selects kernels). It is
the same for every device given the same route, which is what lets a CPU machine audit the graph
that Ascend would receive.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DEVICES",
    "IR_NODES",
    "audit",
    "generate_support_table",
    "load_support_table",
    "primitives_in_ir",
    "table_path",
]

DEVICES = ("Ascend", "GPU", "CPU")
APPROXIMATIONS = ("tkfac_nor", "tkfac_new", "kfac")
FISHERS = ("true", "empirical")
LOSS_SCALES = ("none", "fixed", "dynamic")

#: IR nodes that are graph structure, not kernels, each with the documented functional API that
#: covers it (its "Supported Platforms" is read into the table like any other's) or, where none
#: exists, why every backend handles it.
IR_NODES: dict[str, str] = {
    "MakeTuple": "tuple construction in the IR (no kernel; every backend's graph executor)",
    "TupleGetItem": "tuple indexing in the IR (no kernel; every backend's graph executor)",
    "Load": "read of a Parameter under a monad (no kernel; MindSpore's auto-monad pass)",
    "UpdateState": "monad ordering of side effects (no kernel; MindSpore's auto-monad pass)",
    "Depend": "mindspore.ops.depend",
    "Switch": "graph control flow of a tensor-conditioned `if` (no kernel; control-flow actors)",
    "Partial": "closure of a branch subgraph (no kernel; control-flow actors)",
    "Return": "subgraph return (no kernel)",
    "SwitchLayer": "graph control flow (no kernel; control-flow actors)",
}

_PLATFORMS_RE = re.compile(r"Supported Platforms:\s*\n\s*(.*)")
_REFER_RE = re.compile(r"mindspore\.ops\.([a-z_][a-z0-9_]*)")
_NODE_RE = re.compile(r"^\s*%\d+\([^)]*\)\s*=\s*([A-Za-z_][A-Za-z0-9_]*)\(")
_TABLE_DIR = Path(__file__).with_name("op_support")


# ---------------------------------------------------------------------------- the support table
def _platforms(doc: str | None) -> list[str] | None:
    """``["Ascend", "GPU", "CPU"]``-like list from a docstring, ``[]`` if deprecated, else None."""
    if not doc:
        return None
    m = _PLATFORMS_RE.search(doc)
    if m is None:
        return None
    line = m.group(1)
    if "Deprecated" in line:
        return []
    return [p for p in DEVICES if f"``{p}``" in line or re.search(rf"\b{p}\b", line)]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _primitive_classes() -> dict[str, tuple[type, str]]:
    """Every Primitive class that MindSpore exposes: ``name -> (class, module)``."""
    import mindspore.ops.auto_generate.gen_ops_prim as gen_prim
    import mindspore.ops.operations as P
    from mindspore.ops.primitive import Primitive

    modules = [gen_prim, P]
    for sub in (
        "_inner_ops",
        "_grad_ops",
        "comm_ops",
        "array_ops",
        "math_ops",
        "nn_ops",
        "random_ops",
        "other_ops",
        "linalg_ops",
        "custom_ops",
        "_sequence_ops",
        "_scalar_ops",
        "debug_ops",
        "control_ops",
    ):
        with contextlib.suppress(ImportError):
            modules.append(__import__(f"mindspore.ops.operations.{sub}", fromlist=["x"]))
    out: dict[str, tuple[type, str]] = {}
    for mod in modules:
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, Primitive) and name not in out:
                out[name] = (obj, mod.__name__)
    return out


def _call_graph() -> tuple[dict[str, list[str]], dict[str, set[str]], dict[str, str]]:
    """The functional API's documented platforms and who-calls-what, from MindSpore's source.

    Returns ``(docs, callees, where)``: ``docs`` maps a function (or Tensor method
    implementation ``tensor_<m>``, documented by ``mindspore.Tensor.<m>``) to its documented
    platforms; ``callees`` maps every function to the names it calls; ``where`` names the
    public API of each documented entry.
    """
    import mindspore
    import mindspore.ops as ops
    import mindspore.ops.auto_generate.gen_extend_func as gen_ext
    import mindspore.ops.auto_generate.gen_ops_def as gen_def
    import mindspore.ops.function as ops_function
    import mindspore.ops.tensor_method as tensor_method

    modules = [gen_def, gen_ext, tensor_method]
    for name in sorted(vars(ops_function)):
        mod = getattr(ops_function, name)
        if inspect.ismodule(mod) and mod.__name__.startswith("mindspore.ops.function."):
            modules.append(mod)
    docs: dict[str, list[str]] = {}
    callees: dict[str, set[str]] = {}
    where: dict[str, str] = {}
    for mod in modules:
        for name, fn in vars(mod).items():
            if not inspect.isfunction(fn) or fn.__module__ != mod.__name__:
                continue
            try:
                src = inspect.getsource(fn)
            except (OSError, TypeError):
                continue
            key = f"{mod.__name__}.{name}"
            body = src.split('"""', 2)[-1] if src.count('"""') >= 2 else src
            callees[key] = set(re.findall(r"\b([a-z_][a-z0-9_]*)\(", body))
            plats = _platforms(fn.__doc__)
            exported = getattr(ops, name, None) is fn or name in getattr(mod, "__all__", ())
            public = f"mindspore.ops.{name}" if exported else None
            if mod is tensor_method and name.startswith("tensor_"):
                method = getattr(mindspore.Tensor, name.removeprefix("tensor_"), None)
                plats = _platforms(getattr(method, "__doc__", None))
                public = f"mindspore.Tensor.{name.removeprefix('tensor_')}"
            if plats is not None and public is not None:
                exact = getattr(ops, name, None) is fn
                # the object that mindspore.ops.<name> *is* wins over a same-named function
                if exact or public not in where.values():
                    for old_key in [k for k, v in where.items() if v == public and exact]:
                        del docs[old_key], where[old_key]
                    docs[key] = plats
                    where[key] = public
    return docs, callees, where


#: Backward primitives: no public docstring; each is emitted by the registered gradient of the
#: named documented forward primitive, so it is read as supported where that one is.
_BACKWARD_OF = {
    "Conv2DBackpropFilter": "Conv2D",
    "Conv2DBackpropInput": "Conv2D",
    "GatherDGradV2": "GatherD",
    "MaxPoolGrad": "MaxPool",
    "AvgPoolGrad": "AvgPool",
    "BatchNormGrad": "BatchNorm",
    # Concat's registered gradient splits the incoming gradient (seen in the validated IR of the
    # model zoo's ResNet-20, whose option-A shortcut concatenates zero channels)
    "SplitWithSize": "Concat",
}


#: Primitives with no docstring of their own that a documented public API calls directly,
#: found by reading MindSpore's source: ``Tensor.copy`` of an integer tensor is ``TensorMove``
#: (``mindspore/common/tensor.py``), which the frontend also inserts to copy a Parameter read
#: before a later in-place ``Assign``.
_DOCUMENTED_BY = {"TensorMove": "mindspore.Tensor.copy"}


def _backward_of(name: str) -> str | None:
    if name in _BACKWARD_OF:
        return _BACKWARD_OF[name]
    for suffix in ("GradV2", "Grad"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def generate_support_table() -> dict[str, Any]:
    """The kernel-support table of the installed MindSpore, from its own op documentation.

    Rules, in order, for a primitive class ``P``: (1) its docstring's "Supported Platforms";
    (2) the functional API that its docstring refers to, that calls its generated instance, or
    that has its snake-case name; (3) for an undocumented primitive reached only through other
    functions (``Tensor.__mul__`` with a scalar -> ``muls`` -> ``Muls``), the *intersection* of
    the platforms of every documented public entry that reaches it within three calls;
    (4) a backward primitive (``ReluGrad``, ``Conv2DBackpropFilter``) takes its forward
    primitive's entry. Anything else is left out, and the audit reports it as undocumented.
    """
    import mindspore as ms
    import mindspore.ops.auto_generate.gen_ops_prim as gen_prim

    docs, callees, where = _call_graph()
    instances: dict[str, list[str]] = {}
    for inst, obj in vars(gen_prim).items():
        if not inspect.isclass(obj) and hasattr(obj, "name") and inst.endswith("_op"):
            instances.setdefault(type(obj).__name__, []).append(inst)
    callers: dict[str, set[str]] = {}  # bare called name -> qualified callers
    for fn, names in callees.items():
        for n in names:
            callers.setdefault(n, set()).add(fn)
    by_public = {
        where[k].rpartition(".")[2]: k for k in docs if where[k].startswith("mindspore.ops.")
    }

    def documented_entries(start: set[str]) -> set[str]:
        seen, frontier, found = set(start), set(start), set()
        for _ in range(3):
            nxt = set()
            for n in frontier:
                for c in callers.get(n, ()):
                    if c in docs:
                        found.add(c)
                    elif c not in seen:
                        nxt.add(c.rpartition(".")[2])
            seen |= nxt
            frontier = nxt
        return found

    ops_table: dict[str, dict[str, Any]] = {}
    classes = _primitive_classes()
    for name, (cls, module) in sorted(classes.items()):
        doc = cls.__doc__ or ""
        plats = _platforms(doc)
        source = f"{module}.{name} docstring, 'Supported Platforms'"
        if plats is None:
            insts = instances.get(name, [])
            direct = [by_public[m] for m in _REFER_RE.findall(doc) if m in by_public]
            direct += [fn for i in insts for fn in sorted(callers.get(i, ())) if fn in docs]
            direct += [by_public[_snake(name)]] if _snake(name) in by_public else []
            if direct:
                fn = direct[0]
                plats = docs[fn]
                source = f"{where[fn]} docstring, 'Supported Platforms' (calls {name})"
            else:
                entries = documented_entries(set(insts) | {_snake(name)})
                if entries:
                    plats = [d for d in DEVICES if all(d in docs[e] for e in entries)]
                    names = ", ".join(sorted(where[e] for e in entries)[:4])
                    more = f" and {len(entries) - 4} more" if len(entries) > 4 else ""
                    source = (
                        f"intersection of the documented platforms of {names}{more} "
                        f"(each reaches {name})"
                    )
        if plats is None:
            continue
        deprecated = "deprecated" in doc.lower().split("supported platforms")[0][:4000]
        ops_table[name] = {"platforms": plats, "source": source, "deprecated": deprecated}
    for name in sorted(classes):
        fwd = _backward_of(name)
        by_lower = {k.lower(): k for k in ops_table}
        fwd = by_lower.get(fwd.lower()) if fwd is not None else None
        # an explicit backward entry wins over a docstring that deprecates the class as an API
        # (P.Conv2DBackpropInput): the forward's registered gradient still emits it
        documented = name in ops_table and ops_table[name]["platforms"]
        if fwd is not None and (not documented or name in _BACKWARD_OF):
            ops_table[name] = {
                "platforms": ops_table[fwd]["platforms"],
                "source": f"backward of {fwd} (no public docstring): {ops_table[fwd]['source']}",
                "deprecated": ops_table[fwd]["deprecated"],
            }
    for name, entry in _DOCUMENTED_BY.items():
        owner, _, attr = entry.rpartition(".")
        obj = getattr(ms.Tensor, attr, None) if owner == "mindspore.Tensor" else None
        plats = _platforms(getattr(obj, "__doc__", None))
        if name not in ops_table and plats is not None:
            ops_table[name] = {
                "platforms": plats,
                "source": f"{entry} docstring, 'Supported Platforms' ({entry} calls {name})",
                "deprecated": False,
            }
    for node, why in IR_NODES.items():
        fn = why.split(".")[-1]
        if why.startswith("mindspore.ops.") and fn in by_public:
            ops_table[node] = {
                "platforms": docs[by_public[fn]],
                "source": f"{why} docstring, 'Supported Platforms' (IR node)",
                "deprecated": False,
            }
        else:
            ops_table[node] = {
                "platforms": list(DEVICES),
                "source": f"IR node: {why}",
                "deprecated": False,
            }
    return {
        "mindspore_version": ms.__version__,
        "generated_by": "python -m tkfac_ms.portability --generate-table",
        "sources": inspect.cleandoc(generate_support_table.__doc__ or "").split("\n\n")[1]
        + " IR nodes: tkfac_ms.portability.IR_NODES.",
        "ops": ops_table,
    }


def table_path(version: str) -> Path:
    """Where the table of MindSpore ``version`` is kept in the repo."""
    return _TABLE_DIR / f"mindspore-{version}.json"


def load_support_table(version: str | None = None) -> dict[str, Any]:
    """The kept table for ``version`` (default: the installed MindSpore's).

    Raises:
        LookupError: no table for that version (the message names it and the covered ones).
    """
    if version is None:
        import mindspore as ms

        version = ms.__version__
    path = table_path(version)
    if not path.is_file():
        covered = sorted(p.stem.removeprefix("mindspore-") for p in _TABLE_DIR.glob("*.json"))
        raise LookupError(
            f"no kernel-support table for MindSpore {version} (covered: {', '.join(covered)}); "
            "generate one with: python -m tkfac_ms.portability --generate-table"
        )
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- the compiled graph
def primitives_in_ir(text: str) -> dict[str, int]:
    """``{primitive: count}`` of the nodes of a MindSpore ``.ir`` dump (``PrimFunc_`` stripped)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        m = _NODE_RE.match(line)
        if m is None:
            continue
        name = m.group(1).removeprefix("PrimFunc_")
        if not name[0].isupper():
            continue  # a call of a subgraph by its Python name, not a primitive
        counts[name] = counts.get(name, 0) + 1
    return counts


@contextlib.contextmanager
def _route(device: str) -> Iterator[None]:
    """The route that ``device`` takes, on this CPU: portable for GPU and Ascend."""
    from tkfac_ms import _device

    before = os.environ.get(_device.PORTABLE_ENV)
    if device != "CPU":
        os.environ[_device.PORTABLE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_device.PORTABLE_ENV, None)
        else:
            os.environ[_device.PORTABLE_ENV] = before


def compiled_primitives(cell: Any, *inputs: Any) -> dict[str, int]:
    """Compile ``cell(*inputs)`` (no run) and return the primitives of its validated IR."""
    import mindspore as ms

    with tempfile.TemporaryDirectory(prefix="tkfac_ir_") as tmp:
        before = ms.get_context("save_graphs"), ms.get_context("save_graphs_path")
        passes = os.environ.get("MS_DEV_DUMP_IR_PASSES")
        # only the validate pass: dumping every pass took 75 s and 2.9 GB for ResNet-20
        os.environ["MS_DEV_DUMP_IR_PASSES"] = "validate"
        ms.set_context(save_graphs=1, save_graphs_path=tmp)
        try:
            cell.compile(*inputs)
        finally:
            ms.set_context(save_graphs=before[0], save_graphs_path=before[1])
            if passes is None:
                os.environ.pop("MS_DEV_DUMP_IR_PASSES", None)
            else:
                os.environ["MS_DEV_DUMP_IR_PASSES"] = passes
        dumps = sorted(Path(tmp).rglob("*_validate_*.ir"), key=lambda p: p.stat().st_mtime)
        if not dumps:
            raise RuntimeError(f"MindSpore wrote no *_validate_*.ir into {tmp}")
        return primitives_in_ir(dumps[-1].read_text(errors="replace"))


def _tiny_net(num_classes: int) -> Any:
    from mindspore import nn, ops

    class ConvDense(nn.Cell):
        """conv(bias, pad) -> BN -> ReLU -> conv('same', stride 2) -> pool -> Dense(bias)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, pad_mode="pad", padding=1, has_bias=True)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 8, 3, stride=2, pad_mode="same")
            self.fc = nn.Dense(8, num_classes)

        def construct(self, x):  # type: ignore[no-untyped-def]
            x = ops.relu(self.bn1(self.conv1(x)))
            return self.fc(ops.relu(self.conv2(x)).mean(axis=(2, 3)))

    return ConvDense()


#: ``--model`` choices: name -> (input shape per sample). Zoo models come from model_zoo's
#: registry (a repository tool, present in a checkout).
MODELS: dict[str, tuple[int, int, int]] = {
    "conv_dense": (3, 8, 8),
    "mlp": (3, 8, 8),
    "small_cnn": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "vgg16_bn": (3, 32, 32),
    "resnet50": (3, 64, 64),
}


def build_step(
    model: str, approximation: str, fisher: str, loss_scale: str = "none", batch: int = 2
) -> tuple[Any, tuple[Any, ...], Any]:
    """A TKFAC training cell for ``model`` and a tiny batch to compile it with."""
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    import tkfac_ms

    classes = 10
    if model == "conv_dense":
        net = _tiny_net(classes)
    else:
        from model_zoo.src.models.registry import create_model

        net = create_model(model, classes)
    opt = tkfac_ms.TKFAC(
        net,
        0.01,
        approximation=approximation,
        fisher=fisher,
        factor_update_steps=1,
        inv_update_steps=1,
    )
    scale_sense = None
    if loss_scale == "fixed":
        scale_sense = Tensor(1024.0, ms.float32)
    elif loss_scale == "dynamic":
        scale_sense = nn.DynamicLossScaleUpdateCell(2.0**10, 2, 100)
    cell = tkfac_ms.TKFACTrainOneStepCell(
        nn.WithLossCell(net, nn.CrossEntropyLoss()), opt, scale_sense=scale_sense
    )
    cell.set_train()
    x = Tensor(np.zeros((batch, *MODELS[model]), np.float32))
    y = Tensor(np.zeros((batch,), np.int32))
    return cell, (x, y), opt


def audit(
    devices: str | tuple[str, ...],
    model: str = "conv_dense",
    approximation: str = "tkfac_new",
    fisher: str = "true",
    loss_scale: str = "none",
    table: dict[str, Any] | None = None,
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Compile one configuration through the devices' route: ``(primitives, unsupported)``.

    ``devices`` must share one route (GPU and Ascend do; the CPU has its own); ``unsupported``
    maps each device to the primitives without a documented kernel there.
    """
    import mindspore as ms

    devices = (devices,) if isinstance(devices, str) else tuple(devices)
    if len({d == "CPU" for d in devices}) != 1:
        raise ValueError(f"devices {devices} take different routes; audit them separately")
    table = load_support_table() if table is None else table
    ms.set_context(mode=ms.GRAPH_MODE)
    with _route(devices[0]):
        cell, inputs, _ = build_step(model, approximation, fisher, loss_scale)
        prims = compiled_primitives(cell, *inputs)
    bad = {
        d: [p for p in sorted(prims) if d not in table["ops"].get(p, {}).get("platforms", [])]
        for d in devices
    }
    return prims, bad


def support_matrix(prims: dict[str, int], table: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(primitive, "Ascend GPU CPU"-style platforms, source)`` for each primitive."""
    rows = []
    for p in sorted(prims):
        entry = table["ops"].get(p)
        if entry is None:
            rows.append((p, "(undocumented)", "-"))
        else:
            rows.append((p, " ".join(entry["platforms"]) or "(none)", entry["source"]))
    return rows


# ---------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m tkfac_ms.portability",
        description=(
            "Compile a TKFAC training graph here (CPU) through the route that --device takes, "
            "list its primitives and check them against MindSpore's documented kernel support."
        ),
        allow_abbrev=False,
    )
    p.add_argument(
        "--device",
        action="append",
        choices=DEVICES,
        help="device whose route and kernels to check (repeatable; GPU and Ascend "
        "share one route, so one compile checks both; default: Ascend)",
    )
    p.add_argument(
        "--model",
        action="append",
        choices=sorted(MODELS),
        help="network (repeatable; default: conv_dense)",
    )
    p.add_argument(
        "--approximation",
        action="append",
        choices=APPROXIMATIONS,
        help="approximation (repeatable; default: all three)",
    )
    p.add_argument(
        "--fisher", action="append", choices=FISHERS, help="Fisher type (repeatable; default: both)"
    )
    p.add_argument(
        "--loss-scale",
        action="append",
        choices=LOSS_SCALES,
        help="loss scaling (repeatable; default: none)",
    )
    p.add_argument(
        "--table",
        action="store_true",
        help="print the primitive x platform table of the compiled graph (markdown)",
    )
    p.add_argument(
        "--generate-table",
        action="store_true",
        help="regenerate tkfac_ms/op_support/mindspore-<version>.json from the "
        "installed MindSpore's op documentation, then exit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (0 ok, 1 unsupported primitives, 2 usage error)."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    if args.generate_table:
        table = generate_support_table()
        path = table_path(table["mindspore_version"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        print(f"wrote {path} ({len(table['ops'])} primitives)")
        return 0
    try:
        table = load_support_table()
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    devices = tuple(dict.fromkeys(args.device or ["Ascend"]))
    routes = [
        r
        for r in (tuple(d for d in devices if d != "CPU"), ("CPU",) if "CPU" in devices else ())
        if r
    ]
    models = args.model or ["conv_dense"]
    approximations = args.approximation or list(APPROXIMATIONS)
    fishers = args.fisher or list(FISHERS)
    scales = args.loss_scale or ["none"]
    failed = False
    union: dict[str, int] = {}
    for route in routes:
        for model in models:
            for approx in approximations:
                for fisher in fishers:
                    for scale in scales:
                        prims, bad = audit(route, model, approx, fisher, scale, table)
                        for k, v in prims.items():
                            union[k] = union.get(k, 0) + v
                        for device in route:
                            status = (
                                "ok"
                                if not bad[device]
                                else "UNSUPPORTED: " + ", ".join(bad[device])
                            )
                            print(
                                f"{device} {model} {approx} fisher={fisher} "
                                f"loss_scale={scale}: {len(prims)} primitives, {status}",
                                flush=True,
                            )
                            failed = failed or bool(bad[device])
    if args.table:
        version = table["mindspore_version"]
        print(f"\n| primitive | documented platforms | source (MindSpore {version}) |")
        print("|---|---|---|")
        for prim, plats, source in support_matrix(union, table):
            print(f"| `{prim}` | {plats} | {source} |")
    names = "/".join(devices)
    if failed:
        print(f"error: primitives without a documented {names} kernel (see above)", file=sys.stderr)
        return 1
    print(
        f"all {len(union)} primitives have a documented {names} kernel "
        f"(MindSpore {table['mindspore_version']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

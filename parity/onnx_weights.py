"""Shared weights for the two frameworks, through one ONNX file.

The torch twin (``reference_torch/models.py``) is exported with the classic TorchScript
exporter in inference form, so that the ONNX initializers carry the ``state_dict`` names and
BatchNorm stays a ``BatchNormalization`` node with its four tensors (not folded into the
convolution)::

    torch.onnx.export(model.eval(), x, path, dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.EVAL, opset_version=17)

The initializers are then read back and loaded, strictly, into

* a *fresh* torch twin (``load_into_torch``), and
* the model-zoo MindSpore network (``load_into_mindspore``) through the explicit name map of
  ``model_zoo.src.models.name_map`` (BN ``weight/bias/running_mean/running_var`` ->
  ``gamma/beta/moving_mean/moving_variance``; BN momentum is not a tensor: the networks use
  MindSpore ``momentum = 1 - torch momentum``).

Every unmapped, missing or shape-mismatched tensor raises :class:`OnnxWeightsError` (or the
name map's ``ValueError``) listing all problems; nothing is written on failure, so a partial
load cannot pass silently.

One trap of the classic exporter: in inference mode it de-duplicates initializers *by value*,
so two tensors with equal contents (a fresh BatchNorm's ``weight`` = ``running_var`` = ones)
are exported under one name and the other names vanish. :func:`export_onnx` checks for this
and fails; :func:`randomize_batchnorm` gives every BN tensor distinct values first (which also
keeps the parity comparison from being blind to a gamma/beta or mean/var swap).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

__all__ = [
    "ONNX_OPSET",
    "OnnxWeightsError",
    "Twins",
    "export_onnx",
    "read_initializers",
    "expected_keys",
    "randomize_batchnorm",
    "load_into_torch",
    "load_into_mindspore",
    "onnxruntime_forward",
    "make_twins",
]

ONNX_OPSET = 17

#: ``state_dict`` leaves that are not weights: not exported, not loaded (MindSpore has none).
_NOT_EXPORTED_LEAVES = ("num_batches_tracked",)


class OnnxWeightsError(ValueError):
    """The ONNX initializers do not cover a model's tensors exactly (names, shapes)."""


def expected_keys(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` keys (and shapes) that the ONNX file must carry, in order."""
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.rpartition(".")[2] not in _NOT_EXPORTED_LEAVES
    }


def _check_cover(
    values: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], what: str
) -> None:
    problems = []
    for key, shape in expected.items():
        if key not in values:
            problems.append(f"missing: no initializer named '{key}'")
        elif tuple(values[key].shape) != shape:
            problems.append(
                f"shape mismatch: '{key}' is {tuple(values[key].shape)} in ONNX, {shape} in {what}"
            )
    for key in values:
        if key not in expected:
            problems.append(f"unmapped: initializer '{key}' is not a tensor of {what}")
    if problems:
        hint = ""
        if any(p.startswith("missing") for p in problems):
            hint = (
                "\n  (the classic exporter merges initializers with equal values in inference "
                "mode; give every tensor distinct values, e.g. with randomize_batchnorm())"
            )
        raise OnnxWeightsError(
            f"ONNX initializers vs {what}: {len(problems)} problems:\n  "
            + "\n  ".join(problems)
            + hint
        )


def export_onnx(model: torch.nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` to ONNX with the parity recipe and check that no tensor got lost.

    The model is exported in eval mode (its train/eval flag is restored afterwards); the
    initializers must be exactly :func:`expected_keys` with the same shapes.

    Args:
        model: a ``reference_torch`` twin.
        example_input: a batch of the input shape (its batch size becomes dynamic).
        path: where to write the ``.onnx`` file.

    Returns:
        ``path``.

    Raises:
        OnnxWeightsError: a ``state_dict`` tensor is missing from the file, or the file has an
            initializer that is not one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation, constant-folding notes
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                dynamo=False,
                export_params=True,
                do_constant_folding=False,
                training=torch.onnx.TrainingMode.EVAL,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
    finally:
        model.train(was_training)
    _check_cover(read_initializers(path), expected_keys(model), type(model).__name__)
    return path


def read_initializers(path: str | Path) -> dict[str, np.ndarray]:
    """The initializers of an ONNX file, name -> array (a copy), in file order."""
    graph = onnx.load(str(path)).graph
    return {init.name: numpy_helper.to_array(init).copy() for init in graph.initializer}


def randomize_batchnorm(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every BatchNorm distinct, non-trivial ``weight, bias, running_mean, running_var``.

    ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.1)``, ``running_mean ~ N(0, 0.1)``,
    ``running_var ~ U(0.5, 1.5)``, from ``torch.Generator().manual_seed(seed)``. In place;
    returns ``model``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def load_into_torch(model: torch.nn.Module, initializers: Mapping[str, np.ndarray]) -> list[str]:
    """Copy ONNX initializers into a torch twin, strictly; returns the keys written.

    Every tensor of :func:`expected_keys` must be present with its shape, and there must be no
    other initializer. Values are cast to the model's dtype (float32 -> float64 is exact).
    ``num_batches_tracked`` keeps the fresh model's value.

    Raises:
        OnnxWeightsError: listing every missing, unmapped or shape-mismatched tensor; the model
            is left unchanged.
    """
    _check_cover(initializers, expected_keys(model), type(model).__name__)
    state = model.state_dict()
    with torch.no_grad():
        for key in expected_keys(model):
            state[key].copy_(torch.from_numpy(np.asarray(initializers[key])).to(state[key].dtype))
    return list(expected_keys(model))


def load_into_mindspore(net, initializers: Mapping[str, np.ndarray]) -> list[str]:
    """Copy ONNX initializers into the model-zoo MindSpore net by the explicit name map.

    Thin wrapper of ``model_zoo.src.models.name_map.load_torch_state`` (strict: every key must
    map to a parameter of the same shape, every parameter except the TKFAC state must be
    covered, nothing is written on failure). Returns the MindSpore names written.

    Raises:
        ValueError: listing every unmapped key, missing parameter and shape mismatch.
    """
    from model_zoo.src.models.name_map import load_torch_state

    return load_torch_state(net, initializers)


def onnxruntime_forward(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Logits of the ONNX file on ``x`` with ONNX Runtime (CPU), the third opinion."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@dataclass
class Twins:
    """One network in both frameworks, with the weights of one ONNX file.

    Attributes:
        name: the model-zoo / twin registry name.
        torch_model: a fresh ``reference_torch`` twin, loaded from the ONNX file.
        ms_net: the model-zoo MindSpore network, loaded from the ONNX file.
        onnx_path: the file.
        initializers: its initializers (torch ``state_dict`` names).
        input_shape: ``[N, C, H, W]`` of the example batch.
    """

    name: str
    torch_model: torch.nn.Module
    ms_net: object
    onnx_path: Path
    initializers: dict[str, np.ndarray]
    input_shape: tuple[int, ...]


def make_twins(
    name: str,
    workdir: str | Path,
    input_shape: tuple[int, ...] = (4, 3, 32, 32),
    seed: int = 0,
    float64: bool = False,
    num_classes: int = 10,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Twins:
    """Build both twins of ``name`` from one ONNX export.

    A torch twin is built with ``torch.manual_seed(seed)``, its BatchNorms randomized
    (:func:`randomize_batchnorm`), and exported to ``workdir/<name>.onnx``. A *fresh* torch
    twin (other seed) and the MindSpore network from ``model_zoo``'s registry are then loaded
    from that file, so the weights of the two sides cannot differ.

    Args:
        name: ``mlp``, ``small_cnn``, ``resnet20``, ``vgg16_bn`` (any name with a twin).
        workdir: folder for the ONNX file.
        input_shape: example batch shape for the export.
        seed: initialization seed of the exported weights.
        float64: build both nets in float64 (Dense-only nets: MindSpore CPU has no float64
            convolution). The file keeps float64 initializers.
        num_classes: number of outputs.
        model_kwargs: extra constructor arguments, the same for both twins (e.g.
            ``{"in_dim": 768}`` for an MLP on 16x16 images).
    """
    import mindspore as ms

    from model_zoo.src.models import create_model
    from reference_torch.models import create_torch_model

    kwargs = dict(model_kwargs or {})
    torch.manual_seed(seed)
    source = randomize_batchnorm(create_torch_model(name, num_classes, **kwargs), seed + 1)
    dtype = torch.float64 if float64 else torch.float32
    source = source.to(dtype)
    example = torch.zeros(input_shape, dtype=dtype)
    path = export_onnx(source, example, Path(workdir) / f"{name}.onnx")
    init = read_initializers(path)

    torch.manual_seed(seed + 12345)  # different init: only the file can make them agree
    torch_model = create_torch_model(name, num_classes, **kwargs).to(dtype)
    load_into_torch(torch_model, init)
    if float64:
        kwargs["dtype"] = ms.float64
    ms_net = create_model(name, num_classes, **kwargs)
    load_into_mindspore(ms_net, init)
    return Twins(name, torch_model, ms_net, path, init, tuple(input_shape))

"""Explicit name map from a torch twin's ``state_dict`` keys to MindSpore parameter names.

The twins in ``reference_torch/models.py`` have the same module tree as the networks here, so a
key maps by one rule applied to its last component (the "leaf"):

==========================  ==============================  ==========================
torch module                torch leaf                      MindSpore leaf
==========================  ==============================  ==========================
``Conv2d`` / ``Linear``     ``weight``, ``bias``            ``weight``, ``bias``
``BatchNorm2d``             ``weight``                      ``gamma``
``BatchNorm2d``             ``bias``                        ``beta``
``BatchNorm2d``             ``running_mean``                ``moving_mean``
``BatchNorm2d``             ``running_var``                 ``moving_variance``
``BatchNorm2d``             ``num_batches_tracked``         dropped (MindSpore has none)
==========================  ==============================  ==========================

The module path (everything before the leaf) is unchanged: ``layer1.0.bn1.running_var`` ->
``layer1.0.bn1.moving_variance``. Whether a path is a batch norm is *not* guessed from its
name (VGG's ``features.1`` is one): it is read off the MindSpore network with
:func:`batchnorm_prefixes`. The tensors' layouts agree (``[out, in]`` dense weights,
``[out, in, kh, kw]`` conv weights), so values copy without transposes.

Momentum is not a tensor: MindSpore BN ``momentum = 1 - torch momentum`` (0.9 <-> 0.1), which the
model-zoo networks already use.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
from mindspore import Tensor, dtype_to_nptype, nn

__all__ = [
    "BN_LEAF_MAP",
    "DROPPED_TORCH_LEAVES",
    "DEFAULT_SKIP",
    "batchnorm_prefixes",
    "torch_to_ms_name",
    "map_torch_state",
    "load_torch_state",
]

BN_LEAF_MAP: dict[str, str] = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
DROPPED_TORCH_LEAVES: frozenset[str] = frozenset({"num_batches_tracked"})
DEFAULT_SKIP: tuple[str, ...] = ("*.tkfac.*",)  # optimizer state of wrapped layers, not weights


def batchnorm_prefixes(net: nn.Cell) -> frozenset[str]:
    """The parameter-name prefixes (module paths) of the batch norms in ``net``.

    Read from each BN cell's own ``moving_mean`` name, so it stays right after
    ``tkfac_ms.wrap_network`` (which keeps parameter names but changes cell paths).
    """
    prefixes = set()
    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.BatchNorm1d, nn.BatchNorm2d)):
            prefixes.add(cell.moving_mean.name.rpartition(".")[0])
    return frozenset(prefixes)


def torch_to_ms_name(torch_key: str, bn_prefixes: Collection[str] = ()) -> str | None:
    """The MindSpore parameter name of the torch ``state_dict`` key ``torch_key``.

    Args:
        torch_key: e.g. ``"layer1.0.bn1.running_var"``.
        bn_prefixes: module paths that are batch norms (:func:`batchnorm_prefixes` of the
            MindSpore twin). Keys under other paths keep their leaf.

    Returns:
        The MindSpore name, or ``None`` for a key that has no MindSpore counterpart and is
        dropped on purpose (only a BN's ``num_batches_tracked``).

    Raises:
        ValueError: a batch-norm key with a leaf this map does not know.
    """
    prefix, _, leaf = torch_key.rpartition(".")
    if prefix not in bn_prefixes:
        return torch_key
    if leaf in DROPPED_TORCH_LEAVES:
        return None
    if leaf not in BN_LEAF_MAP:
        raise ValueError(
            f"batch-norm key '{torch_key}' has leaf '{leaf}'; known leaves: "
            f"{', '.join([*BN_LEAF_MAP, *sorted(DROPPED_TORCH_LEAVES)])}"
        )
    return f"{prefix}.{BN_LEAF_MAP[leaf]}" if prefix else BN_LEAF_MAP[leaf]


def map_torch_state(
    state: Mapping[str, Any], net: nn.Cell, skip: Iterable[str] = DEFAULT_SKIP
) -> dict[str, np.ndarray]:
    """Map a torch ``state_dict`` (or ONNX initializers) onto ``net``'s parameter names, strictly.

    Every key must map to a parameter of ``net`` with the same shape, and every parameter of
    ``net`` must be covered, except names matching a ``skip`` pattern (``fnmatch``; by default
    the TKFAC state ``<layer>.tkfac.*``). ``num_batches_tracked`` is the only key dropped.

    Args:
        state: torch key -> array-like (``torch.Tensor`` on CPU, ``np.ndarray``, ...).
        net: the MindSpore twin.
        skip: patterns of MindSpore parameter names that need no value.

    Returns:
        MindSpore parameter name -> array, cast to that parameter's dtype.

    Raises:
        ValueError: listing every unmapped key, missing parameter and shape mismatch.
    """
    skip = tuple(skip)
    params = {p.name: p for p in net.get_parameters()}
    bn = batchnorm_prefixes(net)
    out: dict[str, np.ndarray] = {}
    targets: set[str] = set()
    problems: list[str] = []
    for key, value in state.items():
        name = torch_to_ms_name(key, bn)
        if name is None:
            continue
        array = np.asarray(value)
        if name not in params:
            problems.append(f"unmapped: torch '{key}' -> '{name}' is not a parameter of the net")
        elif name in targets:
            problems.append(f"duplicate: torch '{key}' maps onto '{name}' a second time")
        elif tuple(array.shape) != tuple(params[name].shape):
            problems.append(
                f"shape mismatch: torch '{key}' {tuple(array.shape)} vs "
                f"'{name}' {tuple(params[name].shape)}"
            )
        else:
            out[name] = array.astype(dtype_to_nptype(params[name].dtype), copy=False)
        targets.add(name)
    for name in params:
        if name not in targets and not any(fnmatch.fnmatchcase(name, p) for p in skip):
            problems.append(f"missing: no torch key provides '{name}'")
    if problems:
        raise ValueError(
            f"torch -> MindSpore weight map failed ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    return out


def load_torch_state(
    net: nn.Cell, state: Mapping[str, Any], skip: Iterable[str] = DEFAULT_SKIP
) -> list[str]:
    """Copy a torch ``state_dict`` into ``net`` in place through :func:`map_torch_state`.

    Nothing is written unless the whole map succeeds. Returns the names written, in order.
    """
    mapped = map_torch_state(state, net, skip)
    params = {p.name: p for p in net.get_parameters()}
    for name, array in mapped.items():
        params[name].set_data(Tensor(array))
    return list(mapped)

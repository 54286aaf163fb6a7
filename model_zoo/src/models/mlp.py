"""Multi-layer perceptron: ``Flatten -> [Dense -> ReLU] * len(hidden) -> Dense``."""

from __future__ import annotations

from collections.abc import Sequence

import mindspore as ms
from mindspore import nn

__all__ = ["MLP", "mlp"]


class MLP(nn.Cell):
    """Fully connected ReLU network on flattened inputs.

    Parameter names: ``hidden.{2i}.weight`` / ``hidden.{2i}.bias`` for the i-th hidden layer
    (the odd indices are the parameter-free ReLUs), ``fc.weight`` / ``fc.bias`` for the output
    layer. The torch twin uses the same names.

    Args:
        in_dim: number of input features after flattening (3 * 32 * 32 for 32x32 RGB images).
        hidden: widths of the hidden layers; empty gives a linear classifier.
        num_classes: number of outputs (logits).
        dtype: parameter dtype; ``ms.float64`` works on CPU (Dense-only nets), which the parity
            suite uses for its float64 comparisons.
    """

    def __init__(
        self,
        in_dim: int = 3 * 32 * 32,
        hidden: Sequence[int] = (128, 64),
        num_classes: int = 10,
        dtype: ms.Type = ms.float32,
    ):
        super().__init__()
        if in_dim < 1 or num_classes < 1 or any(int(h) < 1 for h in hidden):
            raise ValueError(
                f"MLP widths must be >= 1, got in_dim={in_dim}, "
                f"hidden={tuple(hidden)}, num_classes={num_classes}"
            )
        self.flatten = nn.Flatten()
        layers: list[nn.Cell] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Dense(width, int(h), dtype=dtype), nn.ReLU()]
            width = int(h)
        self.hidden = nn.SequentialCell(layers) if layers else nn.Identity()
        self.fc = nn.Dense(width, num_classes, dtype=dtype)

    def construct(self, x):
        """``[N, ...]`` inputs (flattened) -> ``[N, num_classes]`` logits."""
        return self.fc(self.hidden(self.flatten(x)))


def mlp(
    num_classes: int = 10,
    in_dim: int = 3 * 32 * 32,
    hidden: Sequence[int] = (128, 64),
    dtype: ms.Type = ms.float32,
) -> MLP:
    """Registry entry: :class:`MLP` (default 3072-128-64-``num_classes``)."""
    return MLP(in_dim=in_dim, hidden=hidden, num_classes=num_classes, dtype=dtype)

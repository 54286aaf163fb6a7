"""The three curvature approximations, one object each (spec Sec. 2-3 and 6).

Everything that differs between TKFAC_nor, TKFAC_new and KFAC lives here; ``optimizer.py``
picks one object at construction (:func:`make_approximation`) and calls it without ever asking
which one it holds. The formulas themselves are in ``_math.py``; this module only says which
of them each approximation uses. The MindSpore twin is ``tkfac_ms/approximations.py`` (same
class names, and the same method names where the math is the same; it works on the batch sums
its capture cells emit, this one on the captured ``a`` and ``u``).

The pattern is kfac-jax's curvature blocks: a small base class, and each variant a subclass
that overrides only what differs. :class:`CurvatureApproximation` says:

* :meth:`~CurvatureApproximation.layer_statistics`: one layer's statistics of one batch, by
  name: ``{"delta", "phi", "psi"}`` for TKFAC (spec Sec. 2, Eq. 8 / 12), ``{"a", "g"}`` for
  KFAC (Sec. 6);
* :attr:`~CurvatureApproximation.recorded_statistics`: which of them the layer's
  ``LayerState`` keeps (its fields of the same names): ``delta, phi, psi`` for TKFAC, none
  for KFAC;
* :meth:`~CurvatureApproximation.network_beta`: TKFAC_new's ``beta`` (Eq. 16) over the
  whole network's Conv2d layers; the others return the current ``beta`` unchanged, and
  :attr:`~CurvatureApproximation.updates_beta` is false for them;
* :meth:`~CurvatureApproximation.damped_factors`: ``(a_batch, g_batch)``, what enters the
  moving average (Sec. 4): ``Phi_hat, Psi_hat`` (Eq. 14), ``Phi~, Psi~`` (Eq. 15) or KFAC's
  undamped ``A, G``;
* :meth:`~CurvatureApproximation.inverse_damping`: what is added to the factor states before
  inverting: KFAC's factored Tikhonov damping with ``pi`` (Sec. 6); nothing for TKFAC, whose
  factors are damped already.

The reference has no approximation-specific diagnostics (the twin's ``diagnostics`` hook
feeds MindSpore callbacks that the reference does not have).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import Tensor

from reference_torch import _math
from reference_torch.config import Approximation, TKFACConfig

__all__ = ["CurvatureApproximation", "TKFACNor", "TKFACNew", "KFAC", "make_approximation"]

#: One layer's statistics of one batch, by name (:meth:`CurvatureApproximation.layer_statistics`).
Statistics = Mapping[str, Tensor]


class CurvatureApproximation:
    """Base class: the approximation-specific parts of a TKFAC step (see the module docstring).

    Args:
        config: the validated hyperparameters; the object keeps what it uses (``nu``).
    """

    #: the :class:`Approximation` this class implements
    kind: ClassVar[Approximation]
    #: the statistics that ``LayerState`` records (its fields of the same names)
    recorded_statistics: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`network_beta` gives a new ``beta`` to commit
    updates_beta: ClassVar[bool] = False

    def __init__(self, config: TKFACConfig):
        self.nu = config.nu

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nu={self.nu})"

    def layer_statistics(self, a: Tensor, u: Tensor) -> dict[str, Tensor]:
        """One layer's statistics of one batch, by name (spec Sec. 2 or 6).

        Args:
            a: ``[N, T, d_in]`` layer inputs.
            u: ``[N, T, d_out]`` per-sample output gradients.
        """
        raise NotImplementedError

    def network_beta(
        self, stats_by_layer: Sequence[Statistics], is_conv: Sequence[bool], beta: Tensor
    ) -> Tensor:
        """``beta`` of this factor update (TKFAC_new, Eq. 16); the current ``beta`` otherwise.

        Args:
            stats_by_layer: :meth:`layer_statistics` of every layer updated on this step.
            is_conv: whether each of those layers is a Conv2d, in the same order.
            beta: the current ``beta`` (0-d).
        """
        return beta

    def damped_factors(
        self, stats: Statistics, damping: float, beta: Tensor, is_conv: bool
    ) -> tuple[Tensor, Tensor]:
        """``(a_batch, g_batch)``: one layer's factors as they enter the moving average.

        Args:
            stats: the layer's :meth:`layer_statistics`.
            damping: ``lambda`` of this step.
            beta: :meth:`network_beta` of this step.
            is_conv: whether the layer is a Conv2d.

        Returns:
            ``[d_in, d_in]`` and ``[d_out, d_out]``.
        """
        raise NotImplementedError

    def inverse_damping(self, a: Tensor, g: Tensor, damping: float) -> tuple[Tensor, Tensor]:
        """The matrices to invert for the factor states ``a``, ``g`` (spec Sec. 4): unchanged."""
        return a, g


class _TKFAC(CurvatureApproximation):
    """The TKFAC statistics shared by both damping variants (spec Sec. 2)."""

    recorded_statistics = ("delta", "phi", "psi")

    def layer_statistics(self, a: Tensor, u: Tensor) -> dict[str, Tensor]:
        """``{"delta", "phi", "psi"}`` (spec Sec. 2; paper Eq. 8, 12)."""
        delta, phi, psi = _math.tkfac_stats(a, u)
        return {"delta": delta, "phi": phi, "psi": psi}


class TKFACNor(_TKFAC):
    """TKFAC_nor (spec Sec. 3; paper Eq. 14): ``Phi_hat = sqrt(delta) Phi + sqrt(lambda) I``."""

    kind = Approximation.TKFAC_NOR

    def damped_factors(
        self, stats: Statistics, damping: float, beta: Tensor, is_conv: bool
    ) -> tuple[Tensor, Tensor]:
        """``Phi_hat``, ``Psi_hat`` (Eq. 14); ``beta`` and ``is_conv`` are unused."""
        return _math.tkfac_nor_damping(stats["delta"], stats["phi"], stats["psi"], damping)


class TKFACNew(_TKFAC):
    """TKFAC_new (spec Sec. 3; paper Eq. 15-16): the trace floored at ``nu``, no ``lambda``.

    Conv2d layers use ``delta~ = max(nu, delta)``; Linear layers ``max(nu, beta * delta)``
    with ``beta`` of the whole network's Conv2d layers on the same step.
    """

    kind = Approximation.TKFAC_NEW
    updates_beta = True

    def network_beta(
        self, stats_by_layer: Sequence[Statistics], is_conv: Sequence[bool], beta: Tensor
    ) -> Tensor:
        """Eq. 16 over the Conv2d layers of this step; the current ``beta`` is not used."""
        conv_deltas = [
            stats["delta"] for stats, conv in zip(stats_by_layer, is_conv, strict=True) if conv
        ]
        return _math.tkfac_new_beta(conv_deltas, self.nu)

    def damped_factors(
        self, stats: Statistics, damping: float, beta: Tensor, is_conv: bool
    ) -> tuple[Tensor, Tensor]:
        """``Phi~``, ``Psi~`` (Eq. 15), ``beta`` for Linear layers only; ``damping`` is unused."""
        delta = stats["delta"]
        layer_beta = None if is_conv else beta.to(delta.dtype)
        return _math.tkfac_new_damping(delta, stats["phi"], stats["psi"], self.nu, layer_beta)


class KFAC(CurvatureApproximation):
    """KFAC (spec Sec. 6): undamped ``A``, ``G`` averaged; damping with ``pi`` when inverting."""

    kind = Approximation.KFAC

    def layer_statistics(self, a: Tensor, u: Tensor) -> dict[str, Tensor]:
        """``{"a": A, "g": G}`` (spec Sec. 6)."""
        a_factor, g_factor = _math.kfac_stats(a, u)
        return {"a": a_factor, "g": g_factor}

    def damped_factors(
        self, stats: Statistics, damping: float, beta: Tensor, is_conv: bool
    ) -> tuple[Tensor, Tensor]:
        """``A``, ``G`` undamped (the damping is added by :meth:`inverse_damping`)."""
        return stats["a"], stats["g"]

    def inverse_damping(self, a: Tensor, g: Tensor, damping: float) -> tuple[Tensor, Tensor]:
        """``A_hat = A + pi sqrt(lambda) I``, ``G_hat = G + sqrt(lambda) / pi I`` (Sec. 6)."""
        return _math.kfac_pi_damping(a, g, damping)


_CLASSES: dict[Approximation, type[CurvatureApproximation]] = {
    cls.kind: cls for cls in (TKFACNor, TKFACNew, KFAC)
}


def make_approximation(config: TKFACConfig) -> CurvatureApproximation:
    """The approximation object of a validated config (``config.approximation``)."""
    return _CLASSES[Approximation(config.approximation)](config)

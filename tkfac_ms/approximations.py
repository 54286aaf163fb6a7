"""The three curvature approximations, one object each (spec Sec. 2-3 and 6).

Everything that differs between TKFAC_nor, TKFAC_new and KFAC lives here; the optimizer, the
train cell, the capture cells and the diagnostics call these objects and never ask which one
they hold. The twin is ``reference_torch/approximations.py``. The formulas themselves are in
``_math.py``.

An approximation object says:

* :attr:`~CurvatureApproximation.sums`: which batch sums the capture cells emit per layer,
  ``"tkfac"`` (``sr_sum, phi_sum, psi_sum``, spec Sec. 2) or ``"kfac"`` (``0, a_sum, g_sum``,
  Sec. 6);
* :meth:`~CurvatureApproximation.network_beta`: TKFAC_new's ``beta`` (Eq. 16) from the whole
  network's sums; the others keep the current value (:attr:`updates_beta` is false);
* :meth:`~CurvatureApproximation.factor_terms`: how one layer's sums enter its moving average,
  ``damped factor = scale * sum + shift * I`` (Eq. 14, Eq. 15, KFAC's undamped ``A``, ``G``);
* :meth:`~CurvatureApproximation.inverse_damping`: what is added before inverting (KFAC's
  factored Tikhonov damping with ``pi``; nothing for TKFAC, whose factors are damped already);
* :meth:`~CurvatureApproximation.layer_statistics` and :meth:`~CurvatureApproximation.diagnostics`:
  the host-side views (``TKFACTrainOneStepCell.layer_statistics``, ``DampingDiagnostics``).

They are ``nn.Cell`` subclasses without Parameters so that the compiled graph can call their
methods.
"""

from __future__ import annotations

import math

from mindspore import Tensor, nn, ops

from tkfac_ms import _math
from tkfac_ms.config import Approximation, TKFACConfig

__all__ = ["CurvatureApproximation", "TKFACNor", "TKFACNew", "KFAC", "make_approximation"]


class CurvatureApproximation(nn.Cell):
    """Base class: the approximation-specific parts of a TKFAC step (see the module docstring)."""

    kind: Approximation
    #: the batch sums the capture cells emit: "tkfac" or "kfac"
    sums = "tkfac"
    #: whether :meth:`network_beta` gives a new ``beta`` to commit
    updates_beta = False

    def __init__(self, config: TKFACConfig):
        super().__init__(auto_prefix=False)
        self.nu = config.nu

    def network_beta(self, layer_sums, is_conv, count, c2, beta):
        """``beta`` for this factor update (TKFAC_new, Eq. 16); the current one otherwise."""
        return beta

    def factor_terms(self, sums, count, c2, damping, beta, is_conv, d_in, d_out, delta_state):
        """``(scale_a, shift_a, scale_g, shift_g, delta)`` of one layer (spec Sec. 2-4).

        The damped batch factors are ``scale * sum + shift * I`` (``shift`` None: no identity
        term); ``delta`` is what the layer's ``delta`` state becomes.

        Args:
            sums: the layer's ``(sr_sum, a_sum, g_sum)``, unscaled (``u = c * dout``).
            count: ``N``.
            c2: ``c^2``.
            damping: ``lambda``.
            beta: this update's ``beta``.
            is_conv: whether the layer is a convolution (a constant).
            d_in: the input-side factor size (a constant).
            d_out: the output-side factor size (a constant).
            delta_state: the layer's current ``delta`` state.
        """
        raise NotImplementedError

    def inverse_damping(self, a, g, damping):
        """The matrices to invert for factor states ``a``, ``g`` (spec Sec. 4)."""
        return a, g

    def layer_statistics(self, sr_sum, a_sum, g_sum, n, c2) -> dict[str, Tensor]:
        """One layer's statistics of one batch, by name (``TKFACTrainOneStepCell``)."""
        delta, phi, psi = _math.tkfac_from_sums(sr_sum * c2, a_sum * c2, g_sum * c2, n)
        return {"delta": delta, "phi": phi, "psi": psi}

    def diagnostics(self, delta, a_factor, g_factor, d_in, d_out, is_conv, damping, beta):
        """``delta, delta_tilde, ratio_phi, ratio_psi`` of one layer (host floats, callbacks)."""
        raise NotImplementedError

    def _tkfac_terms(self, sr, count, c2, sd, damp_a, damp_g, d_in, d_out):
        scale, shift_a, shift_g = _math.tkfac_factor_coefficients(
            sr, count, sd, c2, damp_a, damp_g, d_in, d_out
        )
        return scale, shift_a, scale, shift_g


class TKFACNor(CurvatureApproximation):
    """TKFAC_nor (spec Sec. 2, paper Eq. 14): ``Phi_hat = sqrt(delta) Phi + sqrt(lambda) I``."""

    kind = Approximation.TKFAC_NOR

    def factor_terms(self, sums, count, c2, damping, beta, is_conv, d_in, d_out, delta_state):
        """Eq. 14: shifts ``sqrt(lambda) I`` on both factors."""
        sr = sums[0] * c2
        delta = sr / count
        damp = ops.sqrt(ops.cast(damping, delta.dtype))
        terms = self._tkfac_terms(sr, count, c2, ops.sqrt(delta), damp, damp, d_in, d_out)
        return terms + (delta,)

    def diagnostics(self, delta, a_factor, g_factor, d_in, d_out, is_conv, damping, beta):
        """The damping's weight against the factors' mean eigenvalues."""
        sd, sl = math.sqrt(max(delta, 0.0)), math.sqrt(damping)
        return {
            "delta": delta,
            "delta_tilde": float("nan"),
            "ratio_phi": sl / (sd / d_in) if sd > 0 else math.inf,
            "ratio_psi": sl / (sd / d_out) if sd > 0 else math.inf,
        }


class TKFACNew(CurvatureApproximation):
    """TKFAC_new (spec Sec. 3, paper Eq. 15-16): the trace floored at ``nu`` (dense: ``beta``)."""

    kind = Approximation.TKFAC_NEW
    updates_beta = True

    def network_beta(self, layer_sums, is_conv, count, c2, beta):
        """Eq. 16 over the live conv layers."""
        conv_deltas = ()
        for sums, conv in zip(layer_sums, is_conv):
            if conv:
                conv_deltas += (sums[0] * c2 / count,)
        return _math.tkfac_new_beta(conv_deltas, self.nu)

    def factor_terms(self, sums, count, c2, damping, beta, is_conv, d_in, d_out, delta_state):
        """Eq. 15: ``sqrt(d~) Phi + (d~ / d) I`` with ``d~`` floored at ``nu``."""
        sr = sums[0] * c2
        delta = sr / count
        dt = _math.tkfac_new_delta(delta, self.nu, None if is_conv else beta)
        damp_a, damp_g = dt / _math.const(d_in, dt), dt / _math.const(d_out, dt)
        terms = self._tkfac_terms(sr, count, c2, ops.sqrt(dt), damp_a, damp_g, d_in, d_out)
        return terms + (delta,)

    def diagnostics(self, delta, a_factor, g_factor, d_in, d_out, is_conv, damping, beta):
        """``delta~`` and ``sqrt(delta~)``, the factors' scale."""
        dt = max(self.nu, delta if is_conv else beta * delta)
        return {
            "delta": delta,
            "delta_tilde": dt,
            "ratio_phi": math.sqrt(dt),
            "ratio_psi": math.sqrt(dt),
        }


class KFAC(CurvatureApproximation):
    """KFAC (spec Sec. 6): undamped ``A``, ``G`` averaged, damped with ``pi`` when inverted."""

    kind = Approximation.KFAC
    sums = "kfac"

    def factor_terms(self, sums, count, c2, damping, beta, is_conv, d_in, d_out, delta_state):
        """The undamped ``A = sum / N`` and ``G = c^2 sum / N``."""
        return ops.ones_like(count) / count, None, c2 / count, None, delta_state

    def inverse_damping(self, a, g, damping):
        """Factored Tikhonov damping with ``pi`` (spec Sec. 6)."""
        return _math.kfac_pi_damping(a, g, damping)

    def layer_statistics(self, sr_sum, a_sum, g_sum, n, c2) -> dict[str, Tensor]:
        """``A`` and ``G`` of the batch."""
        return {"a": a_sum / n, "g": g_sum * c2 / n}

    def diagnostics(self, delta, a_factor, g_factor, d_in, d_out, is_conv, damping, beta):
        """The ``pi``-split damping against the factors' mean eigenvalues."""
        tr_a, tr_g = float(a_factor.trace()) / d_in, float(g_factor.trace()) / d_out
        pi = math.sqrt(tr_a / tr_g) if tr_a > 0 and tr_g > 0 else 1.0
        sl = math.sqrt(damping)
        return {
            "delta": float("nan"),
            "delta_tilde": float("nan"),
            "ratio_phi": pi * sl / tr_a if tr_a > 0 else math.inf,
            "ratio_psi": sl / pi / tr_g if tr_g > 0 else math.inf,
        }


_CLASSES = {cls.kind: cls for cls in (TKFACNor, TKFACNew, KFAC)}


def make_approximation(config: TKFACConfig) -> CurvatureApproximation:
    """The approximation object of a validated config."""
    return _CLASSES[config.approximation](config)

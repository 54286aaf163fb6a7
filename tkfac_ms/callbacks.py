"""Training callbacks: the damping diagnostics of paper Fig. 3.

:class:`DampingDiagnostics` logs, for every preconditioned layer and after every factor update,
the trace ``delta`` and how large the damping is against the curvature it is added to:

* TKFAC_nor (Eq. 14): ``Phi_hat = sqrt(delta) Phi + sqrt(lambda) I``. The mean eigenvalue of the
  curvature part is ``tr(sqrt(delta) Phi) / d_in = sqrt(delta) / d_in`` (``tr Phi = 1``), so
  ``ratio_phi = sqrt(lambda) / (sqrt(delta) / d_in)``, and likewise ``ratio_psi`` with ``d_out``;
* TKFAC_new (Eq. 15): the damping is ``delta~ / d`` and the curvature part ``sqrt(delta~) Phi``,
  so both ratios are ``(delta~ / d) / (sqrt(delta~) / d) = sqrt(delta~)`` (with ``delta~`` from
  ``nu`` and, for dense layers, ``beta``);
* KFAC (spec Sec. 6): ``ratio_a = pi sqrt(lambda) / (tr A / d_in)``,
  ``ratio_g = (sqrt(lambda) / pi) / (tr G / d_out)``.

A ratio above 1 means the damping dominates the curvature in that factor: the paper argues that
TKFAC_new keeps it from doing so on convolutional layers.
"""

from __future__ import annotations

import csv
import os

from mindspore.train import Callback

from tkfac_ms.optimizer import TKFAC

__all__ = ["DampingDiagnostics", "damping_ratios"]

FIELDS = ("step", "layer", "kind", "delta", "delta_tilde", "ratio_phi", "ratio_psi")


def damping_ratios(opt: TKFAC) -> list[dict[str, float | int | str]]:
    """The diagnostics of every layer from the optimizer's current state (host side)."""
    cfg = opt.config
    step = int(opt.tkfac_step.asnumpy().reshape(-1)[0])
    # The state reflects the last factor update, made at the last step t with t % T_FIM == 0.
    last_update = max(step - 1, 0) // cfg.factor_update_steps * cfg.factor_update_steps
    damping = cfg.damping_at(last_update)
    beta = float(opt.beta.asnumpy())
    rows: list[dict[str, float | int | str]] = []
    for layer in opt.layers:
        d_in, d_out = layer.d_in, layer.d_out
        row: dict[str, float | int | str] = {
            "step": last_update,
            "layer": layer.path,
            "kind": layer.kind,
        }
        row.update(
            opt.approximation.diagnostics(
                float(layer.delta.asnumpy()),
                layer.a_factor.asnumpy(),
                layer.g_factor.asnumpy(),
                d_in,
                d_out,
                layer.kind == "conv",
                damping,
                beta,
            )
        )
        rows.append(row)
    return rows


class DampingDiagnostics(Callback):
    """Log :func:`damping_ratios` after every factor update to a CSV file.

    Args:
        optimizer: the :class:`~tkfac_ms.TKFAC` being trained.
        path: CSV file to append to (created with a header); ``None`` keeps rows in memory only.

    The rows are also kept in :attr:`rows`. Use it with ``Model.train(..., callbacks=[...])``.
    """

    def __init__(self, optimizer: TKFAC, path: str | os.PathLike | None = None):
        super().__init__()
        if not isinstance(optimizer, TKFAC):
            raise TypeError(f"optimizer must be a tkfac_ms.TKFAC, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.path = None if path is None else os.fspath(path)
        self.rows: list[dict[str, float | int | str]] = []
        self._logged_step = -1

    def on_train_step_end(self, run_context) -> None:
        """After a step that updated the factors, record every layer's diagnostics."""
        step = int(self.optimizer.tkfac_step.asnumpy().reshape(-1)[0])
        last = step - 1  # the step just taken
        if (
            last < 0
            or last % self.optimizer.config.factor_update_steps
            or last == self._logged_step
        ):
            return
        self._logged_step = last
        new = damping_ratios(self.optimizer)
        self.rows.extend(new)
        if self.path is not None:
            fresh = not os.path.exists(self.path)
            with open(self.path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=FIELDS)
                if fresh:
                    writer.writeheader()
                writer.writerows(new)

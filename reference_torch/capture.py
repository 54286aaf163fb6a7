"""Capture of the per-sample vectors ``a`` and ``u`` (spec Sec. 1) with PyTorch hooks.

Framework glue only: this module turns what a layer sees in the forward and backward pass into
the ``[N, T, d_in]`` / ``[N, T, d_out]`` tensors of the spec; ``_math.py`` does the math and
``optimizer.py`` decides when to capture. The MindSpore twin is ``tkfac_ms/capture.py``.

How it works. :class:`LayerCapture` puts a forward hook on an ``nn.Linear`` or ``nn.Conv2d``.
While the capture is *armed* (the optimizer arms it before the forward pass of a factor-update
step), the hook

* builds ``a`` from the layer input (im2col patches for a convolution, a trailing 1 with bias);
* registers a gradient hook on the layer *output* tensor, which records ``u`` from the first
  backward pass that is allowed to record (:attr:`LayerCapture.record_backward`) and ignores
  the later ones.

**Decision**: a tensor hook on the output instead of ``register_full_backward_hook``. A full
backward hook wraps the output in a custom autograd function, and PyTorch then refuses any
in-place op on that output (``nn.ReLU(inplace=True)`` right after the layer raises "Output 0 of
BackwardHookFunction is a view and is being modified inplace"). A tensor hook registered before
an in-place op receives the gradient with respect to the tensor as the layer produced it, which
is exactly ``u``; and it only exists on capture steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from reference_torch.config import LossReduction

__all__ = ["LayerCapture", "UnsupportedLayerError", "unsupported_reason", "SUPPORTED_TYPES"]

#: Layer types with a Kronecker-factored block.
SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


class UnsupportedLayerError(ValueError):
    """A Linear/Conv2d configuration the capture cannot handle (e.g. a grouped convolution)."""


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be captured, or None if it can.

    Supported: ``nn.Linear``, and ``nn.Conv2d`` with ``groups=1`` and ``padding_mode="zeros"``
    (any stride, padding, dilation; bias or not).
    """
    if not isinstance(module, SUPPORTED_TYPES):
        return f"{type(module).__name__} is not one of Linear, Conv2d"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups}) is not supported, only groups=1"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} is not supported, only 'zeros'"
    return None


def _conv_pads(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` zero padding (``F.pad`` order), exactly as the layer pads.

    Integer padding ``(p_h, p_w)`` pads both sides; ``"same"`` puts the odd pixel on the
    right/bottom (``total = dilation * (k - 1)``, ``left = total // 2``) like PyTorch does.
    """
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for dil, k in zip(reversed(conv.dilation), reversed(conv.kernel_size), strict=True):
            total = dil * (k - 1)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    p_h, p_w = conv.padding
    return (p_w, p_w, p_h, p_h)


def layer_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """``a`` ``[N, T, d_in]`` from a layer input ``x`` (spec Sec. 1).

    Conv2d: ``x`` ``[N, C_in, H, W]`` -> im2col patches ``[N, H_out*W_out, C_in*k_h*k_w]``
    whose column order ``(c, i, j)`` is that of ``weight.reshape(C_out, -1)``.
    Linear: ``x`` ``[N, ..., in_features]`` -> ``[N, T, in_features]`` (``T = 1`` for 2-d input).
    A trailing column of ones is appended when the layer has a bias.
    """
    if isinstance(module, nn.Conv2d):
        x = F.pad(x, _conv_pads(module))
        cols = F.unfold(
            x, module.kernel_size, dilation=module.dilation, padding=0, stride=module.stride
        )  # [N, C_in*k_h*k_w, T]
        a = cols.transpose(1, 2)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    if module.bias is not None:
        a = torch.cat([a, a.new_ones(a.shape[0], a.shape[1], 1)], dim=2)
    return a


def layer_output_grads(module: nn.Module, grad_out: Tensor) -> Tensor:
    """``u`` ``[N, T, d_out]`` from the gradient w.r.t. the layer output (before any scaling).

    Conv2d: ``[N, C_out, H_out, W_out] -> [N, H_out*W_out, C_out]``;
    Linear: ``[N, ..., out_features] -> [N, T, out_features]``.
    """
    n = grad_out.shape[0]
    if isinstance(module, nn.Conv2d):
        return grad_out.reshape(n, grad_out.shape[1], -1).transpose(1, 2)
    return grad_out.reshape(n, -1, grad_out.shape[-1])


class LayerCapture:
    """Hooks on one Linear / Conv2d layer that record ``a`` and ``u`` when armed.

    Lifecycle on a factor-update step: :meth:`arm` -> forward pass (``a`` recorded) -> a
    backward pass with :attr:`record_backward` set (``u`` recorded once) -> the optimizer reads
    :attr:`a`, :attr:`u` -> :meth:`disarm` (drops them). Forward passes under ``torch.no_grad``
    are ignored; a second recorded forward replaces the first (the last forward wins).

    Attributes:
        a: ``[N, T, d_in]`` or None, detached.
        u: ``[N, T, d_out]`` or None, detached, scaled to the per-sample loss: ``x N`` when the
            recording backward came from a mean-reduced loss, ``x 1`` for a sum.
        record_backward: whether the next backward pass through the output may record ``u``.
        reduction: how the loss of the recording backward pass reduces over the batch.

    Raises:
        UnsupportedLayerError: if :func:`unsupported_reason` rejects ``module``.
    """

    def __init__(self, module: nn.Module):
        reason = unsupported_reason(module)
        if reason is not None:
            raise UnsupportedLayerError(reason)
        self.module = module
        self.has_bias = getattr(module, "bias", None) is not None
        self.armed = False
        self.record_backward = False
        self.reduction = LossReduction.MEAN
        self.a: Tensor | None = None
        self.u: Tensor | None = None
        self._grad_handle: RemovableHandle | None = None
        self._forward_handle = module.register_forward_hook(self._forward_hook)

    # -- control, called by the optimizer
    def arm(self, reduction: LossReduction, record_backward: bool) -> None:
        """Record ``a`` on the next forward; ``u`` on a backward when ``record_backward``."""
        self.disarm()
        self.armed = True
        self.reduction = reduction
        self.record_backward = record_backward

    def disarm(self) -> None:
        """Stop recording and drop what was recorded."""
        self.armed = False
        self.record_backward = False
        self.a = None
        self.u = None
        self._remove_grad_hook()

    def remove(self) -> None:
        """Remove every hook from the module."""
        self.disarm()
        self._forward_handle.remove()

    # -- hooks
    def _forward_hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not self.armed or not torch.is_grad_enabled():
            return
        self.a = layer_inputs(module, inputs[0].detach())
        self.u = None
        self._remove_grad_hook()
        if output.requires_grad:
            self._grad_handle = output.register_hook(self._grad_hook)

    def _grad_hook(self, grad_out: Tensor) -> None:
        if not self.record_backward or self.u is not None:
            return  # not allowed to record, or already recorded: never overwrite
        u = layer_output_grads(self.module, grad_out.detach())
        if self.reduction == LossReduction.MEAN:
            u = u * u.shape[0]  # d l_n / d s = N * d((1/N) sum l) / d s
        self.u = u

    def _remove_grad_hook(self) -> None:
        if self._grad_handle is not None:
            self._grad_handle.remove()
            self._grad_handle = None

"""Graph-mode capture of the per-sample statistics, by wrapping the user's own layers.

How it works (GRAPH_MODE-safe, no Python hooks):

``TKFACDense`` / ``TKFACConv2d`` hold the user's ``nn.Dense`` / ``nn.Conv2d`` and route its
output through its capture cell (:class:`DenseCapture`, :class:`Conv2dCapture`: one class per
layer kind), an identity cell with a custom ``bprop``. That ``bprop``
sees both the layer input ``x`` and the output gradient ``dout``, builds ``a`` (im2col with
``ops.unfold``, bias column) and ``u``, and returns the batch *sums* of spec Sec. 2 (TKFAC) or
Sec. 6 (KFAC) as the "gradients" of three probe inputs. The probes are the layer's own state
Parameters ``<layer>.tkfac.delta``, ``.a_factor`` and ``.g_factor``: their values are never
read by the forward pass, only their gradient slots are used. So:

* a gradient taken with respect to the probes returns the statistics, with no per-sample buffer
  and no side effect inside the backward pass (side effects in hooks are unreliable in graph
  mode: ``HookBackward`` is dropped, ``InsertGradientOf`` cannot close over the layer input);
* a gradient taken only with respect to the model weights does not ask for the probe slots, and
  the compiler removes the im2col and covariance work as dead code. Steps that update no factor
  therefore pay nothing for it (measured in ``bench/step_time.py``).

The probe state Parameters have ``requires_grad=False``, so they are not in
``net.trainable_params()`` and no other optimizer will ever touch them.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Sequence

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

from tkfac_ms import _cpu_kernels, _math
from tkfac_ms.config import check_skip

__all__ = ["TKFACLayer", "TKFACDense", "TKFACConv2d", "wrap_network", "find_wrappers", "unwrap"]

_NORM_CELLS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _same_pads(shape, kernel_size, stride, dilation):
    """``(top, bottom, left, right)`` of MindSpore's ``pad_mode="same"`` for an NCHW input."""
    pads = ()
    for size, k, s, d in zip(shape[2:], kernel_size, stride, dilation):
        out = (size + s - 1) // s
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
        pads += (total // 2, total - total // 2)
    return pads


#: Output locations ``N * H_out * W_out`` from which a convolution's ``phi_sum`` on the CPU comes
#: from the C++ kernel: below it the kernel's fixed ``d x d`` costs (building and mirroring the
#: output) exceed what its product saves (measured: at ``d = 4608`` and 32 locations 43 ms
#: against ~15 ms; at ResNet-20's sizes, 8192 locations and more, 4x faster).
CPU_KERNEL_MIN_LOCATIONS = 256


class _FactorCapture(nn.Cell):
    """Identity on ``y`` whose ``bprop`` emits the factor statistics into the probe slots.

    The base of one capture class per layer kind (:class:`DenseCapture`,
    :class:`Conv2dCapture`), which give ``patches`` (``a``) and ``outputs`` (``u``), and may
    compute the same ``sums`` a faster way.
    """

    kind = "dense"

    def __init__(self, has_bias: bool):
        super().__init__()
        self.has_bias = has_bias
        # which sums the bprop emits, "tkfac" or "kfac" (TKFACLayer.configure; a compile-time
        # constant)
        self.sums_kind = "tkfac"
        self.compute_dtype = mstype.float32
        self.cpu_phi = None  # the fused C++ phi_sum kernel, where set_cpu_kernel enables it

    def set_cpu_kernel(self, enable: bool, min_locations: int = CPU_KERNEL_MIN_LOCATIONS) -> bool:
        """Whether the fused C++ kernel computes ``phi_sum``: never for this layer kind."""
        return False

    def construct(self, x, y, p_delta, p_a, p_g):
        return y

    def patches(self, x):
        """``a``: ``[N, T, d_in]`` (with the bias column)."""
        raise NotImplementedError

    def outputs(self, dout):
        """``u``: ``[N, T, d_out]`` (before the per-sample scale, applied by the optimizer)."""
        raise NotImplementedError

    def sums(self, x, dout):
        """``(sr_sum, a_sum, g_sum)`` of one batch: :meth:`sums_of_vectors`."""
        return self.sums_of_vectors(x, dout)

    def sums_of_vectors(self, x, dout):
        """The sums of ``a = patches(x)`` and ``u = outputs(dout)``.

        :func:`_math.tkfac_sums` (TKFAC) or :func:`_math.kfac_sums` with ``sr_sum = 0`` (KFAC).
        """
        a = self.patches(x)
        u = self.outputs(dout)
        if self.sums_kind == "kfac":
            a_sum, g_sum = _math.kfac_sums(a, u)
            return ops.zeros((), self.compute_dtype), a_sum, g_sum
        return _math.tkfac_sums(a, u)

    def _with_bias_column(self, a):
        if self.has_bias:
            a = ops.concat((a, ops.ones((a.shape[0], a.shape[1], 1), a.dtype)), axis=2)
        return a

    def bprop(self, x, y, p_delta, p_a, p_g, out, dout):
        sr, a_sum, g_sum = self.sums(x, dout)
        # The statistics leave in the factor dtype even when mixed precision has cast the probe
        # inputs to float16 (amp O2/O3): MindSpore hands a custom bprop's outputs to the
        # parameters as they are, so the factors never pass through half precision.
        return ops.zeros_like(x), dout, sr.reshape(()), a_sum, g_sum


class DenseCapture(_FactorCapture):
    """``nn.Dense``: ``a`` is the layer input (``T = 1``, or the leading axes flattened)."""

    kind = "dense"

    def patches(self, x):
        """``a``: ``[N, T, d_in]``, the input rows (+ bias column)."""
        x = ops.cast(x, self.compute_dtype)
        return self._with_bias_column(x.reshape(x.shape[0], -1, x.shape[-1]))

    def outputs(self, dout):
        """``u``: ``[N, T, d_out]``."""
        g = ops.cast(dout, self.compute_dtype)
        return g.reshape(g.shape[0], -1, g.shape[-1])


class Conv2dCapture(_FactorCapture):
    """``nn.Conv2d``: ``a`` are the im2col patches, ``T = H_out * W_out`` locations."""

    kind = "conv"

    def __init__(
        self,
        has_bias: bool,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int],
        pads: tuple[int, int, int, int] | str,
        in_channels: int,
    ):
        super().__init__(has_bias)
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        # (top, bottom, left, right) as the layer pads, or "same" (computed from the input size)
        self.same = pads == "same"
        self.pads = (0, 0, 0, 0) if self.same else pads
        # im2col as a grouped convolution with one-hot kernels: group c turns input channel
        # c into its kh*kw shifted copies, so the output channels come in the (c, i, j)
        # order of the weight's columns, with the layer's own stride, dilation and padding.
        # Bit-identical to ops.unfold and 2-4x faster on CPU (oneDNN); MindSpore's CPU
        # convolution has no float64 kernel, so float64 statistics use ops.unfold.
        kh, kw = kernel_size
        eye = np.zeros((in_channels * kh * kw, 1, kh, kw), np.float32)
        for c in range(in_channels):
            for k in range(kh * kw):
                eye[c * kh * kw + k, 0, k // kw, k % kw] = 1.0
        self.patch_kernel = Tensor(eye)
        self.patch_conv = ops.Conv2D(
            in_channels * kh * kw,
            kernel_size,
            pad_mode="same" if self.same else "pad",
            pad=self.pads,
            stride=stride,
            dilation=dilation,
            group=in_channels,
        )
        # ||a[n,t]||^2 of every patch: the window sums of sum_c x^2, one small convolution
        self.ones_kernel = Tensor(np.ones((1, 1, kh, kw), np.float32))
        self.norm_conv = ops.Conv2D(
            1,
            kernel_size,
            pad_mode="same" if self.same else "pad",
            pad=self.pads,
            stride=stride,
            dilation=dilation,
        )
        self.matmul_nt = ops.MatMul(transpose_b=True)
        # the fused CPU kernel for phi_sum (set_cpu_kernel; None: the MindSpore-op path)
        self.cpu_phi = None
        self.cpu_phi_geom = None
        self.cpu_phi_min_locations = CPU_KERNEL_MIN_LOCATIONS

    def set_cpu_kernel(self, enable: bool, min_locations: int = CPU_KERNEL_MIN_LOCATIONS) -> bool:
        """Use the fused C++ kernel (``csrc/conv_phi.cc``) for ``phi_sum`` of a float32 conv.

        Set by :class:`~tkfac_ms.TKFAC` when the device is the CPU. Returns whether it is in use:
        never for Dense layers, float64 factors, or when the library cannot be built (then the
        MindSpore-op path, which computes the same sums, is used). Batches with fewer than
        ``min_locations`` output locations ``N * H_out * W_out`` (a compile-time shape) also take
        the op path: there the kernel's ``d x d`` overheads outweigh its faster product.
        """
        self.cpu_phi = None
        self.cpu_phi_geom = None
        self.cpu_phi_min_locations = int(min_locations)
        if not enable or self.compute_dtype != mstype.float32:
            return False
        lib = _cpu_kernels.conv_phi_library()
        if lib is None:
            return False
        kh, kw = self.kernel_size
        d = self.patch_kernel.shape[0] + int(self.has_bias)
        top, left = (-1, -1) if self.same else (self.pads[0], self.pads[2])
        threads = int(ms.get_context("runtime_num_threads") or 0) or _cpu_kernels.cpu_count()
        geom = (kh, kw, *self.stride, *self.dilation, top, left, int(self.has_bias), threads)
        self.cpu_phi_geom = Tensor(np.asarray(geom, np.int32))
        self.cpu_phi = ops.Custom(
            f"{lib}:{_cpu_kernels.FUNCTION}",
            out_shape=(d, d),
            out_dtype=mstype.float32,
            func_type="aot",
        )
        # Custom primitives with equal attributes are merged by the graph compiler, which then
        # gives every layer the first one's output shape: the size makes each shape its own.
        self.cpu_phi.add_prim_attr("tkfac_phi_size", d)
        return True

    def patches(self, x):
        """``a``: ``[N, T, d_in]`` im2col patches in ``(c, i, j)`` column order (+ bias column)."""
        x = ops.cast(x, self.compute_dtype)
        if self.compute_dtype == mstype.float32:
            cols = self.patch_conv(x, self.patch_kernel)  # [N, d, Ho, Wo]
            a = cols.transpose(0, 2, 3, 1).reshape(x.shape[0], -1, cols.shape[1])
        else:
            pads = self.pads
            if self.same:
                pads = _same_pads(x.shape, self.kernel_size, self.stride, self.dilation)
            if pads[0] + pads[1] + pads[2] + pads[3] > 0:
                x = ops.pad(x, (pads[2], pads[3], pads[0], pads[1]))
            cols = ops.unfold(x, self.kernel_size, self.dilation, 0, self.stride)  # [N, d, T]
            a = cols.transpose(0, 2, 1)
        return self._with_bias_column(a)

    def outputs(self, dout):
        """``u``: ``[N, T, d_out]``."""
        g = ops.cast(dout, self.compute_dtype)
        return g.reshape(g.shape[0], g.shape[1], -1).transpose(0, 2, 1)

    def sums(self, x, dout):
        """``(sr_sum, a_sum, g_sum)`` of one batch.

        Float32: :meth:`_conv_sums`, the same sums computed in the convolution's own layout;
        float64: :meth:`sums_of_vectors`.
        """
        if self.compute_dtype == mstype.float32:
            return self._conv_sums(ops.cast(x, mstype.float32), ops.cast(dout, mstype.float32))
        return self.sums_of_vectors(x, dout)

    def _conv_sums(self, x, g):
        """The spec's sums for a float32 convolution without the ``[N*T, d]`` patch matrix.

        ``phi_sum = sum_{n,t} r a a^T = B B^T`` with ``B = sqrt(r) a`` laid out ``[d, N*T]``:
        the im2col convolution's output ``[N, d, Ho, Wo]`` is weighted in its own layout and
        reaches ``[d, N*T]`` with one transpose of whole rows (cheap), where ``[N*T, d]`` needs
        an element-wise one; ``s = ||a||^2`` comes from a one-channel convolution of
        ``sum_c x^2`` instead of squaring the patches. Three patch-sized buffers instead of
        four (a compiled CPU graph keeps every one), and a faster factor step
        (docs/performance.md). The bias row/column: ``sum r a`` and ``sum r``.
        """
        if self.sums_kind == "kfac":
            a_sum = self._conv_phi_sum(x, g, None)
            return ops.zeros((), mstype.float32), a_sum, self._kfac_g_sum(g)
        s, r = self._location_norms(x, g)
        return (s * r).sum(), self._conv_phi_sum(x, g, r), self._psi_sum(g, s)

    def _conv_phi_sum(self, x, g, r):
        """``sum r a a^T`` with the bias row (``r = None``: KFAC's unweighted ``sum a a^T``).

        From the fused C++ kernel where it is set and the batch has enough locations, else from
        MindSpore ops.
        """
        n, ho, wo = g.shape[0], g.shape[2], g.shape[3]
        if self.cpu_phi is not None and n * ho * wo >= self.cpu_phi_min_locations:
            w = ops.ones((n, ho, wo), mstype.float32) if r is None else r.reshape(n, ho, wo)
            return self.cpu_phi(x, w, self.cpu_phi_geom)
        cols = self.patch_conv(x, self.patch_kernel)  # [N, d0, Ho, Wo]
        if r is None:
            b = _channel_major(cols)
            a_sum = self.matmul_nt(b, b)
            if self.has_bias:
                total = ops.ones((1, 1), mstype.float32) * b.shape[1]
                a_sum = _with_bias_row(a_sum, b.sum(1, keepdims=True), total)
            return a_sum
        sqrt_r = ops.sqrt(r)
        b = _channel_major(cols * sqrt_r)  # [d0, N*T]
        a_sum = self.matmul_nt(b, b)
        if self.has_bias:
            a_sum = _with_bias_row(
                a_sum, self.matmul_nt(b, sqrt_r.reshape(1, -1)), r.sum().reshape(1, 1)
            )
        return a_sum

    def _location_norms(self, x, g):
        """``s = ||a||^2`` and ``r = ||u||^2`` per location, ``[N, 1, Ho, Wo]`` each."""
        s = self.norm_conv((x * x).sum(1, keepdims=True), self.ones_kernel)
        if self.has_bias:
            s = s + 1.0
        return s, (g * g).sum(1, keepdims=True)

    def _psi_sum(self, g, s):
        u = _channel_major(g * ops.sqrt(s))
        return self.matmul_nt(u, u)

    def _kfac_g_sum(self, g):
        u = _channel_major(g)
        return self.matmul_nt(u, u) / _math.const(g.shape[2] * g.shape[3], u)


def _channel_major(t):
    """``[N, C, H, W] -> [C, N*H*W]`` (a transpose of whole rows of ``H*W``)."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 0, 2).reshape(t.shape[1], -1)


def _with_bias_row(m, col, corner):
    """``[[m, col], [col^T, corner]]``: the homogeneous coordinate's row and column."""
    top = ops.concat((m, col), axis=1)
    return ops.concat((top, ops.concat((col.T, corner), axis=1)), axis=0)


class TKFACLayer(nn.Cell):
    """Base of the wrappers: holds the user's layer and its TKFAC state Parameters.

    State (named ``<layer path>.tkfac.<field>``, float32 unless ``factor_dtype`` says otherwise):

    * ``delta``: the last factor-update batch's ``delta = tr F`` (TKFAC; 0 for KFAC);
    * ``a_factor``, ``g_factor``: the moving-average state (TKFAC: damped ``Phi_hat``,
      ``Psi_hat``; KFAC: undamped ``A``, ``G``), spec Sec. 4;
    * ``a_inv``, ``g_inv``: their (damped) inverses.
    """

    kind = "dense"

    def __init__(
        self,
        layer: nn.Cell,
        path: str,
        d_in: int,
        d_out: int,
        has_bias: bool,
        capture: _FactorCapture,
    ):
        super().__init__(auto_prefix=False)
        self.layer = layer
        self.path = path
        self.d_in = d_in
        self.d_out = d_out
        self.has_bias = has_bias
        self.capture = capture
        self.setting = None  # (sums, dtype, cpu_kernel) once configured
        self.init_state(mstype.float32)

    def init_state(self, dtype: mstype.Type) -> None:
        """(Re)create the state Parameters in ``dtype`` (identity inverses, zero factors)."""
        np_dtype = np.float64 if dtype == mstype.float64 else np.float32
        self.factor_dtype = dtype
        self.capture.compute_dtype = dtype

        def param(field: str, value: np.ndarray) -> Parameter:
            return Parameter(
                Tensor(value.astype(np_dtype)),
                name=f"{self.path}.tkfac.{field}",
                requires_grad=False,
            )

        self.delta = param("delta", np.zeros((), np_dtype))
        self.a_factor = param("a_factor", np.zeros((self.d_in, self.d_in)))
        self.g_factor = param("g_factor", np.zeros((self.d_out, self.d_out)))
        self.a_inv = param("a_inv", np.eye(self.d_in))
        self.g_inv = param("g_inv", np.eye(self.d_out))
        self._rename_state()

    def configure(self, sums: str, dtype: mstype.Type, cpu_kernel: bool) -> None:
        """Set, once, what this layer computes for its optimizer.

        Args:
            sums: ``"tkfac"`` or ``"kfac"``, the batch sums the capture emits
                (``CurvatureApproximation.sums``).
            dtype: the factor dtype (the state is recreated if it differs).
            cpu_kernel: whether the fused C++ kernel may compute ``phi_sum`` (the CPU's own
                route, ``_device.py``).

        Raises:
            ValueError: if the layer was configured differently before (by another optimizer):
                one wrapped layer serves one configuration.
        """
        setting = (sums, dtype, bool(cpu_kernel))
        if self.setting is not None and self.setting != setting:
            raise ValueError(
                f"layer {self.path!r} is already configured for another TKFAC optimizer "
                f"(sums, factor dtype, CPU kernel = {self.setting}, here {setting}); build "
                "one TKFAC per network, or wrap a fresh copy of the network"
            )
        if self.setting == setting:
            return
        if self.factor_dtype != dtype:
            self.init_state(dtype)
        self.capture.sums_kind = sums
        self.capture.set_cpu_kernel(cpu_kernel)
        self.setting = setting

    def _rename_state(self) -> None:
        for field in ("delta", "a_factor", "g_factor", "a_inv", "g_inv"):
            getattr(self, field).name = f"{self.path}.tkfac.{field}"

    @property
    def weight(self) -> Parameter:
        """The wrapped layer's weight."""
        return self.layer.weight

    @property
    def bias(self) -> Parameter | None:
        """The wrapped layer's bias, or None."""
        return self.layer.bias if self.has_bias else None

    def construct(self, x):
        """The layer's output, routed through the capture cell."""
        return self.capture(x, self.layer(x), self.delta, self.a_factor, self.g_factor)


class TKFACDense(TKFACLayer):
    """Wraps an ``nn.Dense`` (no activation inside): ``d_in = in_channels (+1)``, ``T = 1``."""

    kind = "dense"

    def __init__(self, layer: nn.Dense, path: str):
        has_bias = bool(layer.has_bias)
        d_in = int(layer.in_channels) + int(has_bias)
        super().__init__(
            layer, path, d_in, int(layer.out_channels), has_bias, DenseCapture(has_bias)
        )


def _conv_pads(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """Explicit ``(top, bottom, left, right)`` zero padding for pad_mode "pad"/"valid"."""
    if layer.pad_mode == "valid":
        return (0, 0, 0, 0)
    if layer.pad_mode == "same":
        return "same"  # type: ignore[return-value]
    pad = layer.padding
    if isinstance(pad, int):
        return (pad, pad, pad, pad)
    if len(pad) == 2:
        return (pad[0], pad[0], pad[1], pad[1])
    return tuple(int(p) for p in pad)  # type: ignore[return-value]


class TKFACConv2d(TKFACLayer):
    """Wraps an ``nn.Conv2d`` (groups=1, NCHW): ``d_in = C_in k_h k_w (+1)``, ``T = H_out W_out``.

    ``pad_mode`` "pad" and "valid" are supported for any stride and dilation.
    """

    kind = "conv"

    def __init__(self, layer: nn.Conv2d, path: str):
        has_bias = bool(layer.has_bias)
        kh, kw = _pair(layer.kernel_size)
        d_in = int(layer.in_channels) * kh * kw + int(has_bias)
        capture = Conv2dCapture(
            has_bias,
            (kh, kw),
            _pair(layer.stride),
            _pair(layer.dilation),
            _conv_pads(layer),
            int(layer.in_channels),
        )
        super().__init__(layer, path, d_in, int(layer.out_channels), has_bias, capture)


def _unsupported_reason(cell: nn.Cell) -> str | None:
    if isinstance(cell, nn.Conv2d):
        if cell.group != 1:
            return f"grouped convolution (group={cell.group})"
        if getattr(cell, "data_format", "NCHW") != "NCHW":
            return f"data_format={cell.data_format}"
        return None
    if isinstance(cell, nn.Dense):
        if getattr(cell, "activation_flag", False):
            return "nn.Dense with a built-in activation (its output is not the pre-activation)"
        return None
    return "not a Dense or Conv2d layer"


def _own_params(cell: nn.Cell) -> list[Parameter]:
    return list(cell.get_parameters(expand=False))


def _frozen_reason(cell: nn.Cell) -> str | None:
    """Why a Dense/Conv2d whose weight or bias is frozen (``requires_grad=False``) is left alone."""
    frozen = [p.name.rsplit(".", 1)[-1] for p in _own_params(cell) if not p.requires_grad]
    if not frozen:
        return None
    return f"frozen {' and '.join(frozen)} (requires_grad=False)"


def _is_weight_layer(cell: nn.Cell) -> bool:
    """A layer TKFAC could be expected to precondition: it owns a trainable >= 2-D weight."""
    if isinstance(cell, (TKFACLayer, *_NORM_CELLS)):
        return False
    return any(p.requires_grad and len(p.shape) >= 2 for p in _own_params(cell))


def _wrap(cell: nn.Cell, path: str) -> TKFACLayer:
    if isinstance(cell, nn.Conv2d):
        return TKFACConv2d(cell, path)
    return TKFACDense(cell, path)


def find_wrappers(net: nn.Cell) -> list[TKFACLayer]:
    """The TKFAC wrappers inside ``net``, in network order."""
    return [c for _, c in net.cells_and_names() if isinstance(c, TKFACLayer)]


def _replace_child(parent: nn.Cell, key: str, new: nn.Cell) -> None:
    # Write the child slot directly: Cell.__setattr__ would re-prefix the user's parameter names.
    parent._cells[key] = new
    if hasattr(parent, "cell_list"):
        parent.cell_list = list(parent._cells.values())


def unwrap(net: nn.Cell, wrapper: TKFACLayer) -> nn.Cell:
    """Put the user's layer back in place of ``wrapper`` (parameter names unchanged)."""
    parent_path, _, key = wrapper.path.rpartition(".")
    parent = net if not parent_path else _get_cell(net, parent_path)
    if parent._cells.get(key) is not wrapper:
        raise ValueError(f"{wrapper.path!r} is not a wrapper of this network")
    names = {id(p): p.name for p in wrapper.layer.get_parameters()}
    _replace_child(parent, key, wrapper.layer)
    for p in wrapper.layer.get_parameters():
        p.name = names[id(p)]
    return wrapper.layer


def warn_not_preconditioned(layers: Sequence[tuple[str, str]], stacklevel: int = 3) -> None:
    """One warning naming every trainable layer that gets the plain momentum update."""
    if not layers:
        return
    shown = "; ".join(f"'{path}' ({why})" for path, why in layers)
    warnings.warn(
        f"TKFAC: {len(layers)} trainable layer(s) are not preconditioned and get the plain "
        f"momentum update: {shown}. Supported: nn.Dense without activation, nn.Conv2d with "
        "group=1 and NCHW data; list a layer in skip=... to silence this.",
        stacklevel=stacklevel,
    )


def wrap_network(net: nn.Cell, skip: str | Iterable[str] = ()) -> list[TKFACLayer]:
    """Wrap every supported ``nn.Dense`` and ``nn.Conv2d`` of ``net`` in place.

    Args:
        net: the user's network. Its layers are kept (wrapped, not re-implemented) and their
            parameter names are unchanged, so existing checkpoints still load.
        skip: one ``fnmatch`` pattern, or several, of layer paths (as in
            ``net.cells_and_names()``) to leave unwrapped; those layers get the plain momentum
            update. A pattern that matches no layer gets a warning.

    Returns:
        The wrappers, in network order (already-wrapped layers included, so calling this twice
        is harmless).

    Left unwrapped, with the plain momentum update and **one** warning naming them all: every
    other layer with a trainable weight of two or more dimensions (``nn.Conv1d``, ``nn.Conv3d``,
    ``nn.Conv2dTranspose``, ``mint.nn.Linear``, ``nn.Embedding``, a grouped convolution, a Dense
    with a built-in activation, ...), and a Dense or Conv2d whose weight or bias is frozen
    (``requires_grad=False``; a layer with every parameter frozen is left alone silently).
    """
    patterns = check_skip(skip)
    used: set[str] = set()
    targets, left_out = [], []
    for path, cell in net.cells_and_names():
        if not path or isinstance(cell, TKFACLayer):
            continue
        if any(isinstance(c, TKFACLayer) for c in _parents(net, path)):
            continue  # the user's layer inside an existing wrapper
        supported_kind = isinstance(cell, (nn.Dense, nn.Conv2d))
        if not supported_kind and not _is_weight_layer(cell):
            continue
        matched = [pat for pat in patterns if fnmatch.fnmatchcase(path, pat)]
        used.update(matched)
        if matched:
            continue
        if supported_kind and not any(p.requires_grad for p in _own_params(cell)):
            continue  # nothing of it trains
        reason = _unsupported_reason(cell) if supported_kind else "not supported"
        if reason is None:
            reason = _frozen_reason(cell)
        if reason is not None:
            left_out.append((path, f"{type(cell).__name__}: {reason}"))
            continue
        targets.append((path, cell))
    warn_not_preconditioned(left_out)
    for pattern in patterns:
        if pattern not in used and not any(
            fnmatch.fnmatchcase(w.path, pattern) for w in find_wrappers(net)
        ):
            warnings.warn(f"TKFAC: skip pattern {pattern!r} matches no layer", stacklevel=2)
    for path, cell in targets:
        names = {id(p): p.name for p in cell.get_parameters()}
        parent_path, _, key = path.rpartition(".")
        parent = net if not parent_path else _get_cell(net, parent_path)
        wrapper = _wrap(cell, path)
        _replace_child(parent, key, wrapper)
        for p in cell.get_parameters():
            p.name = names[id(p)]
        wrapper._rename_state()
    return find_wrappers(net)


def _get_cell(net: nn.Cell, path: str) -> nn.Cell:
    cell = net
    for key in path.split("."):
        cell = cell._cells[key]
    return cell


def _parents(net: nn.Cell, path: str) -> list[nn.Cell]:
    keys = path.split(".")
    out, cell = [], net
    for key in keys[:-1]:
        cell = cell._cells[key]
        out.append(cell)
    return out

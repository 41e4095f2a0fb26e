"""Kernels measured faster on CPU, as plain functions over tensors.

The model core (``layers.py``, ``mixers.py``, ``metaformer.py``) is plain
PyTorch. A few of its layers choose to call a function here for a CPU
tensor in training, because PyTorch's own CPU kernels (oneDNN, ATen)
measured slower for them on channels-last maps (figures in
``docs/benchmarks.md``, "CPU kernels"):

* a stride-1 depthwise conv whose weight gradient is one depthwise conv
  of the padded input with the output gradient as kernel
  (``depthwise_conv2d``);
* a 1x1 conv whose weight gradient is one GEMM on channels-last rows
  (``pointwise_conv2d``);
* ``conv1x1(gelu(h))`` that recomputes ``gelu(h)`` in backward instead of
  keeping it (``gelu_pointwise``: a quarter of a PoolFormer v1 block's
  activation memory);
* exact GELU on the permuted dense view of a channels-last map (``gelu``);
* ``sum(a * b)`` as one dot product (``sum_of_product``, StarReLU's scale
  gradient).

Every other device (CUDA, XPU, MPS, meta) and graph capture
(``capture.capturing_graph``) gets PyTorch's own ops, so cuDNN or the
compiler chooses the kernels and every conv's gradient is one
``ConvolutionBackward0`` node.

The switch: ``set_enabled(False)`` (or ``with disabled(): ...``) turns all
of this off; the model is then exactly the plain one on CPU too. Values
agree either way (forward bit for bit, gradients to rounding; see
``tests/test_fast_paths.py``).
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .capture import capturing_graph

_ENABLED = True


def set_enabled(flag):
    """Turn the CPU kernels on (default) or off, for the whole process."""
    global _ENABLED
    _ENABLED = bool(flag)


def enabled():
    """Whether the CPU kernels are on (``set_enabled``)."""
    return _ENABLED


@contextlib.contextmanager
def disabled():
    """Run the plain model inside the ``with`` block."""
    before = _ENABLED
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(before)


def applies(x):
    """Whether ``x`` gets a CPU kernel: switch on, CPU, no graph capture."""
    return _ENABLED and x.device.type == 'cpu' and not capturing_graph()


def applies_to_training(x, *params):
    """``applies(x)`` and autograd records the call (``x`` or one of the
    tensors ``params`` needs a gradient)."""
    return (
        applies(x)
        and torch.is_grad_enabled()
        and (
            x.requires_grad
            or any(p is not None and p.requires_grad for p in params)
        )
    )


# --- layouts --------------------------------------------------------------


def _channels_last(x):
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def match_layout(t, ref):
    """``t`` in ``ref``'s memory format where their strides differ (CPU).

    A gradient can arrive in another layout than the activation it meets;
    CPU elementwise kernels and the row views below want them alike.
    """
    if not applies(t) or t.stride() == ref.stride():
        return t
    fmt = (
        torch.channels_last if _channels_last(ref) else torch.contiguous_format
    )
    return t.contiguous(memory_format=fmt)


def _flat_layout(x):
    """``(view, undo)``: the dense NHWC view of a channels-last map."""
    if _channels_last(x):
        return x.permute(0, 2, 3, 1), (lambda y: y.permute(0, 3, 1, 2))
    return x, (lambda y: y)


def gelu(x):
    """Exact GELU on the dense view of a channels-last map."""
    flat, undo = _flat_layout(x)
    return undo(F.gelu(flat))


def _gelu_backward(grad, x):
    flat, undo = _flat_layout(x)
    if flat is not x:
        grad = grad.contiguous(memory_format=torch.channels_last).permute(
            0, 2, 3, 1
        )
    return undo(torch.ops.aten.gelu_backward(grad, flat))


def sum_of_product(a, b):
    """``(a * b).sum()``; on CPU for equal layouts one ``torch.dot``."""
    if applies(a) and a.stride() == b.stride():
        flat_a, flat_b = _flat_layout(a)[0], _flat_layout(b)[0]
        if flat_a.is_contiguous() and flat_b.is_contiguous():
            return torch.dot(flat_a.reshape(-1), flat_b.reshape(-1))
    return (a * b).sum()


# --- convolutions ---------------------------------------------------------


def _nhwc_rows(x):
    """``[B*H*W, C]`` view of a dense channels-last map, else ``None``."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return None


def _conv1x1_backward(grad, x, weight, has_bias, needs):
    """Gradients ``(x, weight, bias)`` of ``F.conv2d(x, weight, bias)``.

    ``weight`` is ``[O, C, 1, 1]``. The input gradient is oneDNN's; the
    weight gradient ``g^T x`` is one GEMM on the channels-last rows of
    both maps. Other layouts use oneDNN for all three.
    """
    need_x, need_w, need_b = needs
    need_b = need_b and has_bias
    grad_rows, x_rows = _nhwc_rows(grad), _nhwc_rows(x)
    if grad_rows is None or x_rows is None:
        return torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]] if has_bias else None,
            [1, 1],
            [0, 0],
            [1, 1],
            False,
            [0, 0],
            1,
            [need_x, need_w, need_b],
        )
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            None,
            [1, 1],
            [0, 0],
            [1, 1],
            False,
            [0, 0],
            1,
            [True, False, False],
        )[0]
    if need_w:
        grad_w = torch.mm(grad_rows.t(), x_rows).view(weight.shape)
    if need_b:
        grad_b = grad_rows.sum(0)
    return grad_x, grad_w, grad_b


def _record_params(ctx, weight, bias):
    ctx.has_bias = bias is not None
    ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype)


def _param_grads(ctx, grad_w, grad_b):
    """The weight and bias gradients in the parameters' dtypes."""
    return (
        None if grad_w is None else grad_w.to(ctx.param_dtypes[0]),
        None if grad_b is None else grad_b.to(ctx.param_dtypes[1]),
    )


def _save_conv(ctx, x, weight, bias, padding=0, groups=1):
    """``F.conv2d`` (stride 1), saving ``x`` and ``weight`` in the dtype
    the conv ran in (autocast may have lowered it)."""
    out = F.conv2d(x, weight, bias, 1, padding, 1, groups)
    ctx.save_for_backward(x.to(out.dtype), weight.to(out.dtype))
    _record_params(ctx, weight, bias)
    return out


class _DepthwiseConvFunction(torch.autograd.Function):
    """A stride-1 depthwise conv whose weight gradient is itself a conv.

    ``dL/dW[c, i, j] = sum_{b,y,x} g[b, c, y, x] * xpad[b, c, y + i, x + j]``
    is the depthwise correlation of the padded input with the output
    gradient as kernel. A poor fit for GPUs (one thread
    per output value looping over a map-sized kernel), hence CPU only.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.padding = padding
        return _save_conv(ctx, x, weight, bias, padding, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad = grad.to(x.dtype)
        channels = weight.shape[0]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                [1, 1],
                list(ctx.padding),
                [1, 1],
                False,
                [0, 0],
                channels,
                [True, False, False],
            )[0]
        if need_w:
            batch, _, height, width = x.shape
            pad_h, pad_w = ctx.padding
            # [1, B*C, H+2p, W+2q] (*) [B*C, 1, Ho, Wo] -> [1, B*C, kh, kw]
            padded = x.new_zeros(
                1, batch * channels, height + 2 * pad_h, width + 2 * pad_w
            )
            padded[0, :, pad_h : pad_h + height, pad_w : pad_w + width].copy_(
                x.reshape(batch * channels, height, width)
            )
            kernel = grad.reshape(batch * channels, 1, *grad.shape[2:])
            grad_w = F.conv2d(
                padded, kernel.contiguous(), groups=batch * channels
            )
            grad_w = grad_w.view(batch, channels, *weight.shape[2:]).sum(0)
            grad_w = grad_w.unsqueeze(1)
        if need_b and ctx.has_bias:
            grad_b = grad.sum((0, 2, 3))
        return (grad_x, *_param_grads(ctx, grad_w, grad_b), None)


def depthwise_conv2d(x, weight, bias, padding):
    """``F.conv2d(x, weight, bias, 1, padding, groups=C)`` for a
    ``[C, 1, kh, kw]`` ``weight`` and zero ``padding`` ``(ph, pw)``; the
    weight gradient by ``_DepthwiseConvFunction``."""
    return _DepthwiseConvFunction.apply(x, weight, bias, tuple(padding))


class _PointwiseConvFunction(torch.autograd.Function):
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight``, backward by
    ``_conv1x1_backward``."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        return _save_conv(ctx, x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = match_layout(grad.to(x.dtype), x)
        grad_x, grad_w, grad_b = _conv1x1_backward(
            grad, x, weight, ctx.has_bias, ctx.needs_input_grad
        )
        return (grad_x, *_param_grads(ctx, grad_w, grad_b))


def pointwise_conv2d(x, weight, bias):
    """``F.conv2d(x, weight, bias)`` for a ``[O, C, 1, 1]`` ``weight``
    (stride 1, no padding, one group); on a channels-last ``x`` the weight
    gradient is one GEMM (``_conv1x1_backward``)."""
    if _nhwc_rows(x) is not None:
        return _PointwiseConvFunction.apply(x, weight, bias)
    return F.conv2d(x, weight, bias)


# --- a 1x1 conv of an exact GELU, recomputed in backward ----------------


class _GeluPointwiseFunction(torch.autograd.Function):
    """``conv1x1(gelu(h), W, b)`` that saves ``h`` but not ``gelu(h)``.

    Autograd on the two modules keeps ``h`` (for GELU's backward) and
    ``gelu(h)`` (for the conv's weight gradient); here ``gelu(h)`` is
    recomputed in backward. The forward is the arithmetic of the modules,
    bit for bit.
    """

    @staticmethod
    def forward(ctx, h, weight, bias):
        out = F.conv2d(gelu(h), weight, bias)
        ctx.save_for_backward(h, weight)
        _record_params(ctx, weight, bias)
        ctx.conv_dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad
        dtype = ctx.conv_dtype
        grad_g, grad_w, grad_b = _conv1x1_backward(
            grad.to(dtype),
            gelu(h).to(dtype),
            weight.to(dtype),
            ctx.has_bias,
            (need_h, need_w, need_b),
        )
        grad_h = _gelu_backward(grad_g.to(h.dtype), h) if need_h else None
        return (grad_h, *_param_grads(ctx, grad_w, grad_b))


_HOOK_DICTS = (
    '_forward_hooks',
    '_forward_pre_hooks',
    '_backward_hooks',
    '_backward_pre_hooks',
)


def has_hooks(*modules):
    """Whether a hook could observe a call of one of ``modules`` (global
    module hooks count for every module).

    A layer that fuses two modules' calls into one function bypasses their
    hooks, so it must not fuse while any is registered. torch has no public
    query for registered hooks; the module hook dicts (per module and
    global) are read directly.
    """
    glob = nn.modules.module
    if (
        glob._global_forward_hooks
        or glob._global_forward_pre_hooks
        or glob._global_backward_hooks
        or glob._global_backward_pre_hooks
    ):
        return True
    return any(getattr(m, name) for m in modules for name in _HOOK_DICTS)


def gelu_pointwise(h, weight, bias):
    """``F.conv2d(gelu(h), weight, bias)`` for a 1x1 ``weight``, without
    keeping ``gelu(h)`` for backward."""
    return _GeluPointwiseFunction.apply(h, weight, bias)

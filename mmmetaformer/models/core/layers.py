"""Shared MetaFormer parts: activations, scales, norms and convs.

Plain PyTorch on NCHW tensors. Parameter names follow timm's
``timm.models.metaformer``, so timm state dicts load without renaming. The
few layers with a kernel measured faster on CPU call a function of
``cpu_kernels`` for CPU tensors (one line each); every other device runs
the op here.

No module writes into a tensor it was given or that another module
returned (forward hooks see final values); in-place arithmetic only runs
on a fresh intermediate of the module's own ``forward``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_kernels
from .capture import capturing_graph


def _compute_dtype(dtype):
    """fp16/bf16 -> fp32; fp32 and fp64 stay as they are."""
    return torch.promote_types(dtype, torch.float32)


class _StarReLUFunction(torch.autograd.Function):
    """``s * relu(x) ** 2 + b`` that saves only ``relu(x)`` for backward.

    ``relu(x) ** 2`` (needed for the gradient of ``s``) is recomputed in
    backward instead of kept. For fp32 inputs the forward is the reference
    expression, bit for bit.
    """

    @staticmethod
    def forward(ctx, x, scale, bias):
        relu = F.relu(x)
        ctx.save_for_backward(relu, scale)
        # in at least fp32; in place on the fresh square only
        wide = relu.to(_compute_dtype(x.dtype))
        return (wide * wide).mul_(scale).add_(bias).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        relu, scale = ctx.saved_tensors
        dtype = _compute_dtype(relu.dtype)
        relu, grad_out = relu.to(dtype), grad.to(dtype)
        grad_out = cpu_kernels.match_layout(grad_out, relu)
        need_x, need_scale, need_bias = ctx.needs_input_grad
        grad_x = grad_scale = grad_bias = None
        # g * relu(x) is shared: ds = sum(g * relu * relu) and, in place
        # on it afterwards, dx = 2 * s * g * relu (zero where x <= 0).
        grad_relu = grad_out * relu if need_x or need_scale else None
        if need_scale:
            grad_scale = cpu_kernels.sum_of_product(grad_relu, relu)
            grad_scale = grad_scale.view(1).to(scale.dtype)
        if need_bias:
            grad_bias = grad_out.sum().view(1).to(scale.dtype)
        if need_x:
            grad_x = grad_relu.mul_(2 * scale).to(grad.dtype)
        return grad_x, grad_scale, grad_bias


class StarReLU(nn.Module):
    """``s * relu(x) ** 2 + b`` with learnable scalars ``s`` and ``b``.

    From "MetaFormer Baselines for Vision"; ``s`` and ``b`` have shape
    ``[1]`` as in the published checkpoints. ``inplace`` is accepted for
    mmcv's ``ConvModule``; the input is never modified.

    AMP: fp16/bf16 inputs are squared in fp32 and returned in their dtype
    (in fp16 ``relu(x) ** 2`` alone overflows above 256); fp32 and fp64 are
    bit-identical to the reference expression. Training saves ``relu(x)``
    only (``_StarReLUFunction``); tracers and compilers (complexity
    counting, ONNX, ``torch.compile``) see the plain expression, with the
    same rounding.
    """

    def __init__(
        self,
        scale_value=1.0,
        bias_value=0.0,
        scale_learnable=True,
        bias_learnable=True,
        inplace=False,
    ):
        super().__init__()
        self.scale = nn.Parameter(
            torch.full((1,), float(scale_value)), requires_grad=scale_learnable
        )
        self.bias = nn.Parameter(
            torch.full((1,), float(bias_value)), requires_grad=bias_learnable
        )

    def forward(self, x):
        if capturing_graph():
            relu = F.relu(x).to(_compute_dtype(x.dtype))
            return (self.scale * relu**2 + self.bias).to(x.dtype)
        return _StarReLUFunction.apply(x, self.scale, self.bias)


class Scale(nn.Module):
    """Per-channel learnable scale ``[C]`` of an NCHW tensor (layer or
    residual scale)."""

    def __init__(self, dim, init_value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x):
        return x * self.scale.view(-1, 1, 1)


class GroupNorm1(nn.GroupNorm):
    """Normalise over (C, H, W) jointly, with a per-channel affine.

    ``GroupNorm`` with one group: the authors' ``LayerNormGeneral(
    normalized_dim=(1, 2, 3))``, the norm of PoolFormer, IdentityFormer and
    RandFormer. ``bias=False`` gives the baselines' weight-only variant.
    """

    def __init__(self, num_channels, eps=1e-5, bias=True):
        super().__init__(1, num_channels, eps=eps, affine=True)
        if not bias:
            self.bias = None

    def forward(self, x):
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each token of an NCHW tensor.

    The norm of ConvFormer and CAFormer, computed channels-last.
    ``bias=False`` gives the baselines' weight-only variant.
    """

    def __init__(self, num_channels, eps=1e-6, bias=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=True)
        if not bias:
            self.bias = None

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(
            x, self.normalized_shape, self.weight, self.bias, self.eps
        )
        return x.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1))
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob}'


class GELU(nn.GELU):
    """``nn.GELU`` (exact), the PoolFormer v1 MLP's activation.

    CPU tensors run ``cpu_kernels.gelu`` (the same values, on the dense
    view of channels-last maps).
    """

    def __init__(self, approximate='none', inplace=False):
        if approximate != 'none':
            raise ValueError(
                f'GELU here is the exact one (approximate='
                f"'none'), got approximate={approximate!r}"
            )
        super().__init__()

    def forward(self, x):
        if cpu_kernels.applies(x):
            return cpu_kernels.gelu(x)
        return F.gelu(x)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, groups=channels)``.

    CPU training of the stride-1, zero-padded, symmetric case runs
    ``cpu_kernels.depthwise_conv2d`` (the same forward, another weight
    gradient).
    """

    def __init__(self, channels, kernel_size, padding=0, bias=True, **kwargs):
        super().__init__(
            channels,
            channels,
            kernel_size,
            padding=padding,
            groups=channels,
            bias=bias,
            **kwargs,
        )

    def _symmetric_padding(self):
        """``(ph, pw)``, or ``None`` where it is not symmetric."""
        if self.padding != 'same':
            return tuple(self.padding)
        if all(k % 2 == 1 for k in self.kernel_size):
            return tuple(k // 2 for k in self.kernel_size)
        return None

    def forward(self, x):
        if (
            cpu_kernels.applies_to_training(x, self.weight, self.bias)
            and x.dim() == 4
            and self.padding_mode == 'zeros'
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
        ):
            padding = self._symmetric_padding()
            if padding is not None:
                return cpu_kernels.depthwise_conv2d(
                    x, self.weight, self.bias, padding
                )
        return super().forward(x)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)``.

    CPU training runs ``cpu_kernels.pointwise_conv2d`` (the same forward,
    the weight gradient as one GEMM on channels-last maps).
    """

    def __init__(self, in_channels, out_channels, bias=True, **kwargs):
        super().__init__(in_channels, out_channels, 1, bias=bias, **kwargs)

    def plain(self):
        """Stride 1, no padding, one group: a per-pixel matrix product."""
        return (
            self.stride == (1, 1)
            and self.padding == (0, 0)
            and self.groups == 1
            and self.padding_mode == 'zeros'
        )

    def forward(self, x):
        if (
            cpu_kernels.applies_to_training(x, self.weight, self.bias)
            and x.dim() == 4
            and self.plain()
        ):
            return cpu_kernels.pointwise_conv2d(x, self.weight, self.bias)
        return super().forward(x)

"""Shared MetaFormer parts: activations, scales, norms and convs.

Everything here is plain PyTorch and works on NCHW tensors, so the stages
hand necks exactly what they expect. The few layers with a kernel measured
faster on CPU hand CPU tensors to ``cpu_kernels`` (one line each); every
other device runs the PyTorch op written here. Parameter names follow timm's
``timm.models.metaformer`` so timm state dicts load without renaming.

No module here writes into a tensor it was given or that another module
returned (forward hooks see final values); in-place arithmetic only ever
runs on a fresh intermediate of the module's own ``forward``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_kernels


def _exporting():
    """True while ``torch.onnx.export`` traces: sizes are then tensors."""
    return torch.onnx.is_in_onnx_export()


def _enlarges(in_size, out_size):
    """Whether ``resample_to`` interpolates (every dim at least as fine).

    A Python bool for int sizes; a 0-dim bool tensor for traced ones.
    """
    return (out_size[0] >= in_size[0]) & (out_size[1] >= in_size[1])


def resample_weights(in_size, out_size, enlarge, dtype=torch.float32,
                     device=None):
    """``[out_size, in_size]`` matrix of ``resample_to`` along one axis.

    Both modes of ``resample_to`` are separable, so resampling ``[.., h, w]``
    to ``(H, W)`` is ``R_h @ x @ R_w.T`` with these matrices:

    * ``enlarge`` (bilinear, ``align_corners=False``, as ``F.interpolate``):
      output ``i`` reads source position ``s = (i + 0.5) * in / out - 0.5``
      (clamped at 0) with weights ``1 - frac(s)`` and ``frac(s)`` at
      ``floor(s)`` and ``min(floor(s) + 1, in - 1)``;
    * otherwise (area, as ``F.adaptive_avg_pool2d``): output ``i`` averages
      input positions ``floor(i * in / out) .. ceil((i + 1) * in / out) - 1``.

    Built from index arithmetic only, so it works with traced sizes (0-dim
    tensors during ONNX export) and then yields a graph valid for any input
    size; ``enlarge`` may then be a 0-dim bool tensor choosing in the graph.
    """
    # sizes as 0-dim tensors: traced ones stay in the graph, ints are
    # constants
    n_in, n_out = (size if torch.is_tensor(size) else torch.full(
        (), size, dtype=torch.long, device=device)
                   for size in (in_size, out_size))
    dst = torch.arange(out_size, device=device)
    src_pos = torch.arange(in_size, device=device)

    def bilinear():
        # float32 arithmetic, as ATen computes the source positions
        scale = n_in.float() / n_out.float()
        src = ((dst.float() + 0.5) * scale - 0.5).clamp(min=0)
        last = (n_in - 1).float()
        first = torch.minimum(src.floor(), last)
        frac = (src - first).clamp(0, 1)
        second = torch.minimum(first + 1, last)
        pos = src_pos.float()
        return ((pos == first[:, None]).float() * (1 - frac)[:, None] +
                (pos == second[:, None]).float() * frac[:, None])

    def area():
        start = torch.div(dst * n_in, n_out, rounding_mode='floor')
        end = torch.div((dst + 1) * n_in + n_out - 1, n_out,
                        rounding_mode='floor')
        inside = (src_pos >= start[:, None]) & (src_pos < end[:, None])
        return inside.float() / (end - start).float()[:, None]

    if isinstance(enlarge, bool):
        weights = bilinear() if enlarge else area()
    else:
        weights = torch.where(enlarge, bilinear(), area())
    return weights.to(dtype)


def resample_to(x, size):
    """Resize the last two dims of ``[B, C, h, w]`` to ``size``.

    Bilinear when ``size`` is at least as fine as ``x`` in both dims, area
    averaging otherwise. Neither creates values outside the input's range,
    so non-negative inputs stay non-negative.

    Eager and compiled code call ``F.interpolate`` / ``F.adaptive_avg_pool2d``
    (fast, and counted by the complexity tools). ONNX cannot export an
    adaptive pool whose output size depends on the input, nor a choice of
    mode made in Python, so under ``torch.onnx.export`` the same resampling
    is written as two matrix products with ``resample_weights`` (mode chosen
    in the graph): the exported model is right for every input size, and
    equals these ops up to float rounding.
    """
    in_size = x.shape[-2:]
    if _exporting():
        enlarge = _enlarges(in_size, size)
        rows = resample_weights(in_size[0], size[0], enlarge, x.dtype,
                                x.device)
        cols = resample_weights(in_size[1], size[1], enlarge, x.dtype,
                                x.device)
        return torch.matmul(rows, torch.matmul(x, cols.t()))
    if tuple(in_size) == tuple(size):
        return x
    if _enlarges(in_size, size):
        return F.interpolate(x, size=size, mode='bilinear',
                             align_corners=False)
    return F.adaptive_avg_pool2d(x, size)


def _compute_dtype(dtype):
    """fp16/bf16 -> fp32; fp32 and fp64 stay as they are."""
    return torch.promote_types(dtype, torch.float32)


def _star(relu, scale, bias):
    """``scale * relu ** 2 + bias`` in at least fp32, in ``relu``'s dtype.

    In place on the fresh square only (``relu`` is saved for backward).
    """
    dtype = relu.dtype
    wide = relu.to(_compute_dtype(dtype))
    return (wide * wide).mul_(scale).add_(bias).to(dtype)


class _StarReLUFunction(torch.autograd.Function):
    """``s * relu(x) ** 2 + b`` that saves only ``relu(x)`` for backward.

    Autograd on the plain expression keeps both ``relu(x)`` and
    ``relu(x) ** 2`` alive until backward (the second for the gradient of
    ``s``); here ``relu(x) ** 2`` is recomputed in backward instead, which
    saves one activation-sized tensor per StarReLU and some time. Forward
    and backward compute in at least fp32 (see ``StarReLU``); for fp32
    inputs the forward is the reference expression, bit for bit.
    """

    @staticmethod
    def forward(ctx, x, scale, bias):
        relu = F.relu(x)
        ctx.save_for_backward(relu, scale)
        return _star(relu, scale, bias)

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
            grad_scale = cpu_kernels.sum_of_product(grad_relu, relu).view(1).to(
                scale.dtype)
        if need_bias:
            grad_bias = grad_out.sum().view(1).to(scale.dtype)
        if need_x:
            grad_x = grad_relu.mul_(2 * scale).to(grad.dtype)
        return grad_x, grad_scale, grad_bias


class StarReLU(nn.Module):
    """``s * relu(x) ** 2 + b`` with learnable scalars ``s`` and ``b``.

    From "MetaFormer Baselines for Vision". ``s`` and ``b`` have shape ``[1]``
    (as in the authors' and timm's checkpoints). ``inplace`` is accepted so
    mmcv's ``ConvModule`` (which passes it to most activations) can build it;
    the input is never modified.

    AMP: the square is computed in fp32 for fp16/bf16 inputs and the result
    is returned in the input's dtype, like any activation. In fp16,
    ``relu(x) ** 2`` alone overflows above 256, so the reference expression
    gives ``inf`` for results that fp16 holds (up to 65504); here only
    results that fp16 cannot hold are ``inf``. fp32 and fp64 inputs are
    computed in their own dtype: bit-identical to the reference expression.

    Memory: a custom autograd function saves ``relu(x)`` alone, where
    autograd on the expression would also keep ``relu(x) ** 2`` (one
    activation-sized tensor less per StarReLU, on every device). Under
    ``torch.jit`` tracing (complexity counting, ONNX export) the plain
    expression runs, so tracers see standard ops; the rounding is the same.
    """

    def __init__(self, scale_value=1.0, bias_value=0.0, scale_learnable=True,
                 bias_learnable=True, inplace=False):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, ), float(scale_value)),
                                  requires_grad=scale_learnable)
        self.bias = nn.Parameter(torch.full((1, ), float(bias_value)),
                                 requires_grad=bias_learnable)

    def forward(self, x):
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            relu = F.relu(x).to(_compute_dtype(x.dtype))
            return (self.scale * relu**2 + self.bias).to(x.dtype)
        return _StarReLUFunction.apply(x, self.scale, self.bias)


class Scale(nn.Module):
    """Per-channel learnable scale of an NCHW tensor (layer or residual scale).

    ``scale`` has shape ``[C]``, the layout of timm and the authors' weights.
    """

    def __init__(self, dim, init_value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim, ), float(init_value)))

    def forward(self, x):
        return x * self.scale.view(-1, 1, 1)


class GroupNorm1(nn.GroupNorm):
    """Normalise over (C, H, W) jointly, with a per-channel affine.

    This is ``GroupNorm`` with one group. It equals the authors'
    ``LayerNormGeneral(normalized_dim=(1, 2, 3))`` on channels-last tensors,
    the norm of PoolFormer, IdentityFormer and RandFormer. ``bias=False``
    gives the baselines' bias-free variant (weight only).
    """

    def __init__(self, num_channels, eps=1e-5, bias=True):
        super().__init__(1, num_channels, eps=eps, affine=True)
        if not bias:
            self.bias = None

    def forward(self, x):
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor.

    ConvFormer and CAFormer normalise each token over its C channels. The
    tensor is permuted to channels-last for ``F.layer_norm`` and back.
    ``bias=False`` gives the baselines' weight-only norm.
    """

    def __init__(self, num_channels, eps=1e-6, bias=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=True)
        if not bias:
            self.bias = None

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                         self.eps)
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
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1))
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob}'




class GELU(nn.GELU):
    """``nn.GELU`` (exact), the PoolFormer v1 MLP's activation.

    Same module name and parameters (none) as ``nn.GELU``; CPU tensors run
    ``cpu_kernels.gelu`` (the same values, on the dense view of
    channels-last maps).
    """

    def __init__(self, approximate='none', inplace=False):
        if approximate != 'none':
            raise ValueError(f"GELU here is the exact one (approximate="
                             f"'none'), got approximate={approximate!r}")
        super().__init__()

    def forward(self, x):
        if cpu_kernels.applies(x):
            return cpu_kernels.gelu(x)
        return F.gelu(x)


def is_exact_gelu(module):
    """Whether ``module`` is an exact GELU (ours or ``nn.GELU``, not a
    subclass that may compute something else)."""
    return type(module) in (GELU, nn.GELU) and module.approximate == 'none'


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, groups=channels)``.

    The same module (parameters, keys, ``isinstance``); CPU training runs
    ``cpu_kernels.depthwise_conv2d`` (the same forward, another weight
    gradient).
    """

    def __init__(self, channels, kernel_size, padding=0, bias=True, **kwargs):
        super().__init__(channels, channels, kernel_size, padding=padding,
                         groups=channels, bias=bias, **kwargs)

    def forward(self, x):
        if cpu_kernels.applies_to_training(x, self):
            return cpu_kernels.depthwise_conv2d(self, x)
        return super().forward(x)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)``: a 1x1 conv.

    The same module (parameters, keys, ``isinstance``); CPU training runs
    ``cpu_kernels.pointwise_conv2d`` (the same forward, the weight gradient
    as one GEMM on channels-last maps).
    """

    def __init__(self, in_channels, out_channels, bias=True, **kwargs):
        super().__init__(in_channels, out_channels, 1, bias=bias, **kwargs)

    def forward(self, x):
        if cpu_kernels.applies_to_training(x, self):
            return cpu_kernels.pointwise_conv2d(self, x)
        return super().forward(x)

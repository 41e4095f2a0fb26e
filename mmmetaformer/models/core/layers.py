"""Building blocks shared by every MetaFormer: activation, scales, norms, MLP.

Everything here is plain PyTorch and works on NCHW tensors, so the stages
hand necks exactly what they expect. Parameter names follow timm's
``timm.models.metaformer`` so timm state dicts load without renaming.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def resample_to(x, size):
    """Resize the last two dims of ``[B, C, h, w]`` to ``size``.

    Bilinear when ``size`` is at least as fine as ``x`` in both dims, area
    averaging otherwise. Neither creates values outside the input's range,
    so non-negative inputs stay non-negative.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] >= x.shape[-2] and size[1] >= x.shape[-1]:
        return F.interpolate(x, size=size, mode='bilinear',
                             align_corners=False)
    return F.adaptive_avg_pool2d(x, size)


class _StarReLUFunction(torch.autograd.Function):
    """``s * relu(x) ** 2 + b`` that saves only ``relu(x)`` for backward.

    Autograd on the plain expression keeps both ``relu(x)`` and
    ``relu(x) ** 2`` alive until backward (the second for the gradient of
    ``s``); here ``relu(x) ** 2`` is recomputed in backward instead, which
    saves one activation-sized tensor per StarReLU and some time. The
    forward is the same expression, so the outputs are bit-identical.
    """

    @staticmethod
    def forward(ctx, x, scale, bias):
        relu = F.relu(x)
        ctx.save_for_backward(relu, scale)
        return scale * relu**2 + bias

    @staticmethod
    def backward(ctx, grad):
        relu, scale = ctx.saved_tensors
        grad_x = grad_scale = grad_bias = None
        if ctx.needs_input_grad[0]:
            # d/dx s*relu(x)^2 = 2*s*relu(x) (zero where x <= 0)
            grad_x = grad * relu * (2 * scale)
        if ctx.needs_input_grad[1]:
            grad_scale = (grad * relu * relu).sum().view(1)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum().view(1)
        return grad_x, grad_scale, grad_bias


class StarReLU(nn.Module):
    """``s * relu(x) ** 2 + b`` with learnable scalars ``s`` and ``b``.

    From "MetaFormer Baselines for Vision". ``s`` and ``b`` have shape ``[1]``
    (as in the authors' and timm's checkpoints). ``inplace`` is accepted so
    mmcv's ``ConvModule`` (which passes it to most activations) can build it;
    the input is never modified.

    Three code paths, all computing the reference expression with the same
    rounding: with autograd, a custom function that saves one tensor instead
    of two (less memory, faster backward); without autograd (inference), the
    square, scale and shift run in place on the fresh ``relu(x)`` (no
    temporaries); under ``torch.jit`` tracing (complexity counting, export),
    the plain expression, so tracers see standard ops.

    Note: under fp16 autocast ``relu(x) ** 2`` overflows above ~256; the
    models keep it in the input dtype like the reference implementations.
    """

    def __init__(self, scale_value=1.0, bias_value=0.0, scale_learnable=True,
                 bias_learnable=True, inplace=False):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, ), float(scale_value)),
                                  requires_grad=scale_learnable)
        self.bias = nn.Parameter(torch.full((1, ), float(bias_value)),
                                 requires_grad=bias_learnable)

    def forward(self, x):
        traced = torch.jit.is_tracing() or torch.jit.is_scripting()
        if not traced and torch.is_grad_enabled() and (
                x.requires_grad or self.scale.requires_grad
                or self.bias.requires_grad):
            return _StarReLUFunction.apply(x, self.scale, self.bias)
        # in place only where it cannot change the expression's type
        # promotion (mixed dtypes) or what a tracer records
        if traced or x.dtype != self.scale.dtype:
            return self.scale * F.relu(x)**2 + self.bias
        out = F.relu(x)
        return out.mul_(out).mul_(self.scale).add_(self.bias)


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


class Mlp(nn.Module):
    """Channel MLP as two 1x1 convs: ``fc2(act(fc1(x)))``, NCHW in and out.

    The authors' channels-last ``nn.Linear`` weights ``[out, in]`` map onto
    these ``[out, in, 1, 1]`` convs by a reshape (see ``checkpoint``).
    """

    def __init__(self, dim, hidden_dim, act_layer=nn.GELU, bias=True):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ChannelsLastMlp(Mlp):
    """``Mlp`` computed as ``nn.Linear`` over channels-last tokens.

    Same weights (``[out, in, 1, 1]``) and same result up to rounding; this
    is the arithmetic the reference implementations use in attention
    stages, where tokens are channels-last anyway, so features there match
    timm bit for bit instead of to ~1 ulp.
    """

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.linear(x, self.fc1.weight.flatten(1), self.fc1.bias)
        x = F.linear(self.act(x), self.fc2.weight.flatten(1), self.fc2.bias)
        return x.permute(0, 3, 1, 2)

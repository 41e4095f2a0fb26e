"""Building blocks shared by every MetaFormer: activation, scales, norms, MLP.

Everything here is plain PyTorch and works on NCHW tensors, so the stages
hand necks exactly what they expect. Parameter names follow timm's
``timm.models.metaformer`` so timm state dicts load without renaming.

No module here writes into a tensor it was given or that another module
returned (forward hooks see final values); in-place arithmetic only ever
runs on a fresh intermediate of the module's own ``forward``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _exporting():
    """True while ``torch.onnx.export`` traces: sizes are then tensors."""
    return torch.onnx.is_in_onnx_export()


def _jit_capture():
    """True under ``torch.jit`` tracing or scripting (ONNX export, counters).
    """
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def _graph_capture():
    """True under ``torch.jit`` tracing/scripting or ``torch.compile``.

    Custom autograd functions here are eager memory savers; graph capture
    gets the plain ops (standard ops for exporters and counters, and
    AOTAutograd chooses what to save or recompute itself).
    """
    return _jit_capture() or torch.compiler.is_compiling()


_HOOK_DICTS = ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks',
               '_backward_pre_hooks')


def has_hooks(*modules):
    """Whether a hook could observe a call of one of ``modules``.

    Global module hooks count for every module. A layer that would bypass
    a submodule's ``__call__`` for speed checks this first and calls the
    submodule normally when it is observed, so hooks always fire.
    """
    glob = nn.modules.module
    if (glob._global_forward_hooks or glob._global_forward_pre_hooks
            or glob._global_backward_hooks
            or glob._global_backward_pre_hooks):
        return True
    return any(getattr(m, name) for m in modules for name in _HOOK_DICTS)


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


def _star(relu, scale, bias, owned):
    """``scale * relu ** 2 + bias`` in at least fp32, in ``relu``'s dtype.

    The arithmetic is in place on fresh tensors only: on ``relu`` itself
    when ``owned`` (a temporary of the caller's own), else on a new square.
    fp16/bf16 are widened to fp32 first, which is a fresh copy either way.
    """
    dtype = relu.dtype
    wide = _compute_dtype(dtype)
    if wide != dtype:
        relu, owned = relu.to(wide), True
    out = relu.mul_(relu) if owned else relu * relu
    return out.mul_(scale).add_(bias).to(dtype)


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
        return _star(relu, scale, bias, owned=False)  # relu is saved

    @staticmethod
    def backward(ctx, grad):
        relu, scale = ctx.saved_tensors
        dtype = _compute_dtype(relu.dtype)
        relu, grad_out = relu.to(dtype), grad.to(dtype)
        grad_x = grad_scale = grad_bias = None
        if ctx.needs_input_grad[0]:
            # d/dx s*relu(x)^2 = 2*s*relu(x) (zero where x <= 0)
            grad_x = (grad_out * relu * (2 * scale)).to(grad.dtype)
        if ctx.needs_input_grad[1]:
            grad_scale = (grad_out * relu * relu).sum().view(1).to(
                scale.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum().view(1).to(scale.dtype)
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

    Three code paths, all computing the same expression with the same
    rounding: with autograd, a custom function that saves one tensor instead
    of two (less memory, faster backward); without autograd (inference), the
    square, scale and shift run in place on the fresh ``relu(x)``; under
    ``torch.jit`` tracing (complexity counting, ONNX export), the plain
    expression, so tracers see standard ops.
    """

    def __init__(self, scale_value=1.0, bias_value=0.0, scale_learnable=True,
                 bias_learnable=True, inplace=False):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, ), float(scale_value)),
                                  requires_grad=scale_learnable)
        self.bias = nn.Parameter(torch.full((1, ), float(bias_value)),
                                 requires_grad=bias_learnable)

    def forward(self, x):
        if _jit_capture():
            relu = F.relu(x)
            dtype = _compute_dtype(x.dtype)
            if dtype != x.dtype:
                relu = relu.to(dtype)
            out = self.scale * relu**2 + self.bias
            return out if out.dtype == x.dtype else out.to(x.dtype)
        if torch.is_grad_enabled() and (x.requires_grad
                                        or self.scale.requires_grad
                                        or self.bias.requires_grad):
            return _StarReLUFunction.apply(x, self.scale, self.bias)
        return _star(F.relu(x), self.scale, self.bias, owned=True)


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


def _flat_layout(x):
    """``(view, undo)``: a dense view of ``x`` for elementwise kernels.

    Some CPU elementwise kernels (GELU and its backward in torch 2.5) run
    several times slower on channels-last maps than on contiguous memory
    (measured 1.4x forward and backward on a ``[1, 256, 128, 128]`` map,
    2 threads); channels-last memory *is* contiguous NHWC, so they get
    that permuted view instead. ``undo`` permutes a result back. Graph
    capture sees ``x`` as it is (compilers choose their own loops).
    """
    if (not _graph_capture() and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return x.permute(0, 2, 3, 1), (lambda y: y.permute(0, 3, 1, 2))
    return x, (lambda y: y)


def gelu(x):
    """Exact GELU, in the layout its CPU kernel is fastest on."""
    flat, undo = _flat_layout(x)
    return undo(F.gelu(flat))


def _gelu_backward(grad, x):
    flat, undo = _flat_layout(x)
    if flat is not x:
        grad = grad.contiguous(memory_format=torch.channels_last).permute(
            0, 2, 3, 1)
    return undo(torch.ops.aten.gelu_backward(grad, flat))


class GELU(nn.GELU):
    """``nn.GELU`` (exact) computed in the fastest layout (``gelu``).

    Same module name and parameters (none) as ``nn.GELU``, and the same
    values up to the last bit (on channels-last maps torch's vectorised
    kernel replaces its strided one). PoolFormer v1's MLP uses it.
    """

    def __init__(self, approximate='none', inplace=False):
        if approximate != 'none':
            raise ValueError(f"GELU here is the exact one (approximate="
                             f"'none'), got approximate={approximate!r}")
        super().__init__()

    def forward(self, x):
        return gelu(x)


def is_exact_gelu(module):
    """Whether ``module`` is an exact GELU (ours or ``nn.GELU``, not a
    subclass that may compute something else)."""
    return type(module) in (GELU, nn.GELU) and module.approximate == 'none'


class _GeluPointwiseFunction(torch.autograd.Function):
    """``conv1x1(gelu(h), W, b)`` that saves ``h`` but not ``gelu(h)``.

    Autograd on the two modules keeps ``h`` (for GELU's backward) *and*
    ``gelu(h)`` (for the conv's weight gradient), two hidden-sized tensors
    per block; here ``gelu(h)`` is recomputed in backward from ``h``: one
    elementwise pass buys a quarter of the activation memory of a
    PoolFormer v1 block. The forward is the arithmetic of our ``GELU``
    module and the conv, bit for bit (``nn.GELU``: to the last bit).
    Under autocast the conv ran in the output's dtype, and so does its
    gradient.
    """

    @staticmethod
    def forward(ctx, h, weight, bias):
        out = F.conv2d(gelu(h), weight, bias)
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        ctx.conv_dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad
        dtype = ctx.conv_dtype
        grad_g, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad.to(dtype), gelu(h).to(dtype), weight.to(dtype),
            [weight.shape[0]] if ctx.has_bias else None, [1, 1], [0, 0],
            [1, 1], False, [0, 0], 1, [need_h, need_w, need_b and
                                       ctx.has_bias])
        grad_h = (_gelu_backward(grad_g.to(h.dtype), h) if need_h else None)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(weight.dtype)
        return grad_h, grad_w, grad_b


class Mlp(nn.Module):
    """Channel MLP as two 1x1 convs: ``fc2(act(fc1(x)))``, NCHW in and out.

    The authors' channels-last ``nn.Linear`` weights ``[out, in]`` map onto
    these ``[out, in, 1, 1]`` convs by a reshape (see ``checkpoint``).

    Training with an exact GELU (PoolFormer v1) runs ``fc2(act(.))`` as
    one autograd function that recomputes the GELU in backward instead of
    saving its output (``_GeluPointwiseFunction``), unless a hook watches
    ``act`` or ``fc2`` (they are then called as modules) or a graph is
    being captured. StarReLU saves less by itself (see ``StarReLU``).
    """

    def __init__(self, dim, hidden_dim, act_layer=nn.GELU, bias=True):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, bias=bias)

    def forward(self, x):
        h = self.fc1(x)
        if self._recompute_gelu(h):
            return _GeluPointwiseFunction.apply(h, self.fc2.weight,
                                                self.fc2.bias)
        return self.fc2(self.act(h))

    def _recompute_gelu(self, h):
        if not torch.is_grad_enabled() or _graph_capture():
            return False
        if not is_exact_gelu(self.act):
            return False
        if type(self.fc2) is not nn.Conv2d:
            return False
        return (h.requires_grad or self.fc2.weight.requires_grad) and (
            not has_hooks(self.act, self.fc2))


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

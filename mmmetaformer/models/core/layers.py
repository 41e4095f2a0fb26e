"""Shared MetaFormer parts: activations, scales, norms, convs and the MLP.

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


def _memory_format(x):
    """``torch.channels_last`` for a channels-last 4-D map, else contiguous."""
    if (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def _match_layout(t, ref):
    """``t`` in ``ref``'s memory format where their strides differ.

    A gradient can arrive in another layout than the activation it meets;
    elementwise kernels and the row views below want them alike. Graph
    capture sees ``t`` as it is.
    """
    if _graph_capture() or t.stride() == ref.stride():
        return t
    return t.contiguous(memory_format=_memory_format(ref))


def _sum_of_product(a, b):
    """``(a * b).sum()`` without the product tensor, for equal layouts.

    On two dense tensors laid out alike it is one ``torch.dot`` over their
    memory order. Measured with 2 threads on a channels-last
    ``[1, 256, 128, 128]`` map, StarReLU's whole backward took 3.7 ms this
    way against 34 ms for the autograd-style products and full sums
    (torch 2.5's reductions of broadcast products over channels-last maps
    are slow). Anything else (other layouts, graph capture) takes the
    plain expression.
    """
    if not _graph_capture() and a.stride() == b.stride():
        flat_a, flat_b = _flat_layout(a)[0], _flat_layout(b)[0]
        if flat_a.is_contiguous() and flat_b.is_contiguous():
            return torch.dot(flat_a.reshape(-1), flat_b.reshape(-1))
    return (a * b).sum()


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
        grad_out = _match_layout(grad_out, relu)
        need_x, need_scale, need_bias = ctx.needs_input_grad
        grad_x = grad_scale = grad_bias = None
        # g * relu(x) is shared: ds = sum(g * relu * relu) and, in place
        # on it afterwards, dx = 2 * s * g * relu (zero where x <= 0).
        grad_relu = grad_out * relu if need_x or need_scale else None
        if need_scale:
            grad_scale = _sum_of_product(grad_relu, relu).view(1).to(
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
    if not _graph_capture() and _memory_format(x) is torch.channels_last:
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


def _nhwc_rows(x):
    """``[B*H*W, C]`` view of a dense channels-last map, else ``None``."""
    if (x.dim() == 4 and not _graph_capture()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return None


def _conv1x1_backward(grad, x, weight, has_bias, needs):
    """Gradients ``(x, weight, bias)`` of ``F.conv2d(x, weight, bias)``.

    ``weight`` is ``[O, C, 1, 1]``; ``needs`` three bools. The input
    gradient is oneDNN's. The weight gradient ``g^T x`` over the pixels is
    one GEMM on the channels-last rows of both maps: 1.2-1.8x faster than
    oneDNN's 1x1 backward-weights with 2 threads (e.g. 7.1 against 12.8 ms
    for 64 -> 256 channels at 128x128). Other layouts use oneDNN for all.
    """
    need_x, need_w, need_b = needs
    need_b = need_b and has_bias
    grad_rows, x_rows = _nhwc_rows(grad), _nhwc_rows(x)
    if grad_rows is None or x_rows is None:
        return torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if has_bias else None,
            [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [need_x, need_w, need_b])
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [True, False, False])[0]
    if need_w:
        grad_w = torch.mm(grad_rows.t(), x_rows).view(weight.shape)
    if need_b:
        grad_b = grad_rows.sum(0)
    return grad_x, grad_w, grad_b


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
        _record_params(ctx, weight, bias)
        ctx.conv_dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad
        dtype = ctx.conv_dtype
        grad_g, grad_w, grad_b = _conv1x1_backward(
            grad.to(dtype), gelu(h).to(dtype), weight.to(dtype),
            ctx.has_bias, (need_h, need_w, need_b))
        grad_h = (_gelu_backward(grad_g.to(h.dtype), h) if need_h else None)
        return (grad_h, *_param_grads(ctx, grad_w, grad_b))


def _save_conv(ctx, x, weight, bias, padding=0, groups=1):
    """``F.conv2d`` (stride 1) for a custom conv function's ``forward``.

    Saves ``x`` and ``weight`` in the dtype the conv ran in (autocast may
    have lowered it; the gradients run in it too) and what ``_param_grads``
    needs to hand gradients back in the parameters' own dtypes.
    """
    out = F.conv2d(x, weight, bias, 1, padding, 1, groups)
    ctx.save_for_backward(x.to(out.dtype), weight.to(out.dtype))
    _record_params(ctx, weight, bias)
    return out


def _record_params(ctx, weight, bias):
    """What ``_param_grads`` needs: whether there is a bias, and the
    parameters' dtypes."""
    ctx.has_bias = bias is not None
    ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype)


def _needs_grad(x, conv):
    """Whether autograd records a call of ``conv`` on ``x``."""
    return torch.is_grad_enabled() and (
        x.requires_grad or conv.weight.requires_grad or
        (conv.bias is not None and conv.bias.requires_grad))


def _param_grads(ctx, grad_w, grad_b):
    """The weight and bias gradients in the parameters' dtypes."""
    return (None if grad_w is None else grad_w.to(ctx.param_dtypes[0]),
            None if grad_b is None else grad_b.to(ctx.param_dtypes[1]))


class _DepthwiseConvFunction(torch.autograd.Function):
    """A stride-1 depthwise conv whose weight gradient is itself a conv.

    ``dL/dW[c, i, j] = sum_{b,y,x} g[b, c, y, x] * xpad[b, c, y + i, x + j]``
    is the depthwise correlation of the padded input with the output
    gradient as the kernel. Run as a forward ``F.conv2d`` on NCHW memory it
    measured 2-3x faster than oneDNN's depthwise weight gradient, which on
    CPU takes ~10x the forward's time (2 threads, 7x7 kernel,
    channels-last ``[1, 128, 128, 128]``: 16 ms against 47 ms; it is most
    of ConvFormer's backward). The forward is ``F.conv2d`` as in
    ``nn.Conv2d``, and the input gradient is oneDNN's.
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
                grad, x, weight, None, [1, 1], list(ctx.padding), [1, 1],
                False, [0, 0], channels, [True, False, False])[0]
        if need_w:
            batch, _, height, width = x.shape
            pad_h, pad_w = ctx.padding
            # batch folded into channels: [1, B*C, H+2p, W+2q] (*) [B*C, 1,
            # Ho, Wo] -> [1, B*C, kh, kw], summed over the batch
            padded = x.new_zeros(1, batch * channels, height + 2 * pad_h,
                                 width + 2 * pad_w)
            padded[0, :, pad_h:pad_h + height, pad_w:pad_w + width].copy_(
                x.reshape(batch * channels, height, width))
            kernel = grad.reshape(batch * channels, 1, *grad.shape[2:])
            grad_w = F.conv2d(padded, kernel.contiguous(),
                              groups=batch * channels)
            grad_w = grad_w.view(batch, channels, *weight.shape[2:]).sum(0)
            grad_w = grad_w.unsqueeze(1)
        if need_b and ctx.has_bias:
            grad_b = grad.sum((0, 2, 3))
        return (grad_x, *_param_grads(ctx, grad_w, grad_b), None)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, groups=channels)``.

    The same module (parameters, state-dict keys, ``isinstance`` and the
    forward's arithmetic); training in eager mode runs the weight gradient
    through ``_DepthwiseConvFunction``, 2-3x faster on CPU. Other strides,
    dilations, padding modes, and graph capture (compile, ONNX, tracing)
    run ``nn.Conv2d.forward`` itself.
    """

    def __init__(self, channels, kernel_size, padding=0, bias=True, **kwargs):
        super().__init__(channels, channels, kernel_size, padding=padding,
                         groups=channels, bias=bias, **kwargs)

    def _symmetric_padding(self):
        """``(ph, pw)``, or ``None`` where ``padding`` is not symmetric."""
        if self.padding != 'same':
            return tuple(self.padding)
        if all(k % 2 == 1 for k in self.kernel_size):
            return tuple(k // 2 for k in self.kernel_size)
        return None  # 'same' with an even kernel pads one side more

    def forward(self, x):
        padding = self._symmetric_padding()
        if (_needs_grad(x, self) and not _graph_capture()
                and padding is not None and x.dim() == 4
                and self.padding_mode == 'zeros' and self.stride == (1, 1)
                and self.dilation == (1, 1)):
            return _DepthwiseConvFunction.apply(x, self.weight, self.bias,
                                                padding)
        return super().forward(x)


class _PointwiseConvFunction(torch.autograd.Function):
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight``, with the
    backward of ``_conv1x1_backward``. Under autocast the conv runs in the
    output's dtype, and so do its gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        return _save_conv(ctx, x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = _match_layout(grad.to(x.dtype), x)
        grad_x, grad_w, grad_b = _conv1x1_backward(grad, x, weight,
                                                   ctx.has_bias,
                                                   ctx.needs_input_grad)
        return (grad_x, *_param_grads(ctx, grad_w, grad_b))


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)``: a 1x1 conv.

    The same module (parameters, state-dict keys, ``isinstance`` and the
    forward's arithmetic); training in eager mode on channels-last maps
    computes the weight gradient as one GEMM (``_conv1x1_backward``).
    Graph capture and other layouts run ``nn.Conv2d.forward`` itself.
    """

    def __init__(self, in_channels, out_channels, bias=True, **kwargs):
        super().__init__(in_channels, out_channels, 1, bias=bias, **kwargs)

    def forward(self, x):
        if (_needs_grad(x, self) and self.stride == (1, 1)
                and self.padding == (0, 0) and self.groups == 1
                and _nhwc_rows(x) is not None):
            return _PointwiseConvFunction.apply(x, self.weight, self.bias)
        return super().forward(x)


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
        self.fc1 = PointwiseConv2d(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.fc2 = PointwiseConv2d(hidden_dim, dim, bias=bias)

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
        if type(self.fc2) not in (nn.Conv2d, PointwiseConv2d):
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

"""Token mixers: the one part of a MetaFormer block that differs per model.

Every mixer takes ``dim`` as its first argument and maps an NCHW tensor
``[B, C, H, W]`` to one of the same shape. Anything with that contract can
be a token mixer (register it in ``mmmetaformer.registry.MODELS`` to use it
from a config).

``switch_to_deploy(norm, layer_scale)`` folds what is exact of the block
branch ``layer_scale(mixer(norm(x)))`` into the mixer and returns the
``(norm, layer_scale)`` the block keeps (see ``fuse.py``). A mixer without
it runs unfused in a deployed model.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fuse
from .layers import (DepthwiseConv2d, PointwiseConv2d, Scale, StarReLU,
                     _enlarges, _exporting, resample_weights)


class IdentityMixer(nn.Module):
    """IdentityFormer's mixer: no token mixing at all."""

    def __init__(self, dim):
        super().__init__()

    def forward(self, x):
        return x

    @torch.no_grad()
    def switch_to_deploy(self, norm, layer_scale):
        """``ls * (g n + b)``: the layer scale goes into the norm's affine."""
        affine = fuse.norm_affine(norm)
        scale = fuse.scale_vector(layer_scale)
        if affine is None or scale is None or isinstance(norm, nn.Identity):
            return norm, layer_scale
        weight, bias = affine
        if weight is None:
            norm.weight = nn.Parameter(scale.clone())
        else:
            weight.mul_(scale)
        if bias is not None:
            bias.mul_(scale)
        return norm, nn.Identity()


def _pool_minus_input(x, pool_size):
    pooled = F.avg_pool2d(x, pool_size, 1, pool_size // 2,
                          count_include_pad=False)
    return pooled.sub_(x)


class _PoolMinusInputFunction(torch.autograd.Function):
    """``avg_pool(x) - x`` that saves nothing for backward.

    Autograd on ``F.avg_pool2d`` saves its input, but the pool's gradient
    only needs the input's *shape*, which a stride-1, same-padding pool
    shares with its output: backward passes the incoming gradient as the
    shape donor. That is one activation-sized tensor less per PoolFormer
    block.
    """

    @staticmethod
    def forward(ctx, x, pool_size):
        ctx.pool_size = pool_size
        return _pool_minus_input(x, pool_size)

    @staticmethod
    def backward(ctx, grad):
        k = ctx.pool_size
        grad_x = torch.ops.aten.avg_pool2d_backward(
            grad, grad, [k, k], [1, 1], [k // 2, k // 2], False, False,
            None)
        return grad_x.sub_(grad), None


class Pooling(nn.Module):
    """PoolFormer's mixer: ``avg_pool(x) - x``.

    The pool uses stride 1, ``pool_size // 2`` padding and
    ``count_include_pad=False``; ``x`` is subtracted because the block adds
    the residual back. The subtraction runs in place on the fresh pooled
    tensor, in every mode: no module has returned it yet, and the pool's
    backward does not need its output. With autograd (outside graph
    capture) it runs as ``_PoolMinusInputFunction``, which keeps no tensor
    for backward, on every device.
    """

    def __init__(self, dim, pool_size=3):
        super().__init__()
        if pool_size % 2 != 1:
            raise ValueError(f'Pooling pool_size must be odd (a centred '
                             f'window keeps the size), got {pool_size}')
        self.pool_size = pool_size

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad and not (
                torch.jit.is_tracing() or torch.compiler.is_compiling()):
            return _PoolMinusInputFunction.apply(x, self.pool_size)
        return _pool_minus_input(x, self.pool_size)

    @torch.no_grad()
    def switch_to_deploy(self, norm, layer_scale):
        """``ls * (pool(g n + b) - (g n + b)) = (ls g) (pool(n) - n)``."""
        affine = fuse.norm_affine(norm)
        if affine is None or (affine[0] is None and affine[1] is None):
            return norm, layer_scale
        weight = affine[0]
        scale = fuse.scale_vector(layer_scale)
        if weight is not None:
            scale = weight.detach() if scale is None else scale * weight
        fuse.strip_affine(norm)
        if scale is None:
            return norm, nn.Identity()
        folded = Scale(scale.numel()).to(scale)
        folded.scale.copy_(scale)
        return norm, folded


class SepConv(nn.Module):
    """ConvFormer's mixer, the inverted separable conv of MobileNetV2.

    ``pwconv1`` (1x1, ``dim -> expansion_ratio * dim``), StarReLU, a
    depthwise ``kernel_size`` conv, and ``pwconv2`` (1x1 back to ``dim``);
    no biases.
    """

    def __init__(self, dim, expansion_ratio=2, kernel_size=7, bias=False,
                 act_layer=StarReLU):
        super().__init__()
        mid = int(expansion_ratio * dim)
        self.pwconv1 = PointwiseConv2d(dim, mid, bias=bias)
        self.act1 = act_layer()
        self.dwconv = DepthwiseConv2d(mid, kernel_size,
                                      padding=kernel_size // 2, bias=bias)
        self.pwconv2 = PointwiseConv2d(mid, dim, bias=bias)

    def forward(self, x):
        return self.pwconv2(self.dwconv(self.act1(self.pwconv1(x))))

    @torch.no_grad()
    def switch_to_deploy(self, norm, layer_scale):
        """Norm affine -> ``pwconv1``; StarReLU's scale -> ``dwconv`` (its
        bias stays, see ``fuse.py``); layer scale -> ``pwconv2``."""
        fuse.fold_norm_into(self.pwconv1, norm)
        act = self.act1
        if (type(act) is StarReLU and self.dwconv.padding_mode == 'zeros'
                and float(act.scale) != 0.0):
            self.dwconv.weight.mul_(act.scale)
            self.act1 = fuse.frozen_star_relu(1.0, float(act.bias / act.scale),
                                              act.scale)
        fuse.fold_output_scale(self.pwconv2, fuse.scale_vector(layer_scale))
        return norm, nn.Identity()


class Attention(nn.Module):
    """Global multi-head self-attention over all H*W tokens (CAFormer 3-4).

    The NCHW input is flattened to ``[B, N, C]`` tokens only inside this
    module. Heads are ``dim // head_dim``; the product runs in
    ``F.scaled_dot_product_attention`` (fused kernels where available).
    """

    def __init__(self, dim, head_dim=32, qkv_bias=False, proj_bias=False,
                 attn_drop=0.0):
        super().__init__()
        if dim % head_dim != 0:
            raise ValueError(f'Attention dim {dim} is not divisible by '
                             f'head_dim {head_dim}')
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C]
        qkv = self.qkv(tokens).view(B, H * W, 3, self.num_heads,
                                    self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2],
            dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))
        return out.transpose(1, 2).reshape(B, C, H, W)

    def switch_to_deploy(self, norm, layer_scale):
        """Norm affine -> ``qkv``; layer scale -> ``proj``."""
        fuse.fold_norm_into(self.qkv, norm)
        fuse.fold_output_scale(self.proj, fuse.scale_vector(layer_scale))
        return norm, nn.Identity()


class RandomMixing(nn.Module):
    """RandFormer's mixer: a frozen random token-mixing matrix.

    The matrix ``random_matrix`` (``M0``, ``[N0, N0]``, rows summing to one)
    is ``softmax(rand(N0, N0))`` at the grid it was trained on: ``N0 = 196``
    (14x14) in stage 3 and ``49`` (7x7) in stage 4 at 224x224. It is a
    persistent buffer: it is saved and loaded with the weights (the trained
    model depends on *its* random draw) but never trained. On the trained
    grid, ``out = M0 @ tokens``, exactly as the reference implementations.

    Other grid sizes ``(h, w)`` (detection and segmentation inputs): entry
    ``M0[m, n]`` is viewed as a field over (output position, input
    position). Both positions are resampled to the new grid with the
    resampling of ``resample_to`` (bilinear when enlarging, area averaging
    when shrinking, so every entry stays non-negative), and each row is
    renormalised to sum to one::

        M = D^-1 R M0 R^T,  R = R_h (x) R_w  ([h*w, N0]),
        D = diag(R M0 R^T 1)

    where ``R_h`` (``[h, h0]``) and ``R_w`` (``[w, w0]``) are the 1-D
    resampling matrices (``resample_weights``). Every output token still
    mixes all input tokens, with the weights its nearest trained positions
    had.

    Memory and compute: ``M`` has rank at most ``N0`` and is never built.
    ``forward`` applies the factors to the tokens, right to left: tokens to
    the base grid (``R^T``, separable: two small matmuls), ``M0``, back to
    the grid (``R``), divided by the row sums ``D`` (an ``[h, w]`` map). That
    is ``O(B*C*h*w*(h0 + w0) + B*C*N0^2)`` multiply-adds and a few
    ``[B, C, h, w0]``-sized temporaries, instead of a dense ``(h*w)^2``
    matrix: at 800x1344 the stage-3 grid is 50x84 = 4200 tokens, whose dense
    matrix would be 70.6 MB (fp32) per block, 1.7 GB over RandFormer-M48's
    24 stage-3 blocks if cached, with ``B*C*4200^2`` (6.8 G for C = 384)
    multiply-adds per block. Nothing is cached: everything is a pure
    function of the buffer and the input size, so ``torch.compile`` traces
    it without graph breaks, memory does not grow with the sizes seen, and
    ONNX exports it for every input size. ``resampled_matrix(grid)``
    builds the dense ``M`` (for inspection and tests only).
    """

    def __init__(self, dim, num_tokens=196):
        super().__init__()
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f'RandomMixing num_tokens must be a square '
                             f'grid (e.g. 196 or 49), got {num_tokens}')
        self.base_grid = (side, side)
        self.register_buffer(
            'random_matrix',
            torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1))

    def switch_to_deploy(self, norm, layer_scale):
        """Nothing exact to fold (see ``fuse.py``)."""
        return norm, layer_scale

    def resampling_weights(self, grid):
        """``(R_h [h, h0], R_w [w, w0])`` in fp32: base grid -> ``grid``."""
        enlarge = _enlarges(self.base_grid, grid)
        device = self.random_matrix.device
        return tuple(
            resample_weights(base, size, enlarge, device=device)
            for base, size in zip(self.base_grid, grid))

    @torch.no_grad()
    def resampled_matrix(self, grid):
        """The dense ``[h*w, h*w]`` row-stochastic matrix ``M`` for ``grid``.

        ``forward`` never builds it; on the trained grid it is
        ``random_matrix`` itself.
        """
        grid = tuple(grid)
        if grid == self.base_grid:
            return self.random_matrix
        rows, cols = self.resampling_weights(grid)
        resample = torch.kron(rows, cols)  # [h*w, N0]
        field = resample @ self.random_matrix.float() @ resample.t()
        return (field / field.sum(dim=1, keepdim=True)).to(
            self.random_matrix.dtype)

    def forward(self, x):
        B, C, H, W = x.shape
        if not _exporting() and (H, W) == self.base_grid:
            matrix = self.random_matrix.to(x.dtype)
            # out[b, c, m] = sum_n M0[m, n] x[b, c, n]
            return torch.matmul(x.reshape(B, C, H * W), matrix.t()).view(
                B, C, H, W)
        return self._mix_resampled(x)

    def _mix_resampled(self, x):
        """``D^-1 R M0 R^T`` applied to the tokens of ``x`` (see above).

        Under ONNX export this path also runs on the trained grid (``R`` is
        then the identity), so one graph serves every input size.
        """
        h0, w0 = self.base_grid
        rows, cols = self.resampling_weights(x.shape[-2:])
        matrix = self.random_matrix.float()
        # row sums R M0 R^T 1 (fp32 outside autocast); R^T 1 is the outer
        # product of the column sums, on the base grid
        to_base = (rows.sum(0)[:, None] * cols.sum(0)[None, :]).reshape(-1)
        row_sums = rows @ (matrix @ to_base).view(h0, w0) @ cols.t()
        rows, cols = rows.to(x.dtype), cols.to(x.dtype)
        matrix = matrix.to(x.dtype)
        base = torch.matmul(rows.t(), torch.matmul(x, cols))  # [B,C,h0,w0]
        mixed = torch.matmul(base.flatten(2), matrix.t()).view_as(base)
        out = torch.matmul(rows, torch.matmul(mixed, cols.t()))  # [B,C,H,W]
        return out.div_(row_sums.to(out.dtype))

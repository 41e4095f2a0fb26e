"""Token mixers: the one part of a MetaFormer block that differs per model.

A mixer is built as ``mixer(dim)`` and maps ``[B, C, H, W]`` to the same
shape; anything with that contract can be one (register it in
``mmmetaformer.registry.MODELS`` to use it from a config).

``fold_branch(norm, layer_scale)`` folds what is exact of the branch
``layer_scale(mixer(norm(x)))`` into the mixer and returns the
``(norm, layer_scale)`` the block keeps (``fuse.py``); the block's
``switch_to_deploy()`` calls it. A mixer without it runs unfused in a
deployed model.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fuse
from .capture import capturing_graph, sizes_are_symbolic
from .layers import DepthwiseConv2d, PointwiseConv2d, StarReLU
from .resample import mix_resampled, resampled_matrix


class IdentityMixer(nn.Module):
    """IdentityFormer's mixer: no token mixing at all."""

    def __init__(self, dim):
        super().__init__()

    def forward(self, x):
        return x

    def fold_branch(self, norm, layer_scale):
        return fuse.fold_identity_mixer(norm, layer_scale)


def _pool_minus_input(x, pool_size):
    pooled = F.avg_pool2d(
        x, pool_size, 1, pool_size // 2, count_include_pad=False
    )
    return pooled.sub_(x)


class _PoolMinusInputFunction(torch.autograd.Function):
    """``avg_pool(x) - x`` that saves nothing for backward.

    The pool's gradient needs only the input's *shape*, which a stride-1,
    same-padding pool shares with its output, so backward passes the
    incoming gradient as the shape donor: one activation-sized tensor less
    per PoolFormer block than autograd on ``F.avg_pool2d``.
    """

    @staticmethod
    def forward(ctx, x, pool_size):
        ctx.pool_size = pool_size
        return _pool_minus_input(x, pool_size)

    @staticmethod
    def backward(ctx, grad):
        k = ctx.pool_size
        grad_x = torch.ops.aten.avg_pool2d_backward(
            grad, grad, [k, k], [1, 1], [k // 2, k // 2], False, False, None
        )
        return grad_x.sub_(grad), None


class Pooling(nn.Module):
    """PoolFormer's mixer: ``avg_pool(x) - x``.

    Stride 1, ``pool_size // 2`` padding, ``count_include_pad=False``; ``x``
    is subtracted because the block adds the residual back (in place, on
    the fresh pooled tensor). With autograd (outside graph capture) it runs
    as ``_PoolMinusInputFunction``, which keeps no tensor for backward.
    """

    def __init__(self, dim, pool_size=3):
        super().__init__()
        if pool_size % 2 != 1:
            raise ValueError(
                f'Pooling pool_size must be odd (a centred '
                f'window keeps the size), got {pool_size}'
            )
        self.pool_size = pool_size

    def forward(self, x):
        if (
            torch.is_grad_enabled()
            and x.requires_grad
            and not capturing_graph()
        ):
            return _PoolMinusInputFunction.apply(x, self.pool_size)
        return _pool_minus_input(x, self.pool_size)

    def fold_branch(self, norm, layer_scale):
        return fuse.fold_pooling(norm, layer_scale)


class SepConv(nn.Module):
    """ConvFormer's mixer, the inverted separable conv of MobileNetV2.

    ``pwconv1`` (1x1, ``dim -> expansion_ratio * dim``), StarReLU, a
    depthwise ``kernel_size`` conv and ``pwconv2`` (1x1 back to ``dim``).
    """

    def __init__(
        self,
        dim,
        expansion_ratio=2,
        kernel_size=7,
        bias=False,
        act_layer=StarReLU,
    ):
        super().__init__()
        mid = int(expansion_ratio * dim)
        self.pwconv1 = PointwiseConv2d(dim, mid, bias=bias)
        self.act1 = act_layer()
        self.dwconv = DepthwiseConv2d(
            mid, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.pwconv2 = PointwiseConv2d(mid, dim, bias=bias)

    def forward(self, x):
        return self.pwconv2(self.dwconv(self.act1(self.pwconv1(x))))

    def fold_branch(self, norm, layer_scale):
        return fuse.fold_sepconv(self, norm, layer_scale)


class Attention(nn.Module):
    """Global multi-head self-attention over all H*W tokens (CAFormer 3-4).

    ``dim // head_dim`` heads; the product runs in
    ``F.scaled_dot_product_attention`` (fused kernels where available).
    """

    def __init__(
        self, dim, head_dim=32, qkv_bias=False, proj_bias=False, attn_drop=0.0
    ):
        super().__init__()
        if dim % head_dim != 0:
            raise ValueError(
                f'Attention dim {dim} is not divisible by head_dim {head_dim}'
            )
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C]
        qkv = (
            self.qkv(tokens)
            .view(B, H * W, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        out = F.scaled_dot_product_attention(
            qkv[0],
            qkv[1],
            qkv[2],
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))
        return out.transpose(1, 2).reshape(B, C, H, W)

    def fold_branch(self, norm, layer_scale):
        return fuse.fold_attention(self, norm, layer_scale)


class RandomMixing(nn.Module):
    """RandFormer's mixer: ``out = M0 @ tokens``, ``M0`` frozen and random.

    ``random_matrix`` (``M0``, ``[N0, N0]``) is ``softmax(rand(N0, N0))``,
    rows summing to one, on the grid it was trained on: ``N0 = 196``
    (14x14) in stage 3 and 49 (7x7) in stage 4 at 224x224. It is a
    persistent buffer: loaded with the weights (the model depends on *its*
    draw), never trained. Other grids (dense prediction) resample it
    (``mix_resampled`` in ``models/core/resample.py``).
    """

    def __init__(self, dim, num_tokens=196):
        super().__init__()
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(
                f'RandomMixing num_tokens must be a square '
                f'grid (e.g. 196 or 49), got {num_tokens}'
            )
        self.base_grid = (side, side)
        self.register_buffer(
            'random_matrix',
            torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1),
        )

    def forward(self, x):
        B, C, H, W = x.shape
        if sizes_are_symbolic() or (H, W) != self.base_grid:
            return mix_resampled(x, self.random_matrix, self.base_grid)
        matrix = self.random_matrix.to(x.dtype)
        # out[b, c, m] = sum_n M0[m, n] x[b, c, n]
        return torch.matmul(x.reshape(B, C, H * W), matrix.t()).view(
            B, C, H, W
        )

    @torch.no_grad()
    def resampled_matrix(self, grid):
        """The dense ``[h*w, h*w]`` mixing matrix on ``grid``."""
        if tuple(grid) == self.base_grid:
            return self.random_matrix
        return resampled_matrix(
            self.random_matrix, self.base_grid, tuple(grid)
        )

    def fold_branch(self, norm, layer_scale):
        """Nothing exact to fold (see ``fuse.py``)."""
        return norm, layer_scale

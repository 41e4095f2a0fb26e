"""Token mixers: the one part of a MetaFormer block that differs per model.

Every mixer takes ``dim`` as its first argument and maps an NCHW tensor
``[B, C, H, W]`` to one of the same shape. Anything with that contract can
be a token mixer (register it in ``mmmetaformer.registry.MODELS`` to use it
from a config).
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import StarReLU, resample_to


class IdentityMixer(nn.Module):
    """IdentityFormer's mixer: no token mixing at all."""

    def __init__(self, dim):
        super().__init__()

    def forward(self, x):
        return x


class Pooling(nn.Module):
    """PoolFormer's mixer: ``avg_pool(x) - x``.

    The pool uses stride 1, ``pool_size // 2`` padding and
    ``count_include_pad=False``; ``x`` is subtracted because the block adds
    the residual back.
    """

    def __init__(self, dim, pool_size=3):
        super().__init__()
        self.pool_size = pool_size

    def forward(self, x):
        pooled = F.avg_pool2d(x, self.pool_size, 1, self.pool_size // 2,
                              count_include_pad=False)
        if torch.is_grad_enabled():
            return pooled - x
        return pooled.sub_(x)  # inference: reuse the fresh pooled tensor


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
        self.pwconv1 = nn.Conv2d(dim, mid, 1, bias=bias)
        self.act1 = act_layer()
        self.dwconv = nn.Conv2d(mid, mid, kernel_size,
                                padding=kernel_size // 2, groups=mid,
                                bias=bias)
        self.pwconv2 = nn.Conv2d(mid, dim, 1, bias=bias)

    def forward(self, x):
        return self.pwconv2(self.dwconv(self.act1(self.pwconv1(x))))


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


class RandomMixing(nn.Module):
    """RandFormer's mixer: a frozen random token-mixing matrix.

    The matrix ``random_matrix`` (``[N, N]``, rows summing to one) is
    ``softmax(rand(N, N))`` at the grid it was trained on: ``N = 196``
    (14x14) in stage 3 and ``49`` (7x7) in stage 4 at 224x224. It is a
    persistent buffer: it is saved and loaded with the weights (the trained
    model depends on *its* random draw) but never trained.

    Other grid sizes (detection and segmentation inputs): entry
    ``M[m, n]`` is viewed as a field over (output position, input position)
    ``(h0, w0, h0, w0)``. Both position pairs are resampled to the new grid
    ``(h, w)`` - bilinear when enlarging, area averaging when shrinking -
    which keeps every entry non-negative, and each row is renormalised to
    sum to one. Every output token therefore still mixes all input tokens
    with the weights its nearest trained positions had. At the trained grid
    the matrix is used unchanged. Resampled matrices are cached per
    ``(h, w, device, dtype)`` (at most ``cache_size`` of them).

    Memory is O(N^2) in the token count: at 800x1216 the stage-3 grid is
    50x76 = 3800 tokens, a 3800x3800 matrix of 58 MB (fp32) and
    ``B * N^2 * C`` multiply-adds per block; stage 4 (25x38) needs 3.6 MB.
    """

    def __init__(self, dim, num_tokens=196, cache_size=4):
        super().__init__()
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f'RandomMixing num_tokens must be a square '
                             f'grid (e.g. 196 or 49), got {num_tokens}')
        self.base_grid = (side, side)
        self.cache_size = cache_size
        self.register_buffer(
            'random_matrix',
            torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1))
        self._resampled = OrderedDict()

    def _load_from_state_dict(self, *args, **kwargs):
        self._resampled.clear()
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def resampled_matrix(self, grid):
        """The ``[h*w, h*w]`` row-stochastic mixing matrix for ``grid``."""
        grid = tuple(grid)
        if grid == self.base_grid:
            return self.random_matrix
        key = (grid, self.random_matrix.device, self.random_matrix.dtype)
        if key in self._resampled:
            self._resampled.move_to_end(key)
            return self._resampled[key]
        h0, w0 = self.base_grid
        n0 = h0 * w0
        field = self.random_matrix.float()
        # Input positions: [n0 (out), 1, h0, w0] -> [n0, h*w]
        field = resample_to(field.view(n0, 1, h0, w0), grid)
        field = field.reshape(n0, -1)
        # Output positions: [1, h*w (in), h0, w0] -> [h*w (out), h*w (in)]
        field = field.t().reshape(1, -1, h0, w0)
        field = resample_to(field, grid).reshape(field.shape[1], -1).t()
        matrix = (field / field.sum(dim=1, keepdim=True)).to(
            self.random_matrix.dtype).contiguous()
        self._resampled[key] = matrix
        while len(self._resampled) > self.cache_size:
            self._resampled.popitem(last=False)
        return matrix

    def forward(self, x):
        B, C, H, W = x.shape
        matrix = self.resampled_matrix((H, W)).to(x.dtype)
        # out[b, c, m] = sum_n M[m, n] x[b, c, n]
        return torch.matmul(x.reshape(B, C, H * W), matrix.t()).view(
            B, C, H, W)

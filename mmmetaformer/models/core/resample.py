"""Resampling to any grid: the dense-prediction extension of the core.

The papers' models see one input size. Detection and segmentation inputs
have others, and two parts of the core then resample:

* ``SimplePyramidAdapter`` (ConvMixer) resizes its one trunk map to the
  sizes of every pyramid level (``resample_to``);
* ``RandomMixing`` (RandFormer) resamples its frozen matrix, trained on one
  token grid, to the input's grid (``mix_resampled``).

Both use one resampling: bilinear (``align_corners=False``) where the
target is at least as fine in both dims, area averaging otherwise. Neither
creates values outside the input's range, so non-negative inputs stay
non-negative.

ONNX cannot export an adaptive pool whose output size depends on the input,
nor a mode chosen in Python, so under ``torch.onnx.export`` the resampling
is written as two matrix products with ``resample_weights`` (mode chosen in
the graph): the exported model is right for every input size and equals
the eager ops up to float rounding.
"""

import torch
import torch.nn.functional as F

from .capture import sizes_are_symbolic


def _enlarges(in_size, out_size):
    """Whether ``resample_to`` interpolates (every dim at least as fine).

    A Python bool for int sizes; a 0-dim bool tensor for traced ones.
    """
    return (out_size[0] >= in_size[0]) & (out_size[1] >= in_size[1])


def resample_weights(
    in_size, out_size, enlarge, dtype=torch.float32, device=None
):
    """``[out_size, in_size]`` matrix of ``resample_to`` along one axis.

    Both modes are separable, so resampling ``[.., h, w]`` to ``(H, W)`` is
    ``R_h @ x @ R_w.T`` with these matrices:

    * ``enlarge`` (bilinear, as ``F.interpolate``): output ``i`` reads
      source position ``s = (i + 0.5) * in / out - 0.5`` (clamped at 0)
      with weights ``1 - frac(s)`` and ``frac(s)`` at ``floor(s)`` and
      ``min(floor(s) + 1, in - 1)``;
    * otherwise (area, as ``F.adaptive_avg_pool2d``): output ``i`` averages
      input positions ``floor(i * in / out) .. ceil((i + 1) * in / out) - 1``.

    Index arithmetic only, so traced sizes (0-dim tensors during ONNX
    export) give a graph valid for any input size; ``enlarge`` may then be
    a 0-dim bool tensor choosing in the graph.
    """
    # sizes as 0-dim tensors: traced ones stay in the graph, ints are
    # constants
    n_in, n_out = (
        size
        if torch.is_tensor(size)
        else torch.full((), size, dtype=torch.long, device=device)
        for size in (in_size, out_size)
    )
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
        return (pos == first[:, None]).float() * (1 - frac)[:, None] + (
            pos == second[:, None]
        ).float() * frac[:, None]

    def area():
        start = torch.div(dst * n_in, n_out, rounding_mode='floor')
        end = torch.div(
            (dst + 1) * n_in + n_out - 1, n_out, rounding_mode='floor'
        )
        inside = (src_pos >= start[:, None]) & (src_pos < end[:, None])
        return inside.float() / (end - start).float()[:, None]

    if isinstance(enlarge, bool):
        weights = bilinear() if enlarge else area()
    else:
        weights = torch.where(enlarge, bilinear(), area())
    return weights.to(dtype)


def resample_to(x, size):
    """Resize the last two dims of ``[B, C, h, w]`` to ``size``.

    Eager and compiled code call ``F.interpolate`` / ``F.adaptive_avg_pool2d``
    (fast, and counted by the complexity tools); ONNX export the matrix
    form (see the module docstring).
    """
    in_size = x.shape[-2:]
    if sizes_are_symbolic():
        enlarge = _enlarges(in_size, size)
        rows = resample_weights(
            in_size[0], size[0], enlarge, x.dtype, x.device
        )
        cols = resample_weights(
            in_size[1], size[1], enlarge, x.dtype, x.device
        )
        return torch.matmul(rows, torch.matmul(x, cols.t()))
    if tuple(in_size) == tuple(size):
        return x
    if _enlarges(in_size, size):
        return F.interpolate(
            x, size=size, mode='bilinear', align_corners=False
        )
    return F.adaptive_avg_pool2d(x, size)


# RandomMixing on another grid. Entry ``M0[m, n]`` of the trained matrix
# (``[N0, N0]``, rows summing to one, on the ``(h0, w0)`` base grid) is a
# field over (output position, input position). Both positions are
# resampled to the new grid ``(h, w)`` and each row is renormalised:
#
#     M = D^-1 R M0 R^T,  R = R_h (x) R_w  ([h*w, N0]),
#     D = diag(R M0 R^T 1)
#
# with ``R_h`` (``[h, h0]``) and ``R_w`` (``[w, w0]``) from
# ``resample_weights``. Every output token still mixes all input tokens,
# with the weights its nearest trained positions had.
#
# ``M`` has rank at most ``N0`` and is never built: ``mix_resampled``
# applies the factors right to left (``R^T`` separably, ``M0``, ``R``, then
# divides by the ``[h, w]`` row sums), ``O(B*C*h*w*(h0 + w0) + B*C*N0^2)``
# multiply-adds. At 800x1344 the stage-3 grid has 4200 tokens: the dense
# matrix would be 70.6 MB (fp32) per block, 1.7 GB over RandFormer-M48's 24
# stage-3 blocks if cached, with ``B*C*4200^2`` multiply-adds per block.
# Nothing is cached (a pure function of the buffer and the input size), so
# ``torch.compile`` traces it without graph breaks, memory does not grow
# with the sizes seen, and ONNX exports it for every input size.


def grid_weights(base_grid, grid, device=None):
    """``(R_h [h, h0], R_w [w, w0])`` in fp32: ``base_grid`` -> ``grid``."""
    enlarge = _enlarges(base_grid, grid)
    return tuple(
        resample_weights(base, size, enlarge, device=device)
        for base, size in zip(base_grid, grid)
    )


def resampled_matrix(matrix, base_grid, grid):
    """The dense ``[h*w, h*w]`` matrix ``M`` (inspection and tests only)."""
    rows, cols = grid_weights(base_grid, grid, matrix.device)
    resample = torch.kron(rows, cols)  # [h*w, N0]
    field = resample @ matrix.float() @ resample.t()
    return (field / field.sum(dim=1, keepdim=True)).to(matrix.dtype)


def mix_resampled(x, matrix, base_grid):
    """``D^-1 R M0 R^T`` applied to the tokens of ``x`` ``[B, C, h, w]``.

    Under ONNX export this also runs on the trained grid (``R`` is then
    the identity), so one graph serves every input size.
    """
    h0, w0 = base_grid
    rows, cols = grid_weights(base_grid, x.shape[-2:], matrix.device)
    matrix = matrix.float()
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

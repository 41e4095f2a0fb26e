"""Plain torch functions that trace into standard ONNX ops, any input size.

Everything here reads sizes with ``torch._shape_as_tensor`` (a ``Shape``
node under ``torch.onnx.export``, a tensor in eager mode), builds indices
with ``arange`` on those sizes and never turns a size into a Python int, so
one traced graph serves every batch, height and width.

Two ops have no torch function that exports to the ONNX op: they are
``autograd.Function`` s whose ``symbolic`` emits the standard op
(``NonMaxSuppression``, ``RoiAlign``) and whose ``forward`` computes the
same thing with torchvision while tracing.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# imported here, not in forward: torchvision's first import calls an op,
# which fails inside a trace
import torchvision.ops

from ..models.core.resample import resample_weights


def spatial_size(x):
    """``(H, W)`` of ``[..., H, W]`` as 0-dim int64 tensors (traced)."""
    shape = torch._shape_as_tensor(x)
    return shape[-2], shape[-1]


def pad_to_multiple(x, divisor, value=0.0):
    """Pad ``[N, C, H, W]`` bottom/right to multiples of ``divisor`` (as
    mmdet's ``stack_batch``), with the padded size computed in the graph:
    pad by ``divisor - 1`` then gather the first ``ceil(H / d) * d`` rows
    and columns."""
    if divisor <= 1:
        return x
    height, width = spatial_size(x)
    rows = (
        torch.div(height + divisor - 1, divisor, rounding_mode='floor')
        * divisor
    )
    cols = (
        torch.div(width + divisor - 1, divisor, rounding_mode='floor')
        * divisor
    )
    x = F.pad(x, [0, divisor - 1, 0, divisor - 1], value=value)
    x = x.index_select(2, torch.arange(rows, device=x.device))
    return x.index_select(3, torch.arange(cols, device=x.device))


def adaptive_avg_pool2d(x, output_size):
    """``F.adaptive_avg_pool2d`` as two averaging matrices built from the
    map size (output ``i`` averages ``floor(i*H/out) .. ceil((i+1)*H/out)
    - 1``): exact for every size, bins dividing the map or not.

    Args:
        x (Tensor): ``[N, C, H, W]``.
        output_size (int | tuple[int, int]): the pooled size.
    """
    out_h, out_w = (
        (output_size, output_size)
        if isinstance(output_size, int)
        else tuple(output_size)
    )
    height, width = spatial_size(x)
    rows = resample_weights(height, out_h, False, x.dtype, x.device)
    cols = resample_weights(width, out_w, False, x.dtype, x.device)
    return torch.matmul(rows, torch.matmul(x, cols.t()))


class ExactAdaptiveAvgPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveAvgPool2d`` while exporting (see
    ``adaptive_avg_pool2d``)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return adaptive_avg_pool2d(x, self.output_size)


class ScaleUpsample(nn.Module):
    """Drop-in for mmseg's ``Upsample`` while exporting.

    mmseg computes ``int(t * scale_factor)`` in Python, which a trace
    freezes. For an integer factor ``F.interpolate(scale_factor=s)``
    computes the same numbers (source position ``(i + 0.5) / s - 0.5``
    either way) and exports as a ``Resize`` by scales, valid at every size.
    """

    def __init__(self, scale_factor, mode, align_corners):
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x):
        return F.interpolate(
            x,
            scale_factor=self.scale_factor,
            mode=self.mode,
            align_corners=self.align_corners,
        )


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (corner boxes): ``boxes [B, N, 4]``,
    ``scores [B, C, N]`` -> ``[M, 3]`` int64 rows ``(batch, class, box)``;
    keeps scores ``> score_threshold``, suppresses IoU ``> iou_threshold``
    (as mmcv's ``nms``), each (batch, class) in descending score."""

    @staticmethod
    def forward(
        ctx, boxes, scores, max_per_class, iou_threshold, score_threshold
    ):
        rows = []
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                score = scores[b, c]
                index = (score > score_threshold).nonzero().squeeze(1)
                keep = index[
                    torchvision.ops.nms(
                        boxes[b, index], score[index], iou_threshold
                    )
                ][:max_per_class]
                rows.append(
                    torch.stack(
                        [
                            torch.full_like(keep, b),
                            torch.full_like(keep, c),
                            keep,
                        ],
                        1,
                    )
                )
        return torch.cat(rows)

    @staticmethod
    def symbolic(
        g, boxes, scores, max_per_class, iou_threshold, score_threshold
    ):
        def const(value, dtype):
            return g.op('Constant', value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            'NonMaxSuppression',
            boxes,
            scores,
            const(max_per_class, torch.long),
            const(iou_threshold, torch.float),
            const(score_threshold, torch.float),
        )


def non_max_suppression(
    boxes, scores, max_per_class, iou_threshold, score_threshold
):
    """See ``_NonMaxSuppression``."""
    return _NonMaxSuppression.apply(
        boxes,
        scores,
        int(max_per_class),
        float(iou_threshold),
        float(score_threshold),
    )


class _RoiAlign(torch.autograd.Function):
    """ONNX ``RoiAlign`` (opset 16+, average mode).

    mmcv's ``RoIAlign(aligned=True)`` = ``coordinate_transformation_mode=
    'half_pixel'`` (box corners shifted by -0.5 pixel, no minimum box
    size); ``aligned=False`` = ``'output_half_pixel'`` (boxes at least one
    pixel). ``sampling_ratio=0`` samples ``ceil(bin size)`` points per bin
    in both.
    """

    @staticmethod
    def forward(
        ctx,
        feat,
        boxes,
        batch_index,
        out_h,
        out_w,
        spatial_scale,
        sampling_ratio,
        aligned,
    ):
        rois = torch.cat([batch_index[:, None].to(boxes), boxes], 1)
        return torchvision.ops.roi_align(
            feat, rois, (out_h, out_w), spatial_scale, sampling_ratio, aligned
        )

    @staticmethod
    def symbolic(
        g,
        feat,
        boxes,
        batch_index,
        out_h,
        out_w,
        spatial_scale,
        sampling_ratio,
        aligned,
    ):
        return g.op(
            'RoiAlign',
            feat,
            boxes,
            batch_index,
            mode_s='avg',
            output_height_i=out_h,
            output_width_i=out_w,
            sampling_ratio_i=sampling_ratio,
            spatial_scale_f=spatial_scale,
            coordinate_transformation_mode_s='half_pixel'
            if aligned
            else 'output_half_pixel',
        )


def roi_align(
    feat,
    boxes,
    batch_index,
    output_size,
    spatial_scale,
    sampling_ratio,
    aligned,
):
    """``[K, C, out_h, out_w]`` features of ``boxes [K, 4]`` (input pixels)
    in images ``batch_index [K]`` (int64) of ``feat``."""
    out_h, out_w = (
        (output_size, output_size)
        if isinstance(output_size, int)
        else tuple(output_size)
    )
    return _RoiAlign.apply(
        feat,
        boxes,
        batch_index,
        int(out_h),
        int(out_w),
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
    )


def grid_anchors(base_anchors, stride, height, width):
    """mmdet ``AnchorGenerator.single_level_grid_priors`` on a traced grid:
    ``[H * W * A, 4]``, anchor ``a`` at cell ``(y, x)`` in row
    ``(y * W + x) * A + a``."""
    shift_x = (
        torch.arange(width, device=base_anchors.device).to(base_anchors.dtype)
        * stride[0]
    )
    shift_y = (
        torch.arange(height, device=base_anchors.device).to(base_anchors.dtype)
        * stride[1]
    )
    xx = shift_x[None, :] + shift_y[:, None] * 0
    yy = shift_y[:, None] + shift_x[None, :] * 0
    shifts = torch.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
    return (base_anchors[None] + shifts).reshape(-1, 4)


def decode_deltas(
    priors,
    deltas,
    means,
    stds,
    image_hw,
    wh_ratio_clip,
    clip_border=True,
    add_ctr_clamp=False,
    ctr_clamp=32,
):
    """mmdet's ``delta2bbox`` (the same operations in the same order), for
    ``priors [..., 4]`` and ``deltas [..., 4]`` broadcasting, clipped to
    ``image_hw`` (0-dim tensors, the unpadded input size)."""
    means = deltas.new_tensor(means)
    stds = deltas.new_tensor(stds)
    denorm = deltas * stds + means
    dxy, dwh = denorm[..., :2], denorm[..., 2:]
    pxy = (priors[..., :2] + priors[..., 2:]) * 0.5
    pwh = priors[..., 2:] - priors[..., :2]
    dxy_wh = pwh * dxy
    max_ratio = abs(math.log(wh_ratio_clip))
    if add_ctr_clamp:
        dxy_wh = torch.clamp(dxy_wh, max=ctr_clamp, min=-ctr_clamp)
        dwh = torch.clamp(dwh, max=max_ratio)
    else:
        dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    x1y1 = gxy - gwh * 0.5
    x2y2 = gxy + gwh * 0.5
    boxes = torch.cat([x1y1, x2y2], dim=-1)
    if clip_border:
        height, width = image_hw
        limit = torch.stack([width, height, width, height]).to(boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
    return boxes


def batched_nms_topk(
    boxes,
    scores,
    idxs,
    valid,
    iou_threshold,
    top_k,
    num_boxes,
    class_agnostic=False,
):
    """mmcv's ``batched_nms`` (class-aware by the offset trick, as mmcv does
    below ``split_thr`` boxes) for a batch, then the ``top_k`` kept.

    Args:
        boxes (Tensor): ``[N, B, 4]``.
        scores (Tensor): ``[N, B]``, positive where valid.
        idxs (Tensor): ``[N, B]`` int64 class (or level) of each box.
        valid (Tensor): ``[N, B]`` bool; invalid boxes take no part.
        top_k (int): at most ``B``.
        num_boxes (int): ``B`` (static: levels x ``nms_pre``).
        class_agnostic (bool): one NMS over all classes (mmcv's option).

    Returns:
        tuple: ``boxes [N, K, 4]``, ``scores [N, K]`` (0 in empty slots),
        ``idxs [N, K]``, ``keep [N, K]`` (bool), in descending score.
    """
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    masked = boxes * valid[..., None].to(boxes.dtype)
    max_coordinate = masked.flatten(1).max(dim=1).values
    groups = torch.zeros_like(idxs) if class_agnostic else idxs
    offsets = groups.to(boxes.dtype) * (max_coordinate[:, None] + 1)
    boxes_for_nms = boxes + offsets[..., None]
    selected = non_max_suppression(
        boxes_for_nms, scores[:, None, :], num_boxes, iou_threshold, 0.0
    )
    kept = torch.zeros_like(scores)
    kept = kept.index_put(
        (selected[:, 0], selected[:, 2]),
        torch.ones_like(selected[:, 0], dtype=scores.dtype),
    )
    top_scores, order = (scores * kept).topk(top_k, dim=1)
    top_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    keep = top_scores > 0
    return (
        top_boxes * keep[..., None].to(boxes.dtype),
        top_scores,
        idxs.gather(1, order),
        keep,
    )


def pad_candidates(count, *tensors):
    """Append ``count`` zero rows along dim 1 of each ``[N, B, ...]``
    tensor, so a ``topk(count)`` exists whatever ``B`` is (the added rows
    score 0 and are never valid)."""
    out = []
    for t in tensors:
        pad = t.new_zeros((1, count) + tuple(t.shape[2:])).expand(
            t.shape[0], -1, *t.shape[2:]
        )
        out.append(torch.cat([t, pad], 1))
    return out


def paste_masks(masks, boxes, image_hw):
    """mmdet's ``_do_paste_mask`` (``grid_sample`` of each ``[M, M]`` mask
    into its box, bilinear, ``align_corners=False``, zeros outside) for the
    whole image, written as two interpolation matrices (bilinear sampling
    on a separable grid is separable): ``[K, H, W]``.

    Args:
        masks (Tensor): ``[K, M, M]`` probabilities.
        boxes (Tensor): ``[K, 4]`` in input pixels.
        image_hw: 0-dim height and width tensors.
    """
    height, width = image_hw
    rows = _paste_weights(boxes[:, 1], boxes[:, 3], height, masks.shape[1])
    cols = _paste_weights(boxes[:, 0], boxes[:, 2], width, masks.shape[2])
    return torch.matmul(rows, torch.matmul(masks, cols.transpose(1, 2)))


def _paste_weights(low, high, size, mask_size):
    """``[K, size, mask_size]`` weights of ``grid_sample`` along one axis."""
    pixel = torch.arange(size, device=low.device).to(low.dtype) + 0.5
    grid = (pixel[None, :] - low[:, None]) / (high - low)[:, None] * 2 - 1
    # mmdet zeroes the infinities of empty boxes; NaN (0/0) too here
    grid = torch.where(torch.isfinite(grid), grid, torch.zeros_like(grid))
    source = ((grid + 1) * mask_size - 1) / 2
    first = source.floor()
    frac = source - first
    index = torch.arange(mask_size, device=low.device).to(low.dtype)
    return (index == first[..., None]).to(low.dtype) * (1 - frac)[
        ..., None
    ] + (index == first[..., None] + 1).to(low.dtype) * frac[..., None]

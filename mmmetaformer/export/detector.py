"""mmdet detectors as one traceable graph: image -> boxes, scores, labels
(and masks), with the config's test-time NMS inside.

``DetectorGraph(model)(image)`` computes what ``model.test_step`` returns
for a batch of one size with ``img_shape = ori_shape =`` the input size and
``scale_factor = 1``: the same preprocessing, heads, box decoding, NMS and
mask pasting, written as batched torch functions (``ops``) that trace into
standard ONNX ops. Every image gets ``K = max_per_img`` slots in descending
score; empty slots score 0 (boxes 0, masks all False).

Supported heads (anything else is refused with ``UnsupportedModel``):

* one-stage: ``RetinaHead`` / ``AnchorHead`` (sigmoid classification,
  ``AnchorGenerator``, ``DeltaXYWHBBoxCoder``): per level the ``nms_pre``
  best (anchor, class) pairs above ``score_thr``, decoded, class-aware NMS;
* two-stage: ``RPNHead`` proposals (per level ``nms_pre``, ``min_bbox_size``,
  NMS by level, ``max_per_img``), then ``StandardRoIHead`` or
  ``CascadeRoIHead`` with ``SingleRoIExtractor`` (``RoiAlign``), FC box
  heads (softmax, ``DeltaXYWHBBoxCoder``), per-class NMS and
  ``FCNMaskHead`` masks pasted into the image as probabilities (mmdet
  binarises at ``mask_thr_binary``, which the file's metadata holds: a
  runner resizes the probabilities to the original image first).

Padded proposal slots (fewer than ``max_per_img`` after the RPN's NMS) run
through the RoI head like the others and are dropped by their zero score.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import (
    batched_nms_topk,
    decode_deltas,
    grid_anchors,
    non_max_suppression,
    pad_candidates,
    paste_masks,
    roi_align,
)
from .preprocess import Preprocess, UnsupportedModel, image_hw


def _type(module):
    return type(module).__name__


def _require(condition, module, reason):
    if not condition:
        raise UnsupportedModel(module, reason)


def _check_nms(cfg, where):
    nms = cfg.get('nms') if cfg is not None else None
    _require(
        nms is not None and nms.get('type', 'nms') == 'nms',
        where,
        f'test_cfg.nms={nms}: only plain NMS exports '
        "(type='nms'); soft-NMS and others have no ONNX op",
    )


def _check_coder(head, where):
    coder = head.bbox_coder
    _require(
        _type(coder) == 'DeltaXYWHBBoxCoder',
        where,
        f'box coder {_type(coder)}; only DeltaXYWHBBoxCoder exports',
    )


def _check_extractor(extractor, where):
    _require(
        _type(extractor) == 'SingleRoIExtractor',
        where,
        f'RoI extractor {_type(extractor)}; only SingleRoIExtractor exports',
    )
    for layer in extractor.roi_layers:
        _require(
            _type(layer) == 'RoIAlign' and layer.pool_mode == 'avg',
            where,
            f'RoI layer {_type(layer)} '
            f'(pool_mode={getattr(layer, "pool_mode", None)}); only '
            "mmcv RoIAlign with pool_mode='avg' exports",
        )


def coder_args(coder):
    """``decode_deltas`` arguments of a ``DeltaXYWHBBoxCoder`` (the heads
    decode with its default ``wh_ratio_clip``)."""
    return dict(
        means=coder.means,
        stds=coder.stds,
        wh_ratio_clip=16 / 1000,
        clip_border=coder.clip_border,
        add_ctr_clamp=coder.add_ctr_clamp,
        ctr_clamp=coder.ctr_clamp,
    )


class DenseCandidates(nn.Module):
    """An anchor head's per-level ``nms_pre`` best candidates, decoded.

    ``forward(feats, hw)`` -> ``boxes [N, B, 4]``, ``scores [N, B]``,
    ``labels [N, B]`` (class; the level for an RPN), ``valid [N, B]``,
    with ``B = levels * nms_pre``.
    """

    def __init__(self, head, cfg, where, proposals):
        super().__init__()
        _require(
            _type(head) in ('RetinaHead', 'AnchorHead', 'RPNHead'),
            where,
            f'dense head {_type(head)}; the exporter handles '
            'RetinaHead, AnchorHead and RPNHead',
        )
        _require(
            head.use_sigmoid_cls,
            where,
            'softmax classification is not exported',
        )
        _require(
            _type(head.prior_generator) == 'AnchorGenerator',
            where,
            f'prior generator {_type(head.prior_generator)}',
        )
        _check_coder(head, where)
        nms_pre = cfg.get('nms_pre', -1)
        _require(
            nms_pre > 0,
            where,
            f'test_cfg.nms_pre={nms_pre}; a '
            'positive nms_pre bounds the candidates the graph sorts',
        )
        self.head = head
        self.proposals = proposals
        self.nms_pre = int(nms_pre)
        self.score_thr = None if proposals else float(cfg.get('score_thr', 0))
        self.min_bbox_size = cfg.get('min_bbox_size', -1)
        generator = head.prior_generator
        for level, anchors in enumerate(generator.base_anchors):
            self.register_buffer(f'base_anchors{level}', anchors.clone())
        self.strides = [
            tuple(float(s) for s in stride) for stride in generator.strides
        ]
        self.num_classes = head.cls_out_channels
        self.num_candidates = len(self.strides) * self.nms_pre
        self.coder = coder_args(head.bbox_coder)

    def forward(self, feats, hw):
        cls_scores, bbox_preds = self.head(feats)
        boxes, scores, labels = [], [], []
        for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            batch = cls.shape[0]
            height, width = cls.shape[2], cls.shape[3]
            anchors = grid_anchors(
                getattr(self, f'base_anchors{level}'),
                self.strides[level],
                height,
                width,
            )
            score = (
                cls.permute(0, 2, 3, 1)
                .reshape(batch, -1, self.num_classes)
                .sigmoid()
            )
            delta = reg.permute(0, 2, 3, 1).reshape(batch, -1, 4)
            if self.score_thr is not None:
                score = torch.where(
                    score > self.score_thr, score, torch.zeros_like(score)
                )
            score, delta = pad_candidates(self.nms_pre, score, delta)
            anchors = torch.cat(
                [anchors, anchors.new_zeros((self.nms_pre, 4))]
            )
            top, index = score.reshape(batch, -1).topk(self.nms_pre, dim=1)
            prior = torch.div(index, self.num_classes, rounding_mode='floor')
            label = index - prior * self.num_classes
            delta = delta.gather(1, prior[..., None].expand(-1, -1, 4))
            boxes.append(
                decode_deltas(anchors[prior], delta, image_hw=hw, **self.coder)
            )
            scores.append(top)
            labels.append(
                torch.full_like(label, level) if self.proposals else label
            )
        boxes, scores, labels = (
            torch.cat(t, 1) for t in (boxes, scores, labels)
        )
        valid = scores > 0
        if self.min_bbox_size >= 0:
            w = boxes[..., 2] - boxes[..., 0]
            h = boxes[..., 3] - boxes[..., 1]
            valid = valid & (w > self.min_bbox_size) & (h > self.min_bbox_size)
        return boxes, scores, labels, valid


class RoIFeatures(nn.Module):
    """mmdet's ``SingleRoIExtractor``: each box pooled by ``RoiAlign`` on the
    level its size maps to (every level computed, one selected per box)."""

    def __init__(self, extractor):
        super().__init__()
        self.finest_scale = extractor.finest_scale
        self.layers = [
            dict(
                output_size=tuple(layer.output_size),
                spatial_scale=float(layer.spatial_scale),
                sampling_ratio=int(layer.sampling_ratio),
                aligned=bool(layer.aligned),
            )
            for layer in extractor.roi_layers
        ]

    def forward(self, feats, boxes, batch_index):
        feats = feats[: len(self.layers)]
        if len(feats) == 1:
            return roi_align(feats[0], boxes, batch_index, **self.layers[0])
        scale = torch.sqrt(
            (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        )
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        level = level.clamp(min=0, max=len(feats) - 1).long()
        out = None
        for i, (feat, layer) in enumerate(zip(feats, self.layers)):
            pooled = roi_align(feat, boxes, batch_index, **layer)
            out = (
                pooled
                if out is None
                else torch.where(
                    (level == i)[:, None, None, None], pooled, out
                )
            )
        return out


class DetectorGraph(nn.Module):
    """``image [N, 3, H, W]`` (float, 0-255, channel order as loaded) ->
    ``boxes [N, K, 4]`` (xyxy, input pixels), ``scores [N, K]``,
    ``labels [N, K]`` (int64)[, ``masks [N, K, H, W]`` (float
    probabilities, 0 in empty slots)]."""

    def __init__(self, model):
        super().__init__()
        pre = model.data_preprocessor
        _require(
            _type(pre) == 'DetDataPreprocessor',
            'data_preprocessor',
            f'{_type(pre)}; only DetDataPreprocessor exports',
        )
        _require(
            not pre.batch_augments,
            'data_preprocessor',
            'test-time batch_augments are not exported',
        )
        self.preprocess = Preprocess(
            pre.mean if pre._enable_normalize else None,
            pre.std if pre._enable_normalize else None,
            pre._channel_conversion,
            pre.pad_size_divisor,
            pre.pad_value,
        )
        self.model = model
        kind = _type(model)
        self.with_mask = False
        if hasattr(model, 'roi_head') and hasattr(model, 'rpn_head'):
            self._init_two_stage(model)
        elif hasattr(model, 'bbox_head') and not hasattr(model, 'roi_head'):
            cfg = model.bbox_head.test_cfg
            where = f'bbox_head ({_type(model.bbox_head)})'
            self.dense = DenseCandidates(
                model.bbox_head, cfg, where, proposals=False
            )
            _check_nms(cfg, where)
            self.nms_iou = float(cfg.nms.iou_threshold)
            self.class_agnostic = bool(cfg.nms.get('class_agnostic', False))
            self.max_per_img = int(cfg.max_per_img)
            _require(
                self.max_per_img <= self.dense.num_candidates,
                where,
                f'max_per_img={self.max_per_img} exceeds levels x '
                f'nms_pre={self.dense.num_candidates}',
            )
            self.two_stage = False
        else:
            raise UnsupportedModel(
                kind,
                'neither a one-stage detector with an anchor head nor '
                'a two-stage detector with rpn_head and roi_head',
            )
        self.output_names = ('boxes', 'scores', 'labels') + (
            ('masks',) if self.with_mask else ()
        )

    def _init_two_stage(self, model):
        self.two_stage = True
        rpn_cfg = model.rpn_head.test_cfg
        where = f'rpn_head ({_type(model.rpn_head)})'
        self.dense = DenseCandidates(
            model.rpn_head, rpn_cfg, where, proposals=True
        )
        _check_nms(rpn_cfg, where)
        self.rpn_iou = float(rpn_cfg.nms.iou_threshold)
        self.num_proposals = int(rpn_cfg.max_per_img)
        _require(
            self.num_proposals <= self.dense.num_candidates,
            where,
            f'max_per_img={self.num_proposals} exceeds levels x '
            f'nms_pre={self.dense.num_candidates}',
        )
        roi_head = model.roi_head
        where = f'roi_head ({_type(roi_head)})'
        _require(
            _type(roi_head) in ('StandardRoIHead', 'CascadeRoIHead'),
            where,
            'the exporter handles StandardRoIHead and CascadeRoIHead',
        )
        _require(
            not roi_head.with_shared_head, where, 'shared_head is not exported'
        )
        cascade = _type(roi_head) == 'CascadeRoIHead'
        bbox_heads = (
            list(roi_head.bbox_head) if cascade else [roi_head.bbox_head]
        )
        extractors = (
            list(roi_head.bbox_roi_extractor)
            if cascade
            else [roi_head.bbox_roi_extractor]
        )
        for head in bbox_heads:
            hw = f'{where}.bbox_head ({_type(head)})'
            _require(
                _type(head)
                in (
                    'Shared2FCBBoxHead',
                    'ConvFCBBoxHead',
                    'Shared4Conv1FCBBoxHead',
                    'BBoxHead',
                ),
                hw,
                'the exporter handles the FC box heads',
            )
            _require(
                not head.custom_cls_channels,
                hw,
                'custom classification activations are not exported',
            )
            _check_coder(head, hw)
        for extractor in extractors:
            _check_extractor(extractor, f'{where}.bbox_roi_extractor')
        self.bbox_heads = bbox_heads
        self.bbox_features = nn.ModuleList(RoIFeatures(e) for e in extractors)
        cfg = roi_head.test_cfg
        _check_nms(cfg, where)
        self.score_thr = float(cfg.score_thr)
        self.nms_iou = float(cfg.nms.iou_threshold)
        self.class_agnostic = bool(cfg.nms.get('class_agnostic', False))
        self.max_per_img = int(cfg.max_per_img)
        self.with_mask = roi_head.with_mask
        if self.with_mask:
            mask_heads = (
                list(roi_head.mask_head) if cascade else [roi_head.mask_head]
            )
            for head in mask_heads:
                _require(
                    _type(head) == 'FCNMaskHead',
                    f'{where}.mask_head ({_type(head)})',
                    'the exporter handles FCNMaskHead',
                )
            share = getattr(roi_head, 'share_roi_extractor', False)
            mask_extractors = (
                extractors
                if share
                else (
                    list(roi_head.mask_roi_extractor)
                    if cascade
                    else [roi_head.mask_roi_extractor]
                )
            )
            for extractor in mask_extractors:
                _check_extractor(extractor, f'{where}.mask_roi_extractor')
            self.mask_heads = mask_heads
            self.mask_features = nn.ModuleList(
                RoIFeatures(e) for e in mask_extractors
            )
            self.mask_thr = float(cfg.mask_thr_binary)

    def _coder(self, head):
        return coder_args(head.bbox_coder)

    def forward(self, image):
        hw = image_hw(image)
        feats = self.model.extract_feat(self.preprocess(image))
        boxes, scores, labels, valid = self.dense(feats, hw)
        if not self.two_stage:
            boxes, scores, labels, _ = batched_nms_topk(
                boxes,
                scores,
                labels,
                valid,
                self.nms_iou,
                self.max_per_img,
                self.dense.num_candidates,
                self.class_agnostic,
            )
            return boxes, scores, labels
        # RPN: NMS per level (the labels are level ids), max_per_img kept
        proposals, _, _, proposal_valid = batched_nms_topk(
            boxes,
            scores,
            labels,
            valid,
            self.rpn_iou,
            self.num_proposals,
            self.dense.num_candidates,
        )
        return self._roi_head(feats, proposals, proposal_valid, hw)

    def _roi_head(self, feats, proposals, proposal_valid, hw):
        batch, num_rois = proposals.shape[0], proposals.shape[1]
        batch_index = (
            torch.arange(batch, device=proposals.device)[:, None]
            + torch.zeros_like(proposal_valid, dtype=torch.long)
        ).reshape(-1)
        rois = proposals.reshape(-1, 4)
        cls_sum = None
        for stage, (head, features) in enumerate(
            zip(self.bbox_heads, self.bbox_features)
        ):
            cls_score, bbox_pred = head(features(feats, rois, batch_index))
            cls_sum = cls_score if cls_sum is None else cls_sum + cls_score
            if stage < len(self.bbox_heads) - 1:
                # Cascade: boxes regressed by the argmax class feed the next
                # stage (mmdet's regress_by_class)
                label = cls_score[:, :-1].argmax(dim=1)
                delta = (
                    bbox_pred
                    if head.reg_class_agnostic
                    else bbox_pred.reshape(bbox_pred.shape[0], -1, 4).gather(
                        1, label[:, None, None].expand(-1, 1, 4)
                    )[:, 0]
                )
                rois = decode_deltas(
                    rois, delta, image_hw=hw, **self._coder(head)
                )
        # mmdet averages the stages' logits, then softmax
        cls_score = (
            cls_sum / len(self.bbox_heads)
            if len(self.bbox_heads) > 1
            else cls_sum
        )
        scores = F.softmax(cls_score, dim=-1)[:, :-1]
        num_classes = scores.shape[1]
        scores = scores.reshape(batch, num_rois, num_classes) * proposal_valid[
            ..., None
        ].to(scores.dtype)
        last = self.bbox_heads[-1]
        if last.reg_class_agnostic:
            boxes = decode_deltas(
                rois, bbox_pred, image_hw=hw, **self._coder(last)
            )
            boxes = boxes.reshape(batch, 1, num_rois, 4)
        else:
            boxes = decode_deltas(
                rois[:, None, :],
                bbox_pred.reshape(bbox_pred.shape[0], -1, 4),
                image_hw=hw,
                **self._coder(last),
            )
            boxes = boxes.reshape(batch, num_rois, -1, 4).permute(0, 2, 1, 3)
        boxes, scores, labels = _per_class_nms_topk(
            boxes,
            scores.permute(0, 2, 1),
            self.score_thr,
            self.nms_iou,
            self.max_per_img,
            self.class_agnostic,
            self.num_proposals,
            shared=last.reg_class_agnostic,
        )
        if not self.with_mask:
            return boxes, scores, labels
        return (
            boxes,
            scores,
            labels,
            self._masks(feats, boxes, scores, labels, hw),
        )

    def _masks(self, feats, boxes, scores, labels, hw):
        batch, top_k = boxes.shape[0], boxes.shape[1]
        batch_index = (
            torch.arange(batch, device=boxes.device)[:, None]
            + torch.zeros_like(labels)
        ).reshape(-1)
        rois = boxes.reshape(-1, 4)
        flat_labels = labels.reshape(-1)
        probs = None
        for head, features in zip(self.mask_heads, self.mask_features):
            logits = head(features(feats, rois, batch_index))
            if not head.class_agnostic:
                logits = logits.gather(
                    1,
                    flat_labels[:, None, None, None].expand(
                        -1, 1, *logits.shape[2:]
                    ),
                )
            prob = logits[:, 0].sigmoid()
            probs = prob if probs is None else probs + prob
        if len(self.mask_heads) > 1:
            probs = probs / len(self.mask_heads)
        masks = (
            paste_masks(probs, rois, hw)
            * (scores.reshape(-1) > 0).to(probs.dtype)[:, None, None]
        )
        return masks.reshape(batch, top_k, masks.shape[1], masks.shape[2])


def _per_class_nms_topk(
    boxes,
    scores,
    score_thr,
    iou_threshold,
    top_k,
    class_agnostic,
    num_rois,
    shared,
):
    """mmdet's ``multiclass_nms`` for a batch: every (RoI, class) pair
    scoring ``> score_thr`` is a candidate, NMS within each class, the
    ``top_k`` best kept.

    Args:
        boxes (Tensor): ``[N, Cb, R, 4]``, ``Cb`` = 1 (class-agnostic
            regression) or ``C``.
        scores (Tensor): ``[N, C, R]``.
        num_rois (int): ``R``, static (the RPN's ``max_per_img``).
        shared (bool): ``Cb == 1``.

    Returns:
        ``boxes [N, K, 4]``, ``scores [N, K]`` (0 in empty slots),
        ``labels [N, K]``.
    """
    batch, num_classes = scores.shape[0], scores.shape[1]
    if class_agnostic:
        # one NMS over all pairs, boxes offset-free: mmcv's class_agnostic
        flat_boxes = boxes.expand(-1, num_classes, -1, -1).reshape(
            batch, -1, 4
        )
        selected = non_max_suppression(
            flat_boxes,
            scores.reshape(batch, 1, -1),
            num_rois * scores.shape[1],
            iou_threshold,
            score_thr,
        )
        kept = (
            torch.zeros_like(scores)
            .reshape(batch, -1)
            .index_put(
                (selected[:, 0], selected[:, 2]),
                torch.ones_like(selected[:, 0], dtype=scores.dtype),
            )
        )
    elif shared:
        # ONNX NMS per class natively: boxes [N, R, 4], scores [N, C, R]
        selected = non_max_suppression(
            boxes[:, 0], scores, num_rois, iou_threshold, score_thr
        )
        kept = torch.zeros_like(scores).index_put(
            (selected[:, 0], selected[:, 1], selected[:, 2]),
            torch.ones_like(selected[:, 0], dtype=scores.dtype),
        )
    else:
        # class-specific boxes: each (image, class) is one NMS batch entry
        selected = non_max_suppression(
            boxes.reshape(-1, num_rois, 4),
            scores.reshape(-1, 1, num_rois),
            num_rois,
            iou_threshold,
            score_thr,
        )
        kept = (
            torch.zeros_like(scores)
            .reshape(-1, num_rois)
            .index_put(
                (selected[:, 0], selected[:, 2]),
                torch.ones_like(selected[:, 0], dtype=scores.dtype),
            )
        )
    kept_scores = scores.reshape(batch, -1) * kept.reshape(batch, -1)
    top_scores, index = kept_scores.topk(top_k, dim=1)
    labels = torch.div(index, num_rois, rounding_mode='floor')
    if shared:
        top_boxes = boxes[:, 0].gather(
            1, (index - labels * num_rois)[..., None].expand(-1, -1, 4)
        )
    else:
        top_boxes = boxes.reshape(batch, -1, 4).gather(
            1, index[..., None].expand(-1, -1, 4)
        )
    keep = top_scores > 0
    return (
        top_boxes * keep[..., None].to(top_boxes.dtype),
        top_scores,
        labels,
    )

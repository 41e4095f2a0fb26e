"""Whole detectors and segmentors to one ONNX file, checked in onnxruntime.

``export_model(cfg, checkpoint, out)``: the model built from an mmdet or
mmseg config (``default_scope``), weights loaded strictly and safely,
wrapped in ``DetectorGraph`` / ``SegmentorGraph`` and exported with
``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, opset
17: standard ops only, batch, height and width dynamic). With ``verify``
the file runs in onnxruntime at the export size and a second one (its
stage-4 map not divisible by 3 or 6), against the PyTorch model's own
``test_step`` on the same tensor. The file is written to a temporary name
and renamed only when it passed.

The file's metadata (``metadata_props``) holds what a runner needs besides
the graph: ``mmmetaformer.task`` (``detection`` / ``segmentation``),
``mmmetaformer.dataset_meta`` (JSON: classes, palette) and, for detectors,
``mmmetaformer.score_thr`` (and ``mmmetaformer.mask_thr``: masks are
probabilities, mmdet binarises them there).
"""

import json
import os
import os.path as osp
import tempfile
import time
import warnings

import numpy as np
import torch

from .backbone import OPSET
from .preprocess import UnsupportedModel

SCORE_TOLERANCE = 1e-3  # detection: per matched box
BOX_IOU_MIN = 0.99
MASK_IOU_MIN = 0.99
# Mask pixels whose exported probability lies this close to the threshold
# are decided by float rounding (RoiAlign, the mask head and the paste sum
# in another order), not by the model: they count for neither side.
MASK_PROB_AMBIGUITY = 1e-3
TOP_DETECTIONS = 20
LOGIT_RTOL = 1e-4  # segmentation: max |diff| / max |logit|
LABEL_AGREEMENT = 0.999


class VerificationError(Exception):
    """The exported file does not compute what the PyTorch model does."""


def build_model(cfg, scope, checkpoint=None):
    """The model of ``cfg`` in eval mode, ``checkpoint`` loaded strictly
    (random initialisation without one). Returns ``(model, dataset_meta)``.
    """
    from mmengine.registry import init_default_scope

    # our modules are registered: importing this package imported them
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    cfg.model.backbone.init_cfg = None  # the checkpoint has every weight
    model = MODELS.build(cfg.model)
    meta = {}
    if checkpoint is not None:
        from ..checkpoint import load_model_strictly
        from ..checkpoint.formats import dataset_meta_of

        loaded = load_model_strictly(model, checkpoint)
        meta = dataset_meta_of(loaded.get('meta') or {})
    if not meta.get('classes'):
        meta = _config_dataset_meta(cfg) or meta
    return model.eval(), meta


def _config_dataset_meta(cfg):
    """``classes`` (and ``palette``) the test dataset declares."""
    try:
        dataset = cfg.test_dataloader.dataset
        metainfo = dataset.get('metainfo') or {}
        if metainfo.get('classes'):
            return {
                k: (list(v) if isinstance(v, (tuple, list)) else v)
                for k, v in metainfo.items()
                if k in ('classes', 'palette')
            }
        if dataset.get('type'):
            from mmengine.registry import DATASETS

            cls = DATASETS.get(dataset.type)
            info = getattr(cls, 'METAINFO', {})
            return {
                k: list(info[k]) for k in ('classes', 'palette') if k in info
            }
    except Exception:  # noqa: BLE001  (names only; never fatal)
        return {}
    return {}


def reference_outputs(model, scope, image):
    """The PyTorch model's own ``test_step`` on ``image [N, 3, H, W]``
    (float 0-255), with ``img_shape = ori_shape = (H, W)``, scale 1.

    Returns:
        list[dict]: per image, numpy ``boxes``/``scores``/``labels``
        (/``masks``) or ``logits``.
    """
    height, width = image.shape[2:]
    meta = dict(
        img_shape=(height, width),
        ori_shape=(height, width),
        pad_shape=(height, width),
        scale_factor=(1.0, 1.0),
    )
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample

        samples = [DetDataSample(metainfo=meta) for _ in image]
    else:
        from mmseg.structures import SegDataSample

        samples = [SegDataSample(metainfo=meta) for _ in image]
    with torch.no_grad():
        results = model.test_step(
            dict(inputs=list(image), data_samples=samples)
        )
    out = []
    for result in results:
        if scope == 'mmseg':
            out.append(dict(logits=result.seg_logits.data.numpy()))
            continue
        pred = result.pred_instances
        item = dict(
            boxes=pred.bboxes.numpy(),
            scores=pred.scores.numpy(),
            labels=pred.labels.numpy(),
        )
        if 'masks' in pred:
            item['masks'] = pred.masks.numpy().astype(bool)
        out.append(item)
    return out


def _iou(box, boxes):
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def _mask_iou(a, b, decided=None):
    """IoU of two boolean masks over the ``decided`` pixels (all if None)."""
    if decided is not None:
        a, b = a[decided], b[decided]
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def _unmatched(ref, got, top):
    """Detections among ``ref``'s ``top`` best without a partner in all of
    ``got`` (same label, box IoU, score, mask IoU): a list of lines."""
    problems = []
    order = np.argsort(-ref['scores'], kind='stable')[:top]
    for i in order:
        if ref['scores'][i] <= 0:
            continue
        ious = (
            _iou(ref['boxes'][i], got['boxes'])
            if len(got['boxes'])
            else np.zeros(0)
        )
        candidates = np.nonzero(
            (got['labels'] == ref['labels'][i])
            & (ious >= BOX_IOU_MIN)
            & (np.abs(got['scores'] - ref['scores'][i]) <= SCORE_TOLERANCE)
        )[0]
        why = ''
        if len(candidates) and 'masks' in ref:
            decided = ref.get('decided', got.get('decided'))
            ious = [
                _mask_iou(
                    ref['masks'][i],
                    got['masks'][j],
                    decided[i if 'decided' in ref else j]
                    if decided is not None
                    else None,
                )
                for j in candidates
            ]
            why = f' (mask IoU {max(ious):.3f})'
            candidates = [
                j for j, iou in zip(candidates, ious) if iou >= MASK_IOU_MIN
            ]
        if not len(candidates):
            problems.append(
                f'label {ref["labels"][i]} score {ref["scores"][i]:.4f} '
                f'box {np.round(ref["boxes"][i], 1).tolist()}{why}'
            )
    return problems


def compare(reference, onnx_outputs, scope, mask_thr=0.5):
    """Check onnxruntime's outputs against the reference (the file's mask
    probabilities binarised at ``mask_thr``, as mmdet does).

    Returns:
        tuple: ``(ok, summary line)``.
    """
    if scope == 'mmseg':
        worst_rel, worst_agree = 0.0, 1.0
        for i, ref in enumerate(reference):
            got = onnx_outputs[0][i]
            want = ref['logits']
            if got.shape != want.shape:
                return False, f'logits shape {got.shape} != {want.shape}'
            rel = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
            agree = (got.argmax(0) == want.argmax(0)).mean()
            worst_rel, worst_agree = (
                max(worst_rel, rel),
                min(worst_agree, agree),
            )
        ok = worst_rel <= LOGIT_RTOL and worst_agree >= LABEL_AGREEMENT
        return ok, (
            f'logits max |diff| / max |logit| = {worst_rel:.2e} '
            f'(<= {LOGIT_RTOL:g}), labels equal '
            f'{100 * worst_agree:.3f}% (>= '
            f'{100 * LABEL_AGREEMENT:g}%)'
        )
    names = ['boxes', 'scores', 'labels', 'masks'][: len(onnx_outputs)]
    problems, compared = [], 0
    for i, ref in enumerate(reference):
        got = {name: onnx_outputs[k][i] for k, name in enumerate(names)}
        if 'masks' in got:
            probs = got['masks']
            got['decided'] = np.abs(probs - mask_thr) > MASK_PROB_AMBIGUITY
            got['masks'] = probs >= mask_thr
        keep = got['scores'] > 0
        got = {k: v[keep] for k, v in got.items()}
        compared += min(TOP_DETECTIONS, int((ref['scores'] > 0).sum()))
        problems += [
            f'image {i}: PyTorch {p} not in the ONNX output'
            for p in _unmatched(ref, got, TOP_DETECTIONS)
        ]
        problems += [
            f'image {i}: ONNX {p} not in the PyTorch output'
            for p in _unmatched(got, ref, TOP_DETECTIONS)
        ]
    what = 'box, score' + (', mask' if 'masks' in names else '')
    if problems:
        return False, f'{len(problems)} unmatched: ' + '; '.join(problems[:3])
    if compared == 0:
        return True, (
            'no detection above the score threshold in either '
            'output: nothing to compare (untrained weights?)'
        )
    return True, (
        f'top {TOP_DETECTIONS} detections matched ({compared} '
        f'compared; same label, IoU >= {BOX_IOU_MIN}, score '
        f'within {SCORE_TOLERANCE:g}, {what})'
    )


def second_size(size, scope):
    """A check size other than ``size``: about 3/4 of it, its stage-4 map
    (``/ 32``) not divisible by 3 or 6 (the PPM's bins), and for detectors
    not a multiple of 32 (so the in-graph padding is exercised)."""
    out = []
    for length in size:
        cells = max(2, round(0.75 * length / 32))
        while cells % 3 == 0 or cells * 32 == length:
            cells += 1
        out.append(cells * 32 - (5 if scope == 'mmdet' else 0))
    return tuple(out)


def export_graph(model, scope):
    """The traceable graph of ``model`` that ``export_model`` writes (in
    eval mode): ``DetectorGraph`` (sharing the detector's modules) or
    ``SegmentorGraph`` of a copy with ``export_swaps`` applied (the swaps
    change modules: the model stays mmseg's)."""
    if scope == 'mmdet':
        from .detector import DetectorGraph

        return DetectorGraph(model).eval()
    import copy

    from .segmentor import SegmentorGraph, export_swaps

    graph = SegmentorGraph(copy.deepcopy(model)).eval()
    export_swaps(graph)
    return graph


def export_model(
    cfg,
    scope,
    checkpoint,
    out,
    shape,
    verify=True,
    check_shape=None,
    seed=0,
    log=print,
):
    """Export the whole model of ``cfg`` to ``out`` (see the module
    docstring).

    Args:
        cfg (Config): loaded config (``default_scope`` ``mmdet``/``mmseg``).
        checkpoint (str | None): weights; ``None`` keeps the random
            initialisation (tests).
        shape (tuple[int, int]): the export size ``(H, W)``.
        check_shape (tuple[int, int] | None): the second verification size
            (default ``second_size(shape)``).

    Raises:
        UnsupportedModel: a head the exporter cannot write.
        VerificationError: onnxruntime disagrees with PyTorch.
    """
    import onnx

    if scope == 'mmseg':
        test_cfg = cfg.model.get('test_cfg') or {}
        if test_cfg.get('mode', 'whole') != 'whole':
            log(
                f'note: test_cfg.mode={test_cfg["mode"]!r}: exporting '
                'whole-image inference (the graph takes any size)'
            )
            cfg.model.test_cfg = dict(test_cfg, mode='whole')
    model, dataset_meta = build_model(cfg, scope, checkpoint)
    graph = export_graph(model, scope)
    names = list(graph.output_names)
    axes = dict(image={0: 'batch', 2: 'height', 3: 'width'})
    for name in names:
        axes[name] = {0: 'batch'}  # K (detections) is max_per_img
        if name in ('logits', 'masks'):
            axes[name].update({2: 'height', 3: 'width'})
    gen = torch.Generator().manual_seed(seed)
    example = torch.rand(1, 3, *shape, generator=gen) * 255
    out_dir = osp.dirname(osp.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.onnx.part', dir=out_dir)
    os.close(fd)
    try:
        start = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer's notices (a tensor read as a Python bool, slices
            # it cannot fold) concern how general the trace is, which the
            # verification at a second size checks; not a user's to act on.
            warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
            warnings.filterwarnings(
                'ignore', message='Constant folding', category=UserWarning
            )
            torch.onnx.export(
                graph,
                (example,),
                tmp,
                opset_version=OPSET,
                input_names=['image'],
                output_names=names,
                dynamic_axes=axes,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        props = dict(
            task='detection' if scope == 'mmdet' else 'segmentation',
            dataset_meta=json.dumps(dataset_meta),
        )
        if scope == 'mmdet':
            props['score_thr'] = str(_model_score_thr(model))
            if 'masks' in names:
                props['mask_thr'] = str(graph.mask_thr)
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f'mmmetaformer.{key}', value
        onnx.save(proto, tmp)
        log(
            f'exported {type(model).__name__} to ONNX (opset {OPSET}, '
            f'outputs {", ".join(names)}) in '
            f'{time.perf_counter() - start:.1f} s'
        )
        if verify:
            sizes = [
                tuple(shape),
                tuple(check_shape or second_size(shape, scope)),
            ]
            failed = []
            from .runtime import OnnxModel

            session = OnnxModel(tmp)
            for size in sizes:
                image = torch.rand(1, 3, *size, generator=gen) * 255
                image = image.round()  # what a decoded image holds
                ok, line = compare(
                    reference_outputs(model, scope, image),
                    session(image),
                    scope,
                    getattr(graph, 'mask_thr', 0.5),
                )
                log(
                    f'verify {size[0]}x{size[1]}: {"ok" if ok else "FAIL"}'
                    f': {line}'
                )
                if not ok:
                    failed.append(f'{size[0]}x{size[1]}: {line}')
            if failed:
                raise VerificationError(
                    'onnxruntime disagrees with PyTorch at '
                    + '; '.join(failed)
                    + '; no file written'
                )
        os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return names


def _model_score_thr(model):
    cfg = (
        model.roi_head.test_cfg
        if hasattr(model, 'roi_head')
        else model.bbox_head.test_cfg
    )
    return cfg.get('score_thr', 0)


__all__ = [
    'UnsupportedModel',
    'VerificationError',
    'export_model',
    'build_model',
    'reference_outputs',
    'compare',
    'second_size',
]

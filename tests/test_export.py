"""Whole-model ONNX export (``mmmetaformer.export``, ``tools/export_onnx.py``)
checked in onnxruntime against the PyTorch model's own ``test_step``.

Every head type the exporter writes (RetinaNet, Mask R-CNN, Cascade Mask
R-CNN, Semantic FPN, UperNet; PoolFormer and CAFormer backbones) is
exported at one toy size and verified by ``export_model`` itself at that
size and a second one (detectors: not a multiple of 32, so the in-graph
padding works; UperNet: a stage-4 map of 2x5, bins 3 and 6 not dividing
it). Random weights with a fixed seed; the classification layers are
re-drawn wider than their init so scores spread (an untrained head scores
every box alike, and ties make a top-K comparison meaningless).

Tolerances (``exporter``): detections matched per box (same label, IoU >=
0.99, score within 1e-3, mask IoU >= 0.99); logits within 1e-4 of their
largest magnitude (float32 sums over a few thousand terms), argmax labels
99.9% equal.
"""

import copy
import json
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from .forked_tools import run_forked
from .helpers import REPO_ROOT, TINY_ARCH, TINY_DIMS, TINY_WIDTH
from .tolerance import assert_close

CONFIGS = REPO_ROOT / 'configs'
TOY_CLASSES = ('airplane', 'sports ball', 'kite', 'baseball bat', 'tv')

# Two-stage models keep 50 proposals (of 100 per level) and 20 detections
# instead of 1000 and 100: the same graph, a tenth of the RoI work.
FEWER_ROIS = {
    'model.test_cfg.rpn.nms_pre': 100,
    'model.test_cfg.rpn.max_per_img': 50,
    'model.test_cfg.rcnn.max_per_img': 20,
}
# The exported graph does not depend on widths or block counts: every case
# runs its family's mixers in the tiny backbone (one block a stage; its
# attention stages are 64 wide, two heads of CAFormer's head_dim 32), a
# 64-channel FPN and narrow heads, so its checkpoint and .onnx are about
# 1 MB each instead of 100-260.
SMALL_DIMS = TINY_DIMS
SMALL_ARCH = TINY_ARCH


def small_backbone(neck_in=SMALL_DIMS):
    """--cfg-options that swap the config's named arch for ``SMALL_ARCH``
    (``_delete_``: a dict replaces the arch name instead of merging) and
    give the FPN (if any) the dims of the stages it reads (RetinaNet's
    backbone emits stages 1-3) and ``TINY_WIDTH`` outputs."""
    options = {'model.backbone.arch': dict(_delete_=True, **SMALL_ARCH)}
    if neck_in:
        options['model.neck.in_channels'] = neck_in
        options['model.neck.out_channels'] = TINY_WIDTH
    return options


def narrow_dense_head(head):
    """--cfg-options for a dense head (RetinaNet's, the RPN) reading the
    ``TINY_WIDTH`` FPN."""
    return {
        f'model.{head}.in_channels': TINY_WIDTH,
        f'model.{head}.feat_channels': TINY_WIDTH,
    }


# the box heads' fc and conv width and the mask heads' convs (recipe: 1024
# and 256)
ROI_WIDTH = 32


def narrow_roi_heads(stages=None):
    """--cfg-options for the RPN, ``ROI_WIDTH`` box heads (one, or one per
    cascade stage) and mask head convs reading the ``TINY_WIDTH`` FPN: the
    recipe's 1024-channel fc layers hold most of a two-stage detector's
    weights."""
    prefixes = ['model.roi_head.bbox_head']
    if stages:
        prefixes = [f'model.roi_head.bbox_head.{i}' for i in range(stages)]
    options = {
        **narrow_dense_head('rpn_head'),
        'model.roi_head.bbox_roi_extractor.out_channels': TINY_WIDTH,
        'model.roi_head.mask_roi_extractor.out_channels': TINY_WIDTH,
        'model.roi_head.mask_head.in_channels': TINY_WIDTH,
        'model.roi_head.mask_head.conv_out_channels': ROI_WIDTH,
    }
    for prefix in prefixes:
        options[f'{prefix}.in_channels'] = TINY_WIDTH
        options[f'{prefix}.fc_out_channels'] = ROI_WIDTH
        if stages:  # the cascade's 4conv1fc heads
            options[f'{prefix}.conv_out_channels'] = ROI_WIDTH
    return options


# name: (config, --cfg-options, export size, second size)
CASES = {
    'retinanet_poolformer': (
        'toy/retinanet_poolformer_s12_toy_coco.py',
        {
            **small_backbone(SMALL_DIMS[1:]),
            **narrow_dense_head('bbox_head'),
        },
        (64, 96),
        (91, 59),
    ),
    'mask_rcnn_poolformer': (
        'toy/mask_rcnn_poolformer_s12_toy_coco.py',
        {**small_backbone(), **FEWER_ROIS, **narrow_roi_heads()},
        (64, 64),
        (59, 91),
    ),
    'cascade_poolformer': (  # the CAFormer leaf with a PoolFormer backbone
        'cascade_mask_rcnn_caformer_s18_coco.py',
        {
            'model.backbone.init_cfg': None,
            'model.backbone.type': 'PoolFormer',
            **small_backbone(),
            **FEWER_ROIS,
            **narrow_roi_heads(stages=3),
        },
        (64, 64),
        (91, 59),
    ),
    'semantic_fpn_poolformer': (
        'toy/semantic_fpn_poolformer_s12_toy_ade20k.py',
        {
            **small_backbone(),
            'model.decode_head.in_channels': [TINY_WIDTH] * 4,
            'model.decode_head.channels': TINY_WIDTH // 2,  # toy: 128
        },
        (64, 96),
        (96, 64),
    ),
    'upernet_caformer': (
        'toy/upernet_convformer_s18_toy_ade20k.py',
        {
            'model.backbone.type': 'CAFormer',
            **small_backbone(neck_in=None),
            'model.decode_head.in_channels': SMALL_DIMS,
            'model.decode_head.channels': 64,  # recipe: 512
            'model.auxiliary_head.in_channels': SMALL_DIMS[2],
            'model.auxiliary_head.channels': 32,  # recipe: 256
        },
        (96, 96),
        (64, 160),
    ),
}


def small_config(name, directory, neck_in=SMALL_DIMS[1:]):
    """A config file for the tools: the RetinaNet ``name`` with
    ``small_backbone(neck_in)`` and ``narrow_dense_head('bbox_head')``."""
    path = directory / f'small_{name.replace("/", "_")}'
    path.write_text(
        f'_base_ = [{str(CONFIGS / name)!r}]\n'
        'model = dict(\n'
        f'    backbone=dict(arch=dict(_delete_=True, **{SMALL_ARCH!r})),\n'
        f'    neck=dict(in_channels={neck_in!r}, out_channels={TINY_WIDTH}),\n'
        f'    bbox_head=dict(in_channels={TINY_WIDTH},\n'
        f'                   feat_channels={TINY_WIDTH}),\n'
        ')\n'
    )
    return path


def load(name, options=None):
    from mmmetaformer_tools.launch import load_config

    # a copy: merging pops ``_delete_`` from the options' dicts
    return load_config(str(CONFIGS / name), copy.deepcopy(options) or None)


def spread_scores(model):
    """Re-draw the final classification layers (std 2 / sqrt(fan-in)
    instead of 0.01, zero bias) so that an untrained model's scores differ
    from box to box and its mask probabilities are not all near the 0.5
    threshold (saturated scores tie, and ties make top-K cuts arbitrary)."""
    gen = torch.Generator().manual_seed(1)
    names = ('retina_cls', 'rpn_cls', 'fc_cls', 'conv_logits')
    for name, module in model.named_modules():
        if name.split('.')[-1] in names:
            fan_in = module.weight[0].numel()
            with torch.no_grad():
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=gen)
                    * 2
                    / fan_in**0.5
                )
                module.bias.zero_()


def save_checkpoint(cfg, scope, path, classes=None):
    from mmmetaformer.export.exporter import build_model

    torch.manual_seed(0)
    model, _ = build_model(copy.deepcopy(cfg), scope)
    spread_scores(model)
    meta = {'dataset_meta': {'classes': list(classes)}} if classes else {}
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, path)
    return path


def export_case(name, tmp_path, options=None, verify=True):
    from mmmetaformer.export.exporter import export_model

    config, own, shape, check = CASES[name]
    cfg, scope = load(config, {**own, **(options or {})})
    ckpt = save_checkpoint(cfg, scope, tmp_path / f'{name}.pth')
    out = tmp_path / f'{name}.onnx'
    lines = []
    export_model(
        cfg,
        scope,
        str(ckpt),
        str(out),
        shape,
        verify=verify,
        check_shape=check,
        log=lines.append,
    )
    ckpt.unlink()  # read by the exporter; the tests check the .onnx
    return out, lines


@pytest.fixture(scope='module')
def retinanet(tmp_path_factory):
    """The toy RetinaNet exported once (verified at two sizes), for the
    tests below: its checkpoint names the toy classes."""
    from mmmetaformer.export.exporter import export_model

    root = tmp_path_factory.mktemp('retinanet')
    config, own, shape, check = CASES['retinanet_poolformer']
    config = small_config(config, root)  # for infer.py too
    cfg, scope = load(config)
    ckpt = save_checkpoint(cfg, scope, root / 'toy.pth', TOY_CLASSES)
    out, lines = root / 'toy.onnx', []
    export_model(
        cfg,
        scope,
        str(ckpt),
        str(out),
        shape,
        check_shape=check,
        log=lines.append,
    )
    return SimpleNamespace(config=config, ckpt=ckpt, onnx=out, lines=lines)


@pytest.mark.parametrize('name', sorted(CASES))
def test_export_matches_pytorch_at_two_sizes(name, tmp_path, request):
    if name == 'retinanet_poolformer':
        exported = request.getfixturevalue('retinanet')
        out, lines = exported.onnx, exported.lines
    else:
        out, lines = export_case(name, tmp_path)
    verified = [line for line in lines if line.startswith('verify')]
    assert len(verified) == 2 and all(': ok:' in v for v in verified), lines
    if name.startswith(('retinanet', 'mask', 'cascade')):
        # something was compared: scores spread above the threshold
        assert all('nothing to compare' not in v for v in verified), lines
    import onnx

    model = onnx.load(str(out))
    ops = {node.op_type for node in model.graph.node}
    assert all(node.domain in ('', 'ai.onnx') for node in model.graph.node)
    assert model.opset_import[0].version >= 17
    if 'rcnn' in name:
        assert {'NonMaxSuppression', 'RoiAlign'} <= ops
    if name not in ('retinanet_poolformer', 'mask_rcnn_poolformer'):
        return
    # batch 2 of one size runs, each image as it would alone
    session = ort.InferenceSession(
        str(out), providers=['CPUExecutionProvider']
    )
    gen = torch.Generator().manual_seed(3)
    images = (torch.rand(2, 3, 70, 90, generator=gen) * 255).numpy()
    both = session.run(None, {'image': images})
    first = session.run(None, {'image': images[:1]})
    for pair, single in zip(both, first):
        assert pair.shape[0] == 2
        if pair.dtype == np.bool_ or pair.dtype == np.int64:
            assert (pair[0] == single[0]).mean() > 0.99
        else:
            np.testing.assert_allclose(
                pair[0], single[0], rtol=1e-3, atol=1e-3
            )


def test_nms_settings_of_the_config_are_in_the_file(retinanet, tmp_path):
    """score_thr, the NMS IoU and max_per_img come from the config: a file
    exported with a threshold at the median of the default file's scores,
    7 detections and IoU 0.3 keeps only such boxes."""
    gen = torch.Generator().manual_seed(4)
    image = (torch.rand(1, 3, 64, 96, generator=gen) * 255).numpy()

    def run(path):
        session = ort.InferenceSession(
            str(path), providers=['CPUExecutionProvider']
        )
        return session.run(None, {'image': image})

    loose = run(retinanet.onnx)
    positive = loose[1][0][loose[1][0] > 0]
    threshold = float(np.median(positive))
    options = {
        'model.test_cfg.score_thr': threshold,
        'model.test_cfg.max_per_img': 7,
        'model.test_cfg.nms.iou_threshold': 0.3,
    }
    boxes, scores, labels = run(
        export_case('retinanet_poolformer', tmp_path, options, verify=False)[0]
    )
    assert scores.shape == (1, 7) and loose[1].shape == (1, 100)
    kept = scores[0] > 0
    assert kept.any() and (scores[0][kept] > threshold).all()
    assert (positive <= threshold).any()  # the default file keeps those
    from torchvision.ops import box_iou

    b = torch.from_numpy(boxes[0][kept])
    same = (
        torch.from_numpy(labels[0][kept])[:, None]
        == torch.from_numpy(labels[0][kept])[None]
    )
    iou = box_iou(b, b) * same.float()
    assert (iou.fill_diagonal_(0) <= 0.3 + 1e-6).all()


def largest_bin(size, out):
    """The most elements one bin of an adaptive average pool of a ``size``
    map to ``out`` bins averages (its reduction length): bin ``i`` of ``n``
    over ``length`` spans ``floor(i * length / n)`` to
    ``ceil((i + 1) * length / n)``."""
    out = (out, out) if isinstance(out, int) else out
    elements = 1
    for length, bins in zip(size, out):
        elements *= max(
            -(-(i + 1) * length // bins) - i * length // bins
            for i in range(bins)
        )
    return elements


@pytest.mark.parametrize(
    'size', [(1, 1), (2, 3), (5, 7), (6, 6), (7, 13), (13, 20), (25, 38)]
)
def test_exact_adaptive_pool_equals_torch(size):
    """``adaptive_avg_pool2d`` (averaging matrices) against
    ``F.adaptive_avg_pool2d``, bins dividing the map or not, in eager mode
    and as exported (run in onnxruntime at sizes it was not traced at)."""
    from mmmetaformer.export.ops import adaptive_avg_pool2d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *size, generator=gen)
    for out in (1, 2, 3, 6, (2, 5)):
        assert_close(
            adaptive_avg_pool2d(x, out),
            F.adaptive_avg_pool2d(x, out),
            largest_bin(size, out),
            msg=f'{size} -> {out}',
        )


def test_exact_adaptive_pool_exported_any_size(tmp_path):
    from mmmetaformer.export.ops import ExactAdaptiveAvgPool2d

    module = ExactAdaptiveAvgPool2d(6)
    path = tmp_path / 'pool.onnx'
    torch.onnx.export(
        module,
        (torch.randn(1, 3, 12, 12),),
        str(path),
        input_names=['x'],
        opset_version=17,
        dynamo=False,
        dynamic_axes={'x': {0: 'n', 2: 'h', 3: 'w'}},
    )
    session = ort.InferenceSession(
        str(path), providers=['CPUExecutionProvider']
    )
    gen = torch.Generator().manual_seed(0)
    for size in ((12, 12), (5, 7), (13, 20), (3, 2)):
        x = torch.randn(2, 3, *size, generator=gen)
        got = session.run(None, {'x': x.numpy()})[0]
        assert_close(
            torch.from_numpy(got),
            F.adaptive_avg_pool2d(x, 6),
            largest_bin(size, 6),
            msg=f'{size}',
        )


def test_infer_with_the_onnx_file_writes_the_same_json(retinanet, tmp_path):
    from mmmetaformer_tools import toy

    toy.make_coco(tmp_path / 'toy_coco', num_train=1, num_val=2, img_size=64)
    images = tmp_path / 'toy_coco' / 'val2017'
    config, ckpt, onnx_file = retinanet.config, retinanet.ckpt, retinanet.onnx
    preds = {}
    for key, weights in (('pytorch', ckpt), ('onnx', onnx_file)):
        out = tmp_path / key
        proc = run_forked(
            'infer.py',
            images,
            config,
            weights,
            '--out-dir',
            out,
            '--device',
            'cpu',
            cwd=tmp_path,
            log_path=tmp_path / f'{key}.log',
        )
        assert proc.returncode == 0, proc.output[-3000:]
        names = sorted(p.name for p in images.glob('*.jpg'))
        assert sorted(p.name for p in (out / 'vis').glob('*.jpg')) == names
        preds[key] = {
            name: json.loads(
                (out / 'preds' / name.replace('.jpg', '.json')).read_text()
            )
            for name in names
        }
    compared = 0
    for name, want in preds['pytorch'].items():
        got = preds['onnx'][name]
        assert got['labels'] == want['labels'], name
        np.testing.assert_allclose(got['scores'], want['scores'], atol=1e-3)
        np.testing.assert_allclose(got['bboxes'], want['bboxes'], atol=0.05)
        compared += len(want['labels'])
    assert compared > 0


def test_an_unsupported_head_is_refused_in_one_line(tmp_path):
    config = small_config(CASES['retinanet_poolformer'][0], tmp_path)
    ckpt = tmp_path / 'atss.pth'
    cfg, scope = load(config, {'model.bbox_head.type': 'ATSSHead'})
    save_checkpoint(cfg, scope, ckpt)
    out = tmp_path / 'atss.onnx'
    proc = run_forked(
        'export_onnx.py',
        config,
        ckpt,
        '--out',
        out,
        '--cfg-options',
        'model.bbox_head.type=ATSSHead',
        cwd=tmp_path,
        log_path=tmp_path / 'log',
    )
    assert proc.returncode == 2, proc.output[-3000:]
    lines = [line for line in proc.output.splitlines() if line.strip()]
    assert lines[-1].startswith('error: cannot export bbox_head (ATSSHead)')
    assert 'Traceback' not in proc.output
    assert not out.exists() and not list(tmp_path.glob('*.part'))
    ckpt.unlink()  # read by the tool
